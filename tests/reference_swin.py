"""An independent, deliberately plain Swin Transformer (timm semantics) used as the tests' reference.

Written from the Swin paper / timm behaviour, sharing no code with sparsesearch: explicit softmax attention,
a relative position table built natively for each window size, the shift mask computed on the padded grid,
roll -> pad -> partition exactly as timm. It loads the same (timm-format) state dict.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, sd, p, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps)


def _lin(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd.get(p + ".bias"))


def native_rel_index(wh: int, ww: int) -> torch.Tensor:
    """(N, N) index into a ((2wh-1)*(2ww-1)) table, the original Swin formula."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += wh - 1
    rel[:, :, 1] += ww - 1
    rel[:, :, 0] *= 2 * ww - 1
    return rel.sum(-1)


def crop_table(table: torch.Tensor, from_w: int, to_wh: int, to_ww: int) -> torch.Tensor:
    """Centre crop of a ((2M-1)^2, heads) table to ((2wh-1)*(2ww-1), heads)."""
    s = 2 * from_w - 1
    t = table.view(s, s, -1)
    oh, ow = from_w - to_wh, from_w - to_ww
    return t[oh : oh + 2 * to_wh - 1, ow : ow + 2 * to_ww - 1].reshape(-1, table.shape[-1])


def effective_window(H: int, W: int, window: int, shifted: bool):
    wh, ww = min(window, H), min(window, W)
    sh = window // 2 if shifted and H > window else 0
    sw = window // 2 if shifted and W > window else 0
    return wh, ww, sh, sw


def shift_attn_mask(Hp: int, Wp: int, wh: int, ww: int, sh: int, sw: int) -> torch.Tensor | None:
    """timm's mask: label the 3x3 regions of the padded, shifted grid; -100 between different labels."""
    if sh == 0 and sw == 0:
        return None
    img = torch.zeros(Hp, Wp)
    cnt = 0
    for h in ((0, -wh), (-wh, -sh), (-sh, None)):
        for w in ((0, -ww), (-ww, -sw), (-sw, None)):
            img[h[0] : h[1], w[0] : w[1]] = cnt
            cnt += 1
    mw = img.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    m = mw[:, None, :] - mw[:, :, None]
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def block_forward(x, sd, p, heads, window, shifted, table_w=None):
    """One dense Swin block, timm order: norm1 -> roll -> pad -> partition -> attn -> reverse -> unpad -> roll."""
    B, H, W, C = x.shape
    wh, ww, sh, sw = effective_window(H, W, window, shifted)
    table = sd[p + ".attn.relative_position_bias_table"]
    tw = table_w if table_w is not None else int(round((math.sqrt(table.shape[0]) + 1) / 2))
    if (wh, ww) != (tw, tw):
        table = crop_table(table, tw, wh, ww)
    shortcut = x
    y = _ln(x, sd, p + ".norm1")
    y = torch.roll(y, (-sh, -sw), (1, 2))
    ph, pw = (wh - H % wh) % wh, (ww - W % ww) % ww
    y = F.pad(y, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    win = y.view(B, Hp // wh, wh, Wp // ww, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, C)
    N, d = wh * ww, C // heads
    qkv = _lin(win, sd, p + ".attn.qkv").view(-1, N, 3, heads, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * d**-0.5, qkv[1], qkv[2]
    attn = q @ k.transpose(-2, -1)
    bias = table[native_rel_index(wh, ww).view(-1)].view(N, N, -1).permute(2, 0, 1)
    attn = attn + bias[None]
    mask = shift_attn_mask(Hp, Wp, wh, ww, sh, sw)
    if mask is not None:
        nW = mask.shape[0]
        attn = attn.view(B, nW, heads, N, N) + mask[None, :, None]
        attn = attn.view(-1, heads, N, N)
    attn = attn.softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(-1, N, C)
    out = _lin(out, sd, p + ".attn.proj")
    out = out.view(B, Hp // wh, Wp // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    out = torch.roll(out[:, :H, :W], (sh, sw), (1, 2))
    x = shortcut + out
    h = _lin(F.gelu(_lin(_ln(x, sd, p + ".norm2"), sd, p + ".mlp.fc1")), sd, p + ".mlp.fc2")
    return x + h


def patch_merge(x, sd, p):
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
    x0, x1, x2, x3 = x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]
    x = torch.cat([x0, x1, x2, x3], -1)
    return F.linear(_ln(x, sd, p + ".norm"), sd[p + ".reduction.weight"])


def swin_forward(img, sd, depths, heads, windows, patch=4, table_windows=None):
    """Full classifier forward. windows/table_windows: per stage. Returns (logits, per-stage features)."""
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    x = _ln(x.permute(0, 2, 3, 1), sd, "patch_embed.norm")
    feats = []
    for i, d in enumerate(depths):
        if i > 0:
            x = patch_merge(x, sd, f"layers.{i}.downsample")
        for j in range(d):
            tw = table_windows[i] if table_windows else None
            x = block_forward(x, sd, f"layers.{i}.blocks.{j}", heads[i], windows[i], j % 2 == 1, tw)
        feats.append(x)
    x = _ln(x, sd, "norm")
    logits = F.linear(x.mean((1, 2)), sd["head.fc.weight"], sd["head.fc.bias"]) if "head.fc.weight" in sd else None
    return logits, feats


def reference_window_scores(x: torch.Tensor, window: int, shifted: bool) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW) by the README's rule ("Window pruning, exactly"), with explicit loops over windows."""
    B, H, W, C = x.shape
    wh, ww, sh, sw = effective_window(H, W, window, shifted)
    tok = x.abs().mean(-1).double()
    tok = torch.roll(tok, (-sh, -sw), (1, 2))
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    tok = F.pad(tok, (0, Wp - W, 0, Hp - H))
    out = torch.zeros(B, (Hp // wh) * (Wp // ww), dtype=torch.float64)
    n = 0
    for r in range(Hp // wh):
        for c in range(Wp // ww):
            out[:, n] = tok[:, r * wh : (r + 1) * wh, c * ww : (c + 1) * ww].reshape(B, -1).norm(dim=1)
            n += 1
    return out


def reference_kept_tokens(x: torch.Tensor, window: int, shifted: bool, sparsity: float) -> torch.Tensor:
    """(B, H, W) bool: tokens that lie in a kept window (top-k windows by score, ties to lower index)."""
    B, H, W, _ = x.shape
    wh, ww, sh, sw = effective_window(H, W, window, shifted)
    scores = reference_window_scores(x, window, shifted)
    nW = scores.shape[1]
    k = max(1, math.floor(round((1 - sparsity) * nW, 9) + 0.5))
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    nWw = Wp // ww
    kept = torch.zeros(B, H, W, dtype=torch.bool)
    for b in range(B):
        order = sorted(range(nW), key=lambda i: (-float(scores[b, i]), i))[:k]
        shifted_map = torch.zeros(Hp, Wp, dtype=torch.bool)
        for wi in order:
            r, c = divmod(wi, nWw)
            shifted_map[r * wh : (r + 1) * wh, c * ww : (c + 1) * ww] = True
        kept[b] = torch.roll(shifted_map[:H, :W], (sh, sw), (0, 1))
    return kept
