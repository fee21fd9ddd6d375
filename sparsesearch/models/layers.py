"""Building blocks shared by the windowed transformers (timm-compatible parameter names), and `config_applied`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SparsityConfig
from ..ops import relative_position_index

__all__ = ["Mlp", "DropPath", "WindowAttention", "PatchEmbed", "PatchMerging", "config_applied"]


@contextlib.contextmanager
def config_applied(model: Any, config: SparsityConfig | None) -> Iterator[SparsityConfig | None]:
    """Apply `config` to `model` (anything with ``set_config``) for the ``with`` block, then restore the config
    it had before (its ``config`` attribute; None if it has none), also when the block raises."""
    previous = getattr(model, "config", None)
    model.set_config(config)
    try:
        yield config
    finally:
        model.set_config(previous)


def init_linear_weights(m: nn.Module) -> None:
    """timm's init of the transformer linears (truncated normal, std 0.02; zero bias), for `Module.apply`."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (timm's `Mlp`, same names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        if x.dim() > 2 and _exporting():  # (the fused pruned path feeds rows: no export check there)
            return _unflatten(self.fc2(self.act(self.fc1(_rows_of(x)))), x)
        return self.fc2(self.act(self.fc1(x)))


def _rows_of(x: torch.Tensor) -> torch.Tensor:
    """(..., C) -> (R, C) for an exported linear: ONNX Runtime fuses a 2-d MatMul and its bias Add into one Gemm,
    but leaves an N-d one as MatMul + Add (the Adds of the demo model: 1.0 of its 11 ms)."""
    return x.reshape(-1, int(x.shape[-1]))


def _unflatten(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(R, C') rows of `_rows_of(like)` -> (*like.shape[:-1], C'), the sizes but the first as traced constants."""
    return y.view(-1, *(int(s) for s in like.shape[1:-1]), int(y.shape[-1]))


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability p (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """x: (B*g, ...) where every group of g consecutive rows belongs to one of `batch` samples (g=1 if None)."""
        if self.p == 0.0 or not self.training:
            return x
        b = batch if batch is not None else x.shape[0]
        keep = x.new_empty(b).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        keep = keep.repeat_interleave(x.shape[0] // b)
        return x * keep.view(-1, *([1] * (x.dim() - 1)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _tracing() -> bool:
    """Whether this forward is traced (jit / ONNX export / torch.compile): shapes are symbolic, nothing cached."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()


def _exporting() -> bool:
    """Whether this forward is being exported to ONNX (not a plain jit trace, e.g. fvcore's FLOP count, nor
    torch.compile): sizes but the batch may be baked in."""
    return torch.onnx.is_in_onnx_export()


def _version_of(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter (torch's private `_version`), or None where there is none to read: an
    inference tensor (a model built under inference_mode) keeps none, and a torch without the attribute has none to
    offer; a cache keyed on it must then not be used (changes would go unseen)."""
    if t.is_inference():
        return None
    try:
        return int(t._version)
    except (AttributeError, RuntimeError):
        return None


#: What one attention's bias cache may hold: an entry can be tens of MB (Swin-T at 1024, stage 1: 39 MB)
_BIAS_CACHE_BYTES = 64 * 2**20


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias shared across window sizes.

    The bias table is sized for the largest window the stage can take (`max_window`); a smaller window reads
    the centre crop of it.
    """

    def __init__(self, dim: int, num_heads: int, max_window: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.max_window = max_window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * max_window - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # (wh, ww, id(mask)) -> (key, mask, bias): inference cache of `attention_bias`, not state. One entry per
        # mask (the entry holds the mask, so its id stays its own): a model run at several configs or map sizes
        # in turn (a search, a benchmark) would otherwise rebuild the bias at every switch
        self._bias_cache: dict[tuple[int, int, int], tuple[Any, torch.Tensor | None, torch.Tensor]] = {}

    def position_bias(self, wh: int, ww: int) -> torch.Tensor:
        """(heads, N, N) bias for a wh x ww window."""
        idx = relative_position_index(wh, ww, self.max_window, self.relative_position_bias_table.device)
        n = wh * ww
        return self.relative_position_bias_table[idx.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def attention_bias(self, wh: int, ww: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(1, heads, N, N) position bias, or (nW, heads, N, N) with the (nW, N, N) additive `mask` added.

        In inference (grad mode off; not tracing, compiling or exporting) the result is cached per window size
        and mask until the table changes: it depends on the weights and the geometry only, and building it costs
        a gather and, with a mask, an (nW, heads, N, N) add in every block of every forward.
        """
        table = self.relative_position_bias_table
        if torch.is_grad_enabled() or _tracing():  # (checked first: a traced graph cannot ask for the version)
            return self._build_bias(wh, ww, mask)
        version = _version_of(table)
        if version is None:
            return self._build_bias(wh, ww, mask)
        key = (version, table.data_ptr(), table.dtype)
        slot = (wh, ww, id(mask))
        hit = self._bias_cache.get(slot)
        if hit is not None and hit[0] == key and hit[1] is mask:
            return hit[2]
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode too
            bias = self._build_bias(wh, ww, mask)
        held = sum(entry[2].nbytes for entry in self._bias_cache.values())
        if len(self._bias_cache) >= 8 or held + bias.nbytes > _BIAS_CACHE_BYTES:
            self._bias_cache.clear()
        self._bias_cache[slot] = (key, mask, bias)
        return bias

    def _build_bias(self, wh: int, ww: int, mask: torch.Tensor | None) -> torch.Tensor:
        bias = self.position_bias(wh, ww).unsqueeze(0)
        bias = bias if mask is None else bias + mask.unsqueeze(1).to(bias.dtype)
        # contiguous: the table's (N, N, heads) layout survives the permute and the add, and SDPA's CPU kernel
        # copies a non-contiguous mask on every call (1.1 ms of a 36 ms forward in the demo model's stage 1)
        return bias.contiguous()

    def forward(
        self, x: torch.Tensor, wh: int, ww: int, mask: torch.Tensor | None = None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention within each window.

        Args:
            x: (Bw, N, C) windows.
            mask: (nW, N, N) additive masks (shifted windows), or None.
            rows: (Bw,) int64 the mask of each row of x (kept windows: their grid windows, or their masks' rows in
                a (u, N, N) `mask` of distinct masks), or None when x holds every window of each image in grid
                order and `mask` is the image's window grid (Bw = B * nW).
        Returns:
            (Bw, N, C).
        """
        if _exporting():
            return self._forward_export(x, wh, ww, mask, rows)
        Bw, N, C = x.shape
        qkv = self.qkv(x).reshape(Bw, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.attention_bias(wh, ww, mask)
        if mask is not None and rows is not None:
            bias = bias.index_select(0, rows)  # several times faster than bias[rows] on CPU
        elif mask is not None and (Bw != bias.shape[0] or _tracing()):  # traced: the batch is symbolic
            bias = bias.repeat(Bw // bias.shape[0], 1, 1, 1)
        # a (1, heads, N, N) bias broadcasts inside SDPA; expanding it first makes the CPU kernel copy it per window
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias if bias.dtype == q.dtype else bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(Bw, N, C))

    def _forward_export(
        self, x: torch.Tensor, wh: int, ww: int, mask: torch.Tensor | None, rows: torch.Tensor | None
    ) -> torch.Tensor:
        """`forward` as the exporter should see it: (Bw, N, C) windows -> (Bw, N, C), the same values.

        The sizes but the batch are constants (reshapes take -1 for it); the scale is a constant, not derived from
        the traced head size; the position bias and shift mask are summed into one constant (nW or 1, heads, N, N)
        that broadcasts over the images of the batch (no Tile of it per image), or is indexed by the kept windows'
        `rows`; the attention is written out (MatMul, Add, Softmax, MatMul), which ONNX Runtime fuses.
        """
        N, C = int(x.shape[1]), int(x.shape[2])
        h, d = self.num_heads, self.head_dim
        # (Bw, 3h, N, d) split in three: one Transpose and one Split (a 5-d permute and unbind export as a Split,
        # three Squeezes and three Transposes)
        q, k, v = self.qkv(_rows_of(x)).reshape(-1, N, 3 * h, d).transpose(1, 2).split(h, dim=1)  # each (Bw, h, N, d)
        attn = (q * (1.0 / math.sqrt(d))) @ k.transpose(-2, -1)  # (Bw, h, N, N); SDPA's default scale
        bias = self._build_bias(wh, ww, mask)  # (1 or nW, h, N, N)
        if mask is not None and rows is not None:
            attn = attn + bias.index_select(0, rows)
        elif mask is not None:  # every window of each image in grid order
            nW = int(bias.shape[0])
            attn = (attn.view(-1, nW, h, N, N) + bias).view(-1, h, N, N)
        else:
            attn = attn + bias
        out = attn.softmax(dim=-1) @ v  # (Bw, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(-1, C)).view(-1, N, C)  # 2-d: a Gemm (`_rows_of`)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding to NHWC; the input is zero-padded to a multiple of the patch size."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/p), ceil(W/p), C)."""
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> Linear(4C, 2C); odd sizes are zero-padded (timm layout)."""

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim or 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        # sizes as ints and -1 for the batch: a traced graph (ONNX) then carries no shape arithmetic for them
        H, W, C = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
            H, W = H + H % 2, W + W % 2
        # channel order (w offset, h offset, C) == Microsoft's cat(x0, x1, x2, x3)
        x = x.reshape(-1, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(-1, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))
