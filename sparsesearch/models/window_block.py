"""The one pruned-window block every family builds on, and the model-level config plumbing.

A `PrunedWindowBlock` is a pre-norm transformer block on an NHWC map (norm1 -> attention -> residual -> norm2 ->
MLP -> residual) that prunes whole windows (README, "Window pruning, exactly"): it scores the windows of
its tiling, keeps the k best of each image, runs on the kept windows only and leaves every other token
unchanged, so its output is `where(token in a kept window, dense_block(x), x)`. A family's block says only how
it tiles its map and how it attends:

- `geometry(H, W)`: the window tiling (shift, padding) of an (H, W) map;
- windowed blocks: `attend_windows(y, g, rows)`, attention within full windows;
- global blocks (`global_attn = True`): `attend_global(y)` over the whole map, and `attend_kept(y, g, idx)` among
  the real tokens of the kept windows (the windows of the block's tiling; padded slots are masked as keys).

Everything else lives here once: scoring and selection (`ops`), the gather / padding mask / write-back of the
general path (any backend, autograd, ONNX), the fused real-token path of inference (`pruned_path`), norm2 + MLP
on real tokens only, the score carry between blocks, and the compile and export rules.

`WindowPrunableModel` is the model side: `set_config`, `config`, `set_kernel_backend` and `forward(x, config)`
for a model whose config rows are lists of blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..ops import WindowGeometry, export_impl
from .layers import DropPath, config_applied
from .pruned_path import ScoreCarry, fused_pruned_forward, kept_tokens, token_scores, window_scores

__all__ = [
    "PrunedWindowBlock",
    "WindowPrunableModel",
    "run_blocks",
    "window_partition",
    "window_reverse",
    "kept_key_mask",
]

#: The real-token MLP path pays for its row gather and copy-back only when at least this share of the kept
#: windows' positions is padding (measured on CPU: Swin-T at 512, uniform 0.5 gains, 0.7 with little padding loses).
PAD_SKIP_MIN = 0.1


def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B*nW, wh*ww, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(w: torch.Tensor, wh: int, ww: int, H: int, W: int) -> torch.Tensor:
    """(B*nW, wh*ww, C) -> (B, H, W, C) for the padded H, W."""
    C = w.shape[-1]
    x = w.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def kept_key_mask(g: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
    """(B, k) kept windows -> (B, k*N) bool, True at the slots that hold a real token (False at padding)."""
    return ops.window_tables(g, idx.device).valid.index_select(0, idx.reshape(-1)).view(idx.shape[0], -1).bool()


class PrunedWindowBlock(nn.Module):
    """A pre-norm block on an NHWC map that can prune whole windows (see the module docstring).

    A subclass builds `norm1`, `norm2`, `mlp`, `drop_path1`, `drop_path2` (its attention as it likes) and sets
    `window_size`; `sparsity` (a float in [0, 1)) and `window_size` are then set by the owning model's
    `set_config`, `kernel_backend` by its `set_kernel_backend`.

    Class-wide switches (benchmarks turn them off; the output is the same either way): `fused_pruned_path` lets
    inference run the whole pruned block on the real tokens of its kept windows (`pruned_path`);
    `skip_padded_tokens` lets the general path run norm2 + MLP on the real tokens only; `carry_scores` lets a
    block score its windows from the token scores its predecessor left (`ScoreCarry`).
    """

    fused_pruned_path: ClassVar[bool] = True
    skip_padded_tokens: ClassVar[bool] = True
    carry_scores: ClassVar[bool] = True
    #: a global block attends over the whole map and uses its tiling only to score and keep windows
    global_attn: bool = False
    #: Swin's odd blocks shift their windows; the other families never do
    shifted: bool = False

    norm1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    drop_path1: DropPath
    drop_path2: DropPath

    def __init__(self) -> None:
        super().__init__()
        self.window_size = 0
        self.sparsity = 0.0
        self.kernel_backend: ops.Backend | None = None  # None: ops dispatch decides
        self._plans: dict[tuple[int, int, int, float], tuple[WindowGeometry, int]] = {}

    @property
    def prunable(self) -> bool:
        """Whether this block may take a sparsity above 0 (a family's block that reshapes the map says no)."""
        return True

    # ---- what a family provides ------------------------------------------------------------------------------
    def geometry(self, H: int, W: int) -> WindowGeometry:
        """The window tiling of an (H, W) map at the current `window_size`."""
        raise NotImplementedError

    def attend_windows(self, y: torch.Tensor, g: WindowGeometry, rows: torch.Tensor | None) -> torch.Tensor:
        """Windowed blocks. y: (Bw, N, C) normalised windows (zeros at padded slots); rows: (Bw,) int64 grid window
        of each row (kept windows), or None when y holds every window of each image in grid order. -> (Bw, N, C)."""
        raise NotImplementedError

    def attend_global(self, y: torch.Tensor) -> torch.Tensor:
        """Global blocks, dense. y: (B, H, W, C) normalised map -> (B, H, W, C)."""
        raise NotImplementedError

    def attend_kept(self, y: torch.Tensor, g: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
        """Global blocks, pruned. y: (B, k*N, C) normalised slots of the kept windows `idx` (B, k), window-major then
        row-major; attention among the real tokens only (padded slots masked as keys; their outputs are not
        used). -> (B, k*N, C)."""
        raise NotImplementedError

    # ---- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, owns_input: bool = False, carry: ScoreCarry | None = None) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C).

        `owns_input=True` declares that x is not used after this call, so in inference the pruned path may
        write the kept windows straight into x instead of copying every pruned token (the models do this).
        `carry` (given by `run_blocks`) passes token scores from one block's output to the next block's scoring.
        """
        g, k = self._plan(int(x.shape[1]), int(x.shape[2]))  # int(): sizes are tensors when ONNX-traced
        if k < g.num_windows:
            if self._fused_ok(x, g, carry):
                return self._forward_fused(x, g, k, owns_input, carry)
            if carry is not None:
                carry.set(None, None)
            if torch.onnx.is_in_onnx_export():
                return self._forward_pruned_export(x, g, k)
            return self._forward_pruned(x, g, k, owns_input)
        if carry is not None:
            carry.set(None, None)
        return self._forward_dense(x, g)

    def _plan(self, H: int, W: int) -> tuple[WindowGeometry, int]:
        """The tiling of an (H, W) map and the windows kept per image (all of them when dense). Cached per map size,
        window and sparsity outside torch.compile: building them costs microseconds in every block of every
        forward, a few percent of a small pruned model."""
        key = (H, W, self.window_size, self.sparsity)
        compiling = torch.compiler.is_compiling()
        plan = None if compiling else self._plans.get(key)
        if plan is None:
            g = self.geometry(H, W)
            plan = (g, ops.keep_count(self.sparsity, g.num_windows) if self.sparsity > 0.0 else g.num_windows)
            if not compiling:
                if len(self._plans) >= 64:  # a sampler of arbitrary sparsities would grow it without end
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    def _attend_map(self, y: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
        """Dense attention of the normalised map y (B, H, W, C) -> (B, H, W, C): shift, pad with zeros (after
        norm1), attend within every window, reverse."""
        if self.global_attn:
            return self.attend_global(y)
        if torch.onnx.is_in_onnx_export():  # shift, pad and partition as one Gather each way (`export_impl`)
            return export_impl.reverse(self.attend_windows(export_impl.partition(y, g), g, None), g)
        H, W = int(y.shape[1]), int(y.shape[2])
        if g.shifted:
            y = torch.roll(y, shifts=(-g.sh, -g.sw), dims=(1, 2))
        if g.padded:
            y = F.pad(y, (0, 0, 0, g.Wp - W, 0, g.Hp - H))
        y = self.attend_windows(window_partition(y, g.wh, g.ww), g, None)
        y = window_reverse(y, g.wh, g.ww, g.Hp, g.Wp)[:, :H, :W]
        if g.shifted:
            y = torch.roll(y, shifts=(g.sh, g.sw), dims=(1, 2))
        return y

    def _forward_dense(self, x: torch.Tensor, g: WindowGeometry) -> torch.Tensor:
        x = x + self.drop_path1(self._attend_map(self.norm1(x), g))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _attend_kept_windows(self, y: torch.Tensor, g: WindowGeometry, idx: torch.Tensor) -> torch.Tensor:
        """y: (B*k, N, C) normalised kept windows, zeros at padded slots -> (B*k, N, C) attention output."""
        if not self.global_attn:
            return self.attend_windows(y, g, idx.reshape(-1))
        B, k = idx.shape
        return self.attend_kept(y.reshape(B, k * g.window_area, -1), g, idx).reshape(y.shape)

    def _forward_pruned(self, x: torch.Tensor, g: WindowGeometry, k: int, owns_input: bool = False) -> torch.Tensor:
        """The general pruned path: any backend, autograd, tracing (static shapes)."""
        B = x.shape[0]
        scores = ops.score_windows(x, g, self.kernel_backend)
        idx = ops.select_windows(scores, k, self.kernel_backend)  # (B, k)
        windows = ops.gather_windows(x, idx, g, self.kernel_backend)  # (B*k, N, C)
        y = self.norm1(windows)
        if g.padded:  # padded positions enter attention as zeros after norm1, as in the dense path
            valid = ops.window_tables(g, x.device).valid[idx]  # (B, k, N), 1 at real tokens
            y = y * valid.view(B * k, -1, 1).to(y.dtype)
        windows = windows + self.drop_path1(self._attend_kept_windows(y, g, idx), B)
        pad = _kept_padding(g, idx, x.device) if g.padded and self._skip_padded() else None
        if pad is not None and int(pad.sum()) >= PAD_SKIP_MIN * pad.numel():
            windows = self._mlp_on_real_tokens(windows, pad)
        else:
            windows = windows + self.drop_path2(self.mlp(self.norm2(windows)), B)
        return ops.scatter_windows(x, windows, idx, g, self.kernel_backend, inplace=owns_input)

    def _forward_pruned_export(self, x: torch.Tensor, g: WindowGeometry, k: int) -> torch.Tensor:
        """The pruned block as ONNX sees it (the "export" window ops, whatever the block's backend): the kept
        windows' slots as (B*k*N, C) rows from one Gather to one ScatterND, norms, residuals and MLP on those rows
        (2-d: each linear is one Gemm), the attention on the (B*k, N, C) windows. Padded slots hold their window's
        first token, zeroed after norm1 (as the general path zeroes them before and after), and are not written back.
        """
        C, N = int(x.shape[3]), g.window_area
        idx = ops.select_windows(ops.score_windows(x, g, "export"), k, "export")  # (B, k)
        t = export_impl.kept_rows(x, idx, g)  # (B*k*N, C)
        y = self.norm1(t)
        if g.padded:
            y = y * ops.window_tables(g, x.device).valid[idx].reshape(-1, 1).to(y.dtype)
        t = t + self._attend_kept_windows(y.view(-1, N, C), g, idx).reshape(-1, C)
        t = t + self.mlp(self.norm2(t))
        return export_impl.scatter(x, t, idx, g)

    def _forward_fused(
        self, x: torch.Tensor, g: WindowGeometry, k: int, owns_input: bool, carry: ScoreCarry | None
    ) -> torch.Tensor:
        """The pruned block on the real tokens of its kept windows (`pruned_path`); scores from the carry when it
        holds those of x."""
        B, H, W, _ = x.shape
        if carry is not None and not self.carry_scores:
            carry.set(None, None)
            carry = None
        tok = carry.get(x) if carry is not None else None
        if carry is not None and not carry.wanted:  # the last block of its chain: no one reads its output's scores
            carry.set(None, None)
            carry = None
        if tok is None:
            tok = token_scores(x).view(B, H * W)
        tables = ops.window_tables(g, x.device)
        # ascending window order, though the output does not depend on it: the gathers and write-backs then walk
        # the map forward, which saves more than the second sort costs (demo model on CPU: 0.003-0.005 x dense)
        idx = ops.reference.select(window_scores(tok, g, tables), k)  # (B, k)
        out = fused_pruned_forward(
            x,
            g,
            kept_tokens(g, idx, tables),
            self,
            lambda y: self._attend_kept_windows(y, g, idx),
            inplace=owns_input and ops.can_scatter_inplace(x, x),
            tok=tok if carry is not None else None,
        )
        if carry is not None:
            carry.set(out, tok)
        return out

    def _skip_padded(self) -> bool:
        """Whether norm2 + MLP may run on the real tokens only: not when exporting (ONNX wants static shapes)
        nor under torch.compile (a data-dependent count breaks the graph), nor with stochastic depth active
        (DropPath groups rows by sample)."""
        return self.skip_padded_tokens and not (
            torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling()
            or (self.training and self.drop_path2.p > 0.0)
        )

    def _fused_ok(self, x: torch.Tensor, g: WindowGeometry, carry: ScoreCarry | None = None) -> bool:
        """Whether the fused real-token path may run: inference (grad mode off) on the torch backend, no stochastic
        depth, not exporting; under torch.compile only on an unpadded map (a padded one gathers a data-dependent
        count of real tokens, which would break the graph; the general path has static shapes). The forward-wide
        part of the answer is kept in `carry` for the chain's other blocks."""
        if not self.fused_pruned_path or (self.training and (self.drop_path1.p > 0.0 or self.drop_path2.p > 0.0)):
            return False
        ok = carry.fused.get(self.kernel_backend) if carry is not None else None
        if ok is None:
            ok = not (torch.is_grad_enabled() or torch.onnx.is_in_onnx_export()) and ops.runs_torch(
                x, self.kernel_backend
            )
            if carry is not None:
                carry.fused[self.kernel_backend] = ok
        if not ok:
            return False
        if torch.compiler.is_compiling():
            return self.skip_padded_tokens and not g.padded
        return self.skip_padded_tokens

    def _mlp_on_real_tokens(self, windows: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """windows (B*k, N, C), pad (B, k, N) bool -> windows with norm2 + MLP + residual applied to the real
        tokens only. Padded slots keep their value: the scatter never reads them. The MLP is most of a block's
        work and a kept window at the map's border can be mostly padding (Swin-T at 512: 20 % of stage 3's and
        72 % of stage 4's padded grid)."""
        C = windows.shape[-1]
        flat = windows.reshape(-1, C)
        rows = (~pad).reshape(-1).nonzero().squeeze(1)  # (M,)
        real = flat.index_select(0, rows)
        real = real + self.mlp(self.norm2(real))
        if torch.is_grad_enabled():
            return flat.index_copy(0, rows, real).view_as(windows)
        return flat.index_copy_(0, rows, real).view_as(windows)  # `windows` is this block's own tensor


def _kept_padding(g: WindowGeometry, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """(B, k, N) bool, True at the padded positions of the kept windows `idx`; None when g has no padding."""
    pad = ops.window_tables(g, device).pad
    return pad[idx] if pad is not None else None


def run_blocks(
    blocks: Sequence[nn.Module], x: torch.Tensor, owns_input: bool = False, keep_outputs: bool = False
) -> list[torch.Tensor]:
    """Run a chain of blocks on one map, passing token scores from each pruned block to the next.

    x: (B, H, W, C). `owns_input`: x is an intermediate the caller no longer needs (the first block may write it).
    `keep_outputs`: every block's output is returned and must survive (no block writes its input in place).
    Returns every block's output (with `keep_outputs`) or a list holding the last one.
    """
    carry = ScoreCarry()
    fresh = owns_input and not keep_outputs
    outs: list[torch.Tensor] = []
    for i, blk in enumerate(blocks):
        carry.wanted = i + 1 < len(blocks)
        x_in = x
        if isinstance(blk, PrunedWindowBlock):
            x = blk(x, owns_input=fresh, carry=carry)
        else:  # a block that changes the map (e.g. a pooling one) ends the chain of carried scores
            carry.set(None, None)
            x = blk(x)
        if keep_outputs:
            outs.append(x)
        else:
            fresh = fresh or x is not x_in
    return outs if keep_outputs else [x]


class WindowPrunableModel(nn.Module):
    """Config plumbing of a model made of `PrunedWindowBlock`s, grouped in config rows ("stages").

    A subclass sets `depths` (blocks per row), `default_window_size` and `max_window_size` (one per row),
    implements `config_rows()` and `forward_model(x)`, and may override `apply_row_window` (which blocks a row's
    window reaches) and `check_config` (family rules beyond counts and ranges).
    """

    depths: tuple[int, ...]
    default_window_size: tuple[int, ...]
    max_window_size: tuple[int, ...]
    _config: SparsityConfig | None = None

    def config_rows(self) -> list[list[PrunedWindowBlock]]:
        """The blocks of every config row, in forward order (one sparsity of a config per block)."""
        raise NotImplementedError

    def forward_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the model's output under the active config."""
        raise NotImplementedError

    def apply_row_window(self, row: int, window: int) -> None:
        """Give row `row`'s blocks the window `window` (the tiling their scoring and attention use)."""
        for blk in self.config_rows()[row]:
            blk.window_size = window

    def check_config(self, config: SparsityConfig) -> None:
        """Family rules beyond `SparsityConfig.validate` (raise SparseSearchError with what to change)."""

    def uniform_config(self, p: float) -> SparsityConfig:
        """Sparsity p in every block that prunes (0 in those that never do), the default windows."""
        rows = [[float(p) if blk.prunable else 0.0 for blk in row] for row in self.config_rows()]
        return SparsityConfig(rows, list(self.default_window_size))

    @property
    def prunable_blocks(self) -> list[PrunedWindowBlock]:
        """Every block of every row, in forward order."""
        return [b for row in self.config_rows() for b in row]

    @property
    def config(self) -> SparsityConfig | None:
        """The active sparsity config (None = dense with the default windows)."""
        return self._config

    def set_config(self, config: SparsityConfig | None) -> None:
        """Apply a config (validated against this model: one sparsity per block, one window per row); None
        restores the dense model with its default windows."""
        if config is not None:
            config.validate(self.depths, self.max_window_size)
            self.check_config(config)
        windows = self.default_window_size if config is None else config.window_size
        for r, row in enumerate(self.config_rows()):
            self.apply_row_window(r, int(windows[r]))
            sparsities = [0.0] * len(row) if config is None else config.sparsity[r]
            for blk, p in zip(row, sparsities):
                blk.sparsity = float(p)
        self._config = config

    def set_kernel_backend(self, backend: ops.Backend | None) -> None:
        """Force the window-op backend of every block ("torch", "triton") or let dispatch decide (None)."""
        for blk in self.prunable_blocks:
            blk.kernel_backend = backend

    def forward(self, x: torch.Tensor, config: SparsityConfig | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> the model's output (see `forward_model`); `config`, when given, applies to this call only."""
        if config is not None:
            with config_applied(self, config):
                return self.forward_model(x)
        return self.forward_model(x)


def unprunable(what: str, blocks: Sequence[str]) -> SparseSearchError:
    """The error for a config that prunes blocks a family never prunes."""
    return SparseSearchError(
        f"{what} cannot be pruned (blocks {', '.join(blocks)}): give them sparsity 0 in the config or the space"
    )
