"""Bodies of the "export" backend: the window ops as plain torch ops an exporter (ONNX) turns into a lean graph.

The same values as `reference` (checked against it in tests/test_export_onnx.py), written for the graph they export
to rather than for eager speed:
- every size but the batch is a Python int (the map's H, W, C come from the traced shape as constants), so a graph
  with a dynamic batch axis carries no Shape / Gather / Concat arithmetic for them: reshapes take -1 for the batch;
- the write-back is one ScatterND of whole token rows into the block input (ONNX Runtime runs it in place), not the
  reference's extra-row buffer, ScatterElements of single elements and slice: a padded slot rewrites its window's
  first token with that token's own value (`WindowTables.safe` / `src`), as the in-place reference does;
- the per-window index tables (`WindowTables`) are constants of the graph, indexed by the kept windows;
- the dense path's shift, padding and window partition is one Gather of the map's tokens (`partition`), and its
  reverse one Gather back (`reverse`), instead of rolls (Slice, Concat), a pad and 6-d transposes.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from .geometry import WindowGeometry, token_index, window_tables

__all__ = ["score", "gather", "kept_rows", "scatter", "partition", "reverse", "map_size"]


def map_size(x: torch.Tensor) -> tuple[int, int, int]:
    """(H, W, C) of a (B, H, W, C) map as Python ints (constants of a traced graph; the batch stays symbolic)."""
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


def _offsets(x: torch.Tensor, step: int, per_image: bool = False) -> torch.Tensor:
    """(B, 1, 1) int64 [0, step, 2*step, ...] for the B rows of x (B a graph value when traced).

    `per_image` (x a batch of maps, so B is the graph's batch): the image numbers [0, 1, ...] are traced once per
    graph and each step's offsets once, since every pruned block of a stage adds the same offsets: traced per block
    they are five nodes each (Shape, Gather, Range, Mul, Reshape) that ONNX Runtime cannot merge (each reads its own
    block's input), here four for the graph and one Mul per step."""
    state = torch._C._get_tracing_state() if per_image else None
    if state is None:
        return (torch.arange(x.shape[0], device=x.device) * step).view(-1, 1, 1)
    if _TRACED_OFFSETS.get("state") is not state:
        _TRACED_OFFSETS.clear()
        _TRACED_OFFSETS["state"] = state
    images = ("images", str(x.device))
    if images not in _TRACED_OFFSETS:
        _TRACED_OFFSETS[images] = torch.arange(x.shape[0], device=x.device).view(-1, 1, 1)
    key = (step, str(x.device))
    if key not in _TRACED_OFFSETS:
        _TRACED_OFFSETS[key] = cast("torch.Tensor", _TRACED_OFFSETS[images]) * step
    return cast("torch.Tensor", _TRACED_OFFSETS[key])


#: the graph being traced ("state": its tracing state; ("images", device): its image numbers (B, 1, 1); (step,
#: device): the offsets of a step)
_TRACED_OFFSETS: dict[object, object] = {}


class _GatherRows(torch.autograd.Function):
    """data (R, C), index (...) int64 -> (..., C): the rows of data, exported as one Gather (indexing exports with
    shape arithmetic around it)."""

    @staticmethod
    def forward(ctx: Any, data: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return data.index_select(0, index.reshape(-1)).view(*index.shape, data.shape[-1])

    @staticmethod
    def symbolic(g: Any, data: Any, index: Any) -> Any:
        return g.op("Gather", data, index, axis_i=0)


class _ScatterRows(torch.autograd.Function):
    """data (R, C), index (...) int64 of distinct rows, updates (..., C) -> data with those rows replaced, exported
    as one ScatterND (`index_put` exports with a Shape / Slice / Concat / Reshape chain for the updates' shape)."""

    @staticmethod
    def forward(ctx: Any, data: torch.Tensor, index: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return data.index_put((index.reshape(-1),), updates.reshape(-1, data.shape[-1]))

    @staticmethod
    def symbolic(g: Any, data: Any, index: Any, updates: Any) -> Any:
        return g.op("ScatterND", data, g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([-1]))), updates)


def score(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW) float32 window scores, as `reference.score`."""
    H, W, C = map_size(x)
    # from the (B*H*W, C) rows the gather and write-back read too: a block after a pruned one then reads the
    # ScatterND's rows directly (its map-shaped output and the reshape back fold away)
    tok = x.reshape(-1, C).abs().mean(dim=-1, dtype=torch.float32).reshape(-1, H * W)
    if geom.padded:
        tok = F.pad(tok, (0, 1))  # slot H*W scores 0: padded positions
    return torch.linalg.vector_norm(tok[:, token_index(geom, x.device)], dim=-1)


def _rows(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B, k, N) int64 row of each kept window position in x viewed as (B*H*W, C); a padded
    position reads its window's first token."""
    H, W, _ = map_size(x)
    return window_tables(geom, x.device).safe[idx] + _offsets(x, H * W, per_image=True)


def gather(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B*k, N, C) kept windows, zeros at padded positions, as `reference.gather`."""
    C, N = int(x.shape[3]), geom.window_area
    out = _GatherRows.apply(x.reshape(-1, C), _rows(x, idx, geom).view(-1, N))
    pad = window_tables(geom, x.device).pad
    if pad is not None:
        out = out.masked_fill(pad[idx].view(-1, N, 1), 0)
    return out


def kept_rows(x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B*k*N, C): every slot of the kept windows as a row, window-major (one Gather); a
    padded slot holds its window's first token (not zeros: the exported block zeroes it after norm1)."""
    C = int(x.shape[3])
    return _GatherRows.apply(x.reshape(-1, C), _rows(x, idx, geom).reshape(-1))


def scatter(x: torch.Tensor, windows: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C), (B*k, N, C) or (B*k*N, C), (B, k) -> (B, H, W, C): x with the kept windows' tokens replaced
    (padded positions discarded), as `reference.scatter`; a new tensor (one ScatterND in ONNX)."""
    H, W, C = map_size(x)
    N = geom.window_area
    rows = windows.to(x.dtype)
    shape = (-1,) if rows.dim() == 2 else (-1, N)  # the slots, as the rows are laid out
    src = window_tables(geom, x.device).src
    if src is not None:  # a padded slot writes its window's first token with that token's own new value
        pos = src[idx].view(-1, N) + _offsets(idx.reshape(-1), N).view(-1, 1)
        rows = _GatherRows.apply(rows.reshape(-1, C), pos.view(shape))
    out = _ScatterRows.apply(x.reshape(-1, C), _rows(x, idx, geom).view(shape), rows)
    return out.view(-1, H, W, C)


def partition(y: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B, H, W, C) -> (B*nW, N, C): every window of the shifted, zero-padded map, in grid order (the dense path's
    roll, pad and `window_partition` as one Gather by `token_index`)."""
    H, W, C = map_size(y)
    flat = y.reshape(-1, H * W, C)
    if geom.padded:
        flat = F.pad(flat, (0, 0, 0, 1))  # row H*W: the zeros padded positions read
    return flat[:, token_index(geom, y.device).reshape(-1)].reshape(-1, geom.window_area, C)


def _inverse_index(geom: WindowGeometry, device: torch.device) -> torch.Tensor:
    """(H*W,) int64: the slot (window * N + position) of the shifted, padded partition that holds each token; built
    from plain numbers, so that a trace takes it as a constant."""
    tok = token_index(geom, "cpu").reshape(-1).tolist()
    inv = [0] * (geom.H * geom.W)
    for slot, t in enumerate(tok):
        if t < geom.H * geom.W:
            inv[t] = slot
    return torch.tensor(inv, dtype=torch.int64, device=device)


def reverse(w: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """(B*nW, N, C) windows of `partition`'s layout -> (B, H, W, C) un-shifted map without the padding (the dense
    path's `window_reverse`, crop and roll back as one Gather)."""
    C = int(w.shape[-1])
    flat = w.reshape(-1, geom.num_windows * geom.window_area, C)
    return flat[:, _inverse_index(geom, w.device)].reshape(-1, geom.H, geom.W, C)
