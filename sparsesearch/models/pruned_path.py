"""The fused inference path of a pruned window block: only the real tokens of the kept windows move.

The general pruned path (`ops.gather_windows` -> norm1 -> attention -> norm2 + MLP -> `ops.scatter_windows`)
copies every slot of the kept windows, padding included, several times: the gather, the zeroing of padded slots,
the residual adds, and a write-back that first re-orders the windows so padded slots carry a real token's value.
On CPU those copies cost as much as a good part of the arithmetic saved by pruning. This path instead

1. gathers the real tokens of the kept windows once, (M, C), straight from the block input (shift included),
2. runs norm1 on them and places them into a zeroed (B*k, N, C) window batch (padded slots enter attention as
   zeros after norm1, as in the dense path),
3. takes the attention output back at the real tokens only, and runs the residual, norm2, MLP and residual on
   those M rows, in place,
4. writes the M rows into the block input (or a copy of it) with one index_copy_.

The output is the same as the general path's (the identity `where(kept, dense_block(x), x)` of the README's
"Window pruning, exactly"); only the order of the rows fed to the same per-token ops differs. It uses plain aten
ops; on a padded map the count of real tokens is data-dependent (nonzero), so the blocks take it in inference on
the torch backend, and under torch.compile only where the map is unpadded (static shapes: then inductor fuses the
scoring, gathers and write-backs with their neighbours); see `PrunedWindowBlock._fused_ok`. fvcore, which traces,
sees the M-row linears and counts the FLOPs really done.

Scores without reading the whole map: a block changes only the real tokens of its kept windows, so the token
scores mean_c |x| of its output are those of its input with those M rows recomputed. A `ScoreCarry` handed from
block to block within a stage holds them; the next block then scores its windows from (B, H*W) floats instead of
the (B, H, W, C) map. Same values as `ops.score_windows` (the same token reduction and window norm).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import nn

from .. import ops
from ..ops import WindowGeometry

__all__ = [
    "BlockParts",
    "KeptTokens",
    "ScoreCarry",
    "kept_tokens",
    "token_scores",
    "window_scores",
    "fused_pruned_forward",
]


class ScoreCarry:
    """Token scores of the last output of a chain of blocks: `tok` (B, H*W) float32 mean_c |x| of the tensor `of`.
    A block may use them only when its input *is* `of` (the previous block's output); any other block path resets
    the carry. The owner clears `wanted` before the chain's last block: nothing reads the scores of its output, so
    that block does not update them."""

    def __init__(self) -> None:
        self.of: torch.Tensor | None = None
        self.tok: torch.Tensor | None = None
        self.wanted = True
        # kernel backend -> whether this forward may take the fused path (grad mode, export, backend): one forward's
        # blocks share the answer, and asking costs microseconds per block
        self.fused: dict[object, bool] = {}

    def get(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.tok if self.of is x else None

    def set(self, of: torch.Tensor | None, tok: torch.Tensor | None) -> None:
        self.of, self.tok = of, tok


def token_scores(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """(..., C) -> (...) float32 token scores mean_c |x|, bit for bit those of `ops.reference.score` (its first step).
    `inplace`: x may be overwritten with |x| (the caller no longer needs it).

    As a sum and a division by a cached 0-d tensor: `mean` and a division by a Python number each add a scalar
    conversion (three more dispatched ops; the demo model at sparsity 0.5 on 2 CPU threads: 0.004 x dense)."""
    a = x.abs_() if inplace else x.abs()
    if torch.compiler.is_compiling():
        return a.mean(dim=-1, dtype=torch.float32)
    return a.sum(dim=-1, dtype=torch.float32).div_(_count(int(x.shape[-1])))


_COUNTS: dict[int, torch.Tensor] = {}


def _count(n: int) -> torch.Tensor:
    """n as a 0-d float32 CPU tensor (one per n; a CPU scalar divides tensors of any device)."""
    t = _COUNTS.get(n)
    if t is None:
        with torch.inference_mode(False):  # a normal tensor: usable inside and outside inference mode
            t = _COUNTS[n] = torch.tensor(float(n), dtype=torch.float32)
    return t


def window_scores(tok: torch.Tensor, g: WindowGeometry, tables: ops.WindowTables | None = None) -> torch.Tensor:
    """(B, H*W) token scores -> (B, nW) window scores, L2 norm over each window (padded positions score 0), as
    `ops.reference.score_windows` computes them. `tables`: `ops.window_tables(g, tok.device)`, when the caller
    holds them."""
    if g.padded:
        tok = torch.cat([tok, tok.new_zeros(tok.shape[0], 1)], dim=1)
    flat = (tables if tables is not None else ops.window_tables(g, tok.device)).flat
    per_window = tok.index_select(1, flat)  # index_select: 2x aten::index's speed
    return torch.linalg.vector_norm(per_window.view(tok.shape[0], g.num_windows, g.window_area), dim=-1)


class KeptTokens(NamedTuple):
    """Where the real tokens of the kept windows live.

    src: (M,) int64 row of each real token in the flat (B*H*W, C) block input, image-major, then window (in idx
        order), then position in the window.
    slots: (M,) int64 slot of each real token in the flat (B*k*N, C) window batch; None when no kept window has a
        padded slot (then M = B*k*N and slot i is row i).
    windows: B*k, the length of the window batch.
    """

    src: torch.Tensor
    slots: torch.Tensor | None
    windows: int


def kept_tokens(g: WindowGeometry, idx: torch.Tensor, tables: ops.WindowTables | None = None) -> KeptTokens:
    """(B, k) kept window indices -> the real tokens' rows in the block input and in the window batch. `tables`:
    `ops.window_tables(g, idx.device)`, when the caller holds them."""
    B, k = idx.shape
    tables = tables if tables is not None else ops.window_tables(g, idx.device)
    rows = idx.reshape(-1)  # (a view unless idx is a slice of a batch's sort)
    tok = tables.token.index_select(0, rows)  # (B*k, N), H*W at padded slots; index_select: cheaper than aten::index
    if B > 1:
        tok = tok.view(B, k, -1) + ops.geometry.image_offsets(B, g.H * g.W, idx.device)
    tok = tok.view(-1)
    if tables.pad is None:
        return KeptTokens(tok, None, B * k)
    pad = tables.pad.index_select(0, rows).view(-1)
    if not bool(pad.any()):
        return KeptTokens(tok, None, B * k)
    slots = (~pad).nonzero().squeeze(1)
    return KeptTokens(tok.index_select(0, slots), slots, B * k)


class BlockParts(Protocol):
    """The per-token parts of a pre-norm block: norm1, norm2 and the MLP (a `PrunedWindowBlock` is one)."""

    norm1: nn.Module
    norm2: nn.Module
    mlp: nn.Module


def fused_pruned_forward(
    x: torch.Tensor,
    g: WindowGeometry,
    kt: KeptTokens,
    block: BlockParts,
    attend: Callable[[torch.Tensor], torch.Tensor],
    inplace: bool,
    tok: torch.Tensor | None = None,
) -> torch.Tensor:
    """One pruned pre-norm block on the real tokens of the kept windows (no stochastic depth, no autograd).

    Args:
        x: (B, H, W, C) block input; written in place when `inplace` (the caller owns it), else copied once.
        kt: the real tokens of the kept windows (`kept_tokens`).
        block: its norm1, norm2 and mlp run on the (M, C) real tokens.
        attend: (B*k, N, C) normalised windows, zeros at padded slots -> (B*k, N, C) attention output.
        tok: (B, H*W) token scores of x, or None; when given, updated in place to those of the output.
    Returns:
        (B, H, W, C): x with the kept windows' real tokens replaced by the block's output.
    """
    B, H, W, C = x.shape
    N = g.window_area
    out = x if inplace else x.clone(memory_format=torch.contiguous_format)
    flat = out.view(B * H * W, C)
    t = flat.index_select(0, kt.src)  # (M, C)
    y = block.norm1(t)
    if kt.slots is not None:
        y = y.new_zeros(kt.windows * N, C).index_copy_(0, kt.slots, y)
    a = attend(y.view(kt.windows, N, C)).reshape(kt.windows * N, C)
    t += a if kt.slots is None else a.index_select(0, kt.slots)
    t += block.mlp(block.norm2(t))
    # on the float rows: the same copy on 16-byte (complex128) views of them is faster alone (a quarter of the
    # elements) but slower inside the model (the demo model at sparsity 0.5 on 2 CPU threads: by 0.008 x dense);
    # no conversion unless one is needed (each call costs microseconds of dispatch in every pruned block)
    flat.index_copy_(0, kt.src, t if t.dtype == out.dtype else t.to(out.dtype))
    if tok is not None:  # t is this call's own and written back: its abs in place, no (M, C) buffer
        tok.view(-1).index_copy_(0, kt.src, token_scores(t, inplace=True))
    return out
