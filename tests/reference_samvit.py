"""An independent plain-torch SAM-style ViT image encoder, written from the SAM / ViTDet papers' semantics.

It imports nothing from sparsesearch. Parameter names follow the original SAM release (`mlp.lin1/lin2`), so its
state dict (prefixed `image_encoder.`) is an "original SAM checkpoint" for the loader under test. Attention is the
explicit softmax(q k^T * scale + rel_h + rel_w) of the papers, with the decomposed relative positions computed
position by position from the tables.

Pruning references (README, "Plain ViTs with window attention"):
- windowed block: `where(token in a kept window, dense_block(x), x)`;
- global block: `where(kept, block_with_keys_masked(x), x)`, the dense block whose attention gives every token
  outside the kept windows -inf as a key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def resize_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, d) -> (length, d) by linear interpolation along L (what SAM does for other sizes)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t()[None], size=length, mode="linear")[0].t()


def rel_embeddings(table: torch.Tensor, coords: torch.Tensor, size: int, crop_to: int | None = None) -> torch.Tensor:
    """(n, n, d): table entry of the offset coords[i] - coords[j] on an axis of `size` positions.

    crop_to: a windowed block whose table is for a larger window reads the central 2*crop_to-1 entries.
    """
    if crop_to is not None and table.shape[0] > 2 * crop_to - 1:
        c = (table.shape[0] - (2 * crop_to - 1)) // 2
        table = table[c : c + 2 * crop_to - 1]
    table = resize_table(table, 2 * size - 1)
    offsets = coords.view(-1, 1) - coords.view(1, -1)  # (n, n) coords[i] - coords[j]
    return table[offsets + size - 1]


class RefAttention(nn.Module):
    def __init__(self, dim: int, heads: int, table: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * table - 1, dim // heads))
        self.rel_pos_w = nn.Parameter(torch.randn(2 * table - 1, dim // heads))

    def forward(
        self,
        x: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        size: tuple[int, int],
        key_mask: torch.Tensor | None = None,
        crop_to: int | None = None,
    ) -> torch.Tensor:
        """x: (B, n, C) tokens at (rows, cols) on an axis grid of `size`; key_mask: (B, n) True = may be attended."""
        B, n, C = x.shape
        hd = C // self.heads
        q, k, v = self.qkv(x).view(B, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        Eh = rel_embeddings(self.rel_pos_h, rows, size[0], crop_to)  # (n, n, hd)
        Ew = rel_embeddings(self.rel_pos_w, cols, size[1], crop_to)
        logits = (q * hd**-0.5) @ k.transpose(-1, -2)
        logits = logits + torch.einsum("bhic,ijc->bhij", q, Eh) + torch.einsum("bhic,ijc->bhij", q, Ew)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = logits.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(B, n, C))


class RefMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, grid: int) -> None:
        super().__init__()
        self.window = window  # 0: global
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads, window if window else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor, window: int | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, C); `window` overrides the windowed block's window; key_mask (B, H, W) for a global block."""
        B, H, W, C = x.shape
        y = self.norm1(x)
        if self.window == 0:
            rows = torch.arange(H).repeat_interleave(W)
            cols = torch.arange(W).repeat(H)
            km = None if key_mask is None else key_mask.reshape(B, H * W)
            y = self.attn(y.reshape(B, H * W, C), rows, cols, (H, W), km).view(B, H, W, C)
        else:
            w = window or self.window
            Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
            padded = torch.zeros(B, Hp, Wp, C)
            padded[:, :H, :W] = y  # zeros after norm1
            out = torch.zeros_like(padded)
            rows = torch.arange(w).repeat_interleave(w)
            cols = torch.arange(w).repeat(w)
            for i in range(0, Hp, w):
                for j in range(0, Wp, w):
                    win = padded[:, i : i + w, j : j + w].reshape(B, w * w, C)
                    out[:, i : i + w, j : j + w] = self.attn(win, rows, cols, (w, w), crop_to=w).view(B, w, w, C)
            y = out[:, :H, :W]
        x = x + y
        return x + self.mlp(self.norm2(x))


class RefLayerNorm2d(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-6) * self.weight[:, None, None] + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class RefImageEncoder(nn.Module):
    """SAM's ImageEncoderViT: patch embed + abs pos, blocks (windowed / global), neck. NHWC inside."""

    def __init__(
        self, img: int, patch: int, dim: int, depth: int, heads: int, window: int, globals_: tuple[int, ...], neck: int
    ) -> None:
        super().__init__()
        grid = img // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, grid, grid, dim) * 0.5)
        self.blocks = nn.ModuleList([RefBlock(dim, heads, 0 if i in globals_ else window, grid) for i in range(depth)])
        self.neck = nn.Sequential(
            nn.Conv2d(dim, neck, 1, bias=False),
            RefLayerNorm2d(neck),
            nn.Conv2d(neck, neck, 3, padding=1, bias=False),
            RefLayerNorm2d(neck),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)
        pos = self.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic", antialias=True).permute(
                0, 2, 3, 1
            )
        return x + pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Random LayerNorm affine, position tables and biases, so that no term is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")) or (
                name.startswith("neck") and p.dim() == 1 and name.endswith("weight")
            ):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 or "rel_pos" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(p[0].numel(), 1)))


# ---- pruning references ---------------------------------------------------------------------------------------
def kept_window_mask(x: torch.Tensor, window: int, sparsity: float) -> torch.Tensor:
    """(B, H, W) bool: tokens in the kept windows of the README's rule (no shift, zero padding bottom/right)."""
    B, H, W, _ = x.shape
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    tok = torch.zeros(B, Hp, Wp, dtype=torch.float64)
    tok[:, :H, :W] = x.double().abs().mean(-1)
    nh, nw = Hp // window, Wp // window
    scores = tok.view(B, nh, window, nw, window).pow(2).sum((2, 4)).sqrt().reshape(B, nh * nw)
    n = nh * nw
    k = max(1, math.floor(round((1 - sparsity) * n, 9) + 0.5))
    mask = torch.zeros(B, Hp, Wp, dtype=torch.bool)
    for b in range(B):
        order = sorted(range(n), key=lambda i: (-float(scores[b, i]), i))[:k]
        for wi in order:
            r, c = divmod(wi, nw)
            mask[b, r * window : (r + 1) * window, c * window : (c + 1) * window] = True
    return mask[:, :H, :W]


def pruned_block(block: RefBlock, x: torch.Tensor, window: int, sparsity: float) -> torch.Tensor:
    """The identity reference of a pruned block (windowed or global)."""
    kept = kept_window_mask(x, window, sparsity)
    if block.window == 0:
        y = block(x, key_mask=kept)
    else:
        y = block(x, window=window)
    return torch.where(kept[..., None], y, x)
