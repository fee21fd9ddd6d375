"""An independent plain-torch SAM 2 image encoder trunk (Hiera), written from SAM 2's `hieradet.py` semantics.

It imports nothing from sparsesearch. Parameter names are the original SAM 2 release's (`mlp.layers.0/1`), so its
state dict, prefixed `image_encoder.trunk.` inside `{"model": ...}` (`sam2_checkpoint`), is an "original SAM 2
checkpoint" for the loader under test. Attention is the explicit softmax(q k^T * scale) v; query pooling is the
max of the four tokens of each 2x2 cell; windows are cut, attended and put back one at a time.

Beyond SAM 2's domain (inputs that are not a multiple of 32) it does the natural thing: the window table is
repeated over the grid (token (r, c) takes entry (r mod w0, c mod w0)), and a q-pool block pools each padded window
and keeps the pooled map's top-left part of the shortcut's size. Where SAM 2 runs the two agree exactly.

Pruning references (README, "SAM 2's image encoder (Hiera)"):
- windowed block: `where(token in a kept window, dense_block(x), x)`;
- global block: `where(kept, block_with_keys_masked(x), x)`, windows tiled by its stage's window, the dense block
  whose attention gives every token outside the kept windows -inf as a key;
- q-pool block: never pruned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def pool2x2(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H // 2, W // 2, C): the max of each 2x2 cell (a trailing odd row / column dropped)."""
    H2, W2 = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * H2, : 2 * W2]
    return torch.maximum(
        torch.maximum(x[:, 0::2, 0::2], x[:, 0::2, 1::2]), torch.maximum(x[:, 1::2, 0::2], x[:, 1::2, 1::2])
    )


class RefAttention(nn.Module):
    def __init__(self, dim: int, dim_out: int, heads: int, q_pool: bool) -> None:
        super().__init__()
        self.heads = heads
        self.dim_out = dim_out
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, h, w, C) -> (B, h', w', dim_out); key_mask (B, h*w) True = may be attended."""
        B, h, w, _ = x.shape
        hd = self.dim_out // self.heads
        q, k, v = self.qkv(x).view(B, h, w, 3, self.dim_out).unbind(3)  # each (B, h, w, dim_out)
        if self.q_pool:
            q = pool2x2(q)
        ho, wo = q.shape[1:3]
        q = q.reshape(B, ho * wo, self.heads, hd).transpose(1, 2)
        k = k.reshape(B, h * w, self.heads, hd).transpose(1, 2)
        v = v.reshape(B, h * w, self.heads, hd).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)) * hd**-0.5
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = logits.softmax(-1) @ v  # (B, heads, ho*wo, hd)
        return self.proj(out.transpose(1, 2).reshape(B, ho, wo, self.dim_out))


class RefMLP(nn.Module):
    """SAM 2's MLP: `layers.0` -> GELU -> `layers.1`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class RefMultiScaleBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, heads: int, window: int, q_pool: bool) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window = window  # 0: global attention
        self.q_pool = q_pool
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, dim_out, heads, q_pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = RefMLP(dim_out, 4 * dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor, window: int | None = None, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out). `window` overrides a windowed block's window; key_mask (B, H, W)
        masks keys of a global block."""
        B, H, W, C = x.shape
        y = self.norm1(x)
        shortcut = x
        if self.dim != self.dim_out:
            shortcut = self.proj(y)
            if self.q_pool:
                shortcut = pool2x2(shortcut)
        Ho, Wo = shortcut.shape[1:3]
        if self.window == 0:
            out = self.attn(y, None if key_mask is None else key_mask.reshape(B, H * W))
        else:
            w = window or self.window
            Hp, Wp = math.ceil(H / w) * w, math.ceil(W / w) * w
            padded = y.new_zeros(B, Hp, Wp, C)
            padded[:, :H, :W] = y  # zeros *after* norm1
            s = 2 if self.q_pool else 1
            wo = w // s
            out = y.new_zeros(B, Hp // s, Wp // s, self.dim_out)
            for i in range(0, Hp, w):
                for j in range(0, Wp, w):
                    out[:, i // s : i // s + wo, j // s : j // s + wo] = self.attn(padded[:, i : i + w, j : j + w])
            out = out[:, :Ho, :Wo]
        x = shortcut + out
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=7, stride=4, padding=3)


class RefHiera(nn.Module):
    """SAM 2's `Hiera` trunk (q_pool = 3, q_stride 2x2, dim_mul = head_mul = 2); `forward` returns the four stage
    maps, NHWC, finest first."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        stages: tuple[int, ...],
        global_att_blocks: tuple[int, ...],
        window_spec: tuple[int, ...],
        bkg: tuple[int, int],
    ) -> None:
        super().__init__()
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]]
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *bkg))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))
        self.blocks = nn.ModuleList()
        self.window_stage: list[int] = []  # the stage whose window block i uses (the first block of a stage lags)
        self.stage_of: list[int] = []
        dim, heads, stage = embed_dim, num_heads, 0
        for i in range(sum(stages)):
            self.window_stage.append(stage)
            window = 0 if i in global_att_blocks else window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, heads, stage = 2 * dim, 2 * heads, stage + 1
            self.stage_of.append(stage)
            self.blocks.append(RefMultiScaleBlock(dim, dim_out, heads, window, i in q_pool_blocks))
            dim = dim_out

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(img).permute(0, 2, 3, 1)
        H, W = x.shape[1:3]
        pos = F.interpolate(self.pos_embed, size=(H, W), mode="bicubic")
        w0 = self.pos_embed_window.shape[-1]
        rows, cols = torch.arange(H) % w0, torch.arange(W) % w0
        win = self.pos_embed_window[:, :, rows[:, None], cols[None, :]]  # the window table repeated over the grid
        return x + (pos + win).permute(0, 2, 3, 1)

    def forward(self, img: torch.Tensor) -> list[torch.Tensor]:
        x = self.embed(img)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                outs.append(x)
        return outs


def randomise(model: nn.Module, seed: int = 0) -> None:
    """Random LayerNorm affine, position tables and biases, so that no term is trivially zero or one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.startswith("pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(p[0].numel(), 1)))


def sam2_checkpoint(ref: RefHiera) -> dict[str, dict[str, torch.Tensor]]:
    """The reference as an original SAM 2 checkpoint: the trunk under `image_encoder.trunk.`, beside stand-ins
    for the parts a SAM 2 checkpoint also holds (neck, memory, prompt encoder, decoder)."""
    sd = {f"image_encoder.trunk.{k}": v.detach().clone() for k, v in ref.state_dict().items()}
    for k in (
        "image_encoder.neck.convs.0.conv.weight",
        "memory_attention.layers.0.self_attn.q_proj.weight",
        "memory_encoder.fuser.layers.0.dwconv.weight",
        "sam_prompt_encoder.point_embeddings.0.weight",
        "sam_mask_decoder.iou_token.weight",
        "maskmem_tpos_enc",
    ):
        sd[k] = torch.zeros(2, 4)
    return {"model": sd}


# ---- pruning references ---------------------------------------------------------------------------------------
def kept_window_mask(x: torch.Tensor, window: int, sparsity: float) -> torch.Tensor:
    """(B, H, W) bool: tokens in the kept windows of the README's rule (no shift, zero padding bottom/right; top-k
    windows by score, ties to the lower window index)."""
    B, H, W, _ = x.shape
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    tok = torch.zeros(B, Hp, Wp, dtype=torch.float64)
    tok[:, :H, :W] = x.detach().double().abs().mean(-1)  # padded positions score 0 (selection has no gradient)
    nh, nw = Hp // window, Wp // window
    n = nh * nw
    k = max(1, math.floor(round((1 - sparsity) * n, 9) + 0.5))
    mask = torch.zeros(B, Hp, Wp, dtype=torch.bool)
    for b in range(B):
        scores = [
            float(tok[b, r * window : (r + 1) * window, c * window : (c + 1) * window].norm())
            for r in range(nh)
            for c in range(nw)
        ]
        for wi in sorted(range(n), key=lambda i: (-scores[i], i))[:k]:
            r, c = divmod(wi, nw)
            mask[b, r * window : (r + 1) * window, c * window : (c + 1) * window] = True
    return mask[:, :H, :W]


def pruned_block(block: RefMultiScaleBlock, x: torch.Tensor, window: int, sparsity: float) -> torch.Tensor:
    """The identity reference of a pruned block; `window` is the block's window (a windowed or q-pool block) or
    its stage's window (the tiling of a global block)."""
    if block.q_pool:
        if sparsity > 0:
            raise ValueError("q-pool blocks are never pruned")
        return block(x, window=window)
    kept = kept_window_mask(x, window, sparsity)
    y = block(x, key_mask=kept) if block.window == 0 else block(x, window=window)
    return torch.where(kept[..., None], y, x)


def pruned_forward(ref: RefHiera, img: torch.Tensor, sparsity: list[float], windows: list[int]) -> list[torch.Tensor]:
    """The four stage maps with block i pruned at sparsity[i]; windows: one per stage (a block uses the window of
    `ref.window_stage[i]`: the first block of a stage keeps the previous stage's)."""
    x = ref.embed(img)
    outs = []
    for i, blk in enumerate(ref.blocks):
        x = pruned_block(blk, x, windows[ref.window_stage[i]], sparsity[i])
        if i in ref.stage_ends:
            outs.append(x)
    return outs
