"""The window ops as torch custom operators (namespace ``sparsesearch``), with fake and autograd registrations.

Every backend goes through these ops: the flag `use_triton` picks the body (the Triton kernels of `triton_impl`,
or the torch bodies of `reference`), so torch.compile captures a pruned forward and backward as the same few
named, opaque nodes on CPU and CUDA (k is static: it is the size of idx), CUDA graphs can capture them (no host
synchronisation, fixed launch configs), and FlopCounterMode / fvcore see ``sparsesearch::*`` instead of the
index_select / cat / index_copy that implement them.

Ops (geometry as ints: the window wh x ww and shift sh, sw; H, W come from the map):

    sparsesearch::score_windows(x, wh, ww, sh, sw, use_triton) -> (B, nW) float32
    sparsesearch::gather_windows(x, idx, ...) -> (B*k, N, C)
    sparsesearch::scatter_windows(x, windows, idx, ...) -> (B, H, W, C) new tensor
    sparsesearch::scatter_windows_inplace(x!, windows, idx, ...) -> ()   writes the kept tokens of x only
    sparsesearch::place_windows(windows, idx, H, W, ...) -> (B, H, W, C)   zeros, kept tokens from windows
    sparsesearch::zero_windows(x, idx, ...) -> (B, H, W, C)                x with the kept tokens zeroed

Gradients (all linear ops, so the backward reuses the same ops and kernels, and double backward works):
    gather:  dx = place_windows(dy)                      (a scatter-add into zeros: kept windows never overlap)
    scatter: dx = zero_windows(dy), dwindows = gather_windows(dy)  (0 at padded positions, as the reference)
    place:   dwindows = gather_windows(dy);   zero: dx = zero_windows(dy)
    score:   dx = sum over the token's window of dy_w * tok / s_w * sign(x) / C, in torch ops (0 where s_w = 0,
             where the reference's autograd gives NaN); scores only feed a discrete top-k in the models.
The in-place scatter has no autograd formula: `sparsesearch.ops.scatter_windows` only uses it where autograd
records nothing (see its docstring).

Python entry points: ``<op>_op(..., geom, use_triton, direct)`` calls ``sparsesearch::<op>`` (or, with
`direct`, its body); `sparsesearch.ops` decides both flags. The registered op objects are the private ``_*_def``.

This module deliberately does not use ``from __future__ import annotations``: torch.library infers the op
schemas from the annotations.
"""

from typing import Any

import torch
from torch import Tensor

from ..errors import SparseSearchError
from . import reference
from .geometry import WindowGeometry, token_window_index

__all__ = [
    "score_windows_op",
    "gather_windows_op",
    "scatter_windows_op",
    "scatter_windows_inplace_op",
]


def _triton_impl() -> Any:
    from . import triton_impl  # noqa: PLC0415  (optional: imports triton)

    return triton_impl


def _geom(H: int, W: int, wh: int, ww: int, sh: int, sw: int) -> WindowGeometry:
    return WindowGeometry(int(H), int(W), int(wh), int(ww), int(sh), int(sw))


def _num_windows(H: Any, W: Any, wh: int, ww: int) -> Any:
    return ((H + wh - 1) // wh) * ((W + ww - 1) // ww)


# ---- op bodies (also called directly in eager inference, see `sparsesearch.ops`) -----------------------------
def _score_body(x: Tensor, geom: WindowGeometry, use_triton: bool) -> Tensor:
    return _triton_impl().score(x, geom) if use_triton else reference.score(x, geom)


def _gather_body(x: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool) -> Tensor:
    return _triton_impl().gather(x, idx, geom) if use_triton else reference.gather(x, idx, geom)


def _scatter_body(x: Tensor, windows: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool) -> Tensor:
    if use_triton:
        return _triton_impl().merge(x, windows, idx, geom)
    return reference.scatter(x, windows, idx, geom)


def _scatter_inplace_body(x: Tensor, windows: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool) -> None:
    if use_triton:
        _triton_impl().scatter_inplace(x, windows, idx, geom)
    else:
        reference.scatter_inplace(x, windows, idx, geom)


# ---- score ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("sparsesearch::score_windows", mutates_args=())
def _score_def(x: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return _score_body(x, _geom(x.shape[1], x.shape[2], wh, ww, sh, sw), use_triton)


@_score_def.register_fake
def _(x: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return x.new_empty((x.shape[0], _num_windows(x.shape[1], x.shape[2], wh, ww)), dtype=torch.float32)


def _score_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, wh, ww, sh, sw, _ = inputs
    ctx.save_for_backward(x, output)
    ctx.geom = (wh, ww, sh, sw)


def _score_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    x, scores = ctx.saved_tensors
    B, H, W, C = x.shape
    geom = _geom(H, W, *ctx.geom)
    tok = x.abs().mean(dim=-1, dtype=torch.float32).reshape(B, H * W)
    coef = torch.where(scores > 0, grad / scores, torch.zeros_like(scores))  # d s_w / d tok_t = tok_t / s_w
    g_tok = coef[:, token_window_index(geom, x.device)] * tok / C
    gx = g_tok.view(B, H, W, 1) * x.sign()
    return gx.to(x.dtype), None, None, None, None, None


_score_def.register_autograd(_score_backward, setup_context=_score_setup)


# ---- gather ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("sparsesearch::gather_windows", mutates_args=())
def _gather_def(x: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return _gather_body(x, idx, _geom(x.shape[1], x.shape[2], wh, ww, sh, sw), use_triton)


@_gather_def.register_fake
def _(x: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return x.new_empty((x.shape[0] * idx.shape[1], wh * ww, x.shape[3]))


def _gather_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, idx, wh, ww, sh, sw, use_triton = inputs
    ctx.save_for_backward(idx)
    ctx.args = (x.shape[1], x.shape[2], wh, ww, sh, sw, use_triton)


def _gather_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    (idx,) = ctx.saved_tensors
    gx = _place_def(grad, idx, *ctx.args) if ctx.needs_input_grad[0] else None
    return gx, None, None, None, None, None, None


_gather_def.register_autograd(_gather_backward, setup_context=_gather_setup)


# ---- scatter (out of place) ----------------------------------------------------------------------------------
@torch.library.custom_op("sparsesearch::scatter_windows", mutates_args=())
def _scatter_def(
    x: Tensor, windows: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool
) -> Tensor:
    return _scatter_body(x, windows, idx, _geom(x.shape[1], x.shape[2], wh, ww, sh, sw), use_triton)


@_scatter_def.register_fake
def _(x: Tensor, windows: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return x.new_empty(x.shape)


def _scatter_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, windows, idx, wh, ww, sh, sw, use_triton = inputs
    ctx.save_for_backward(idx)
    ctx.args = (wh, ww, sh, sw, use_triton)
    ctx.windows_dtype = windows.dtype


def _scatter_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    (idx,) = ctx.saved_tensors
    gx = _zero_def(grad, idx, *ctx.args) if ctx.needs_input_grad[0] else None
    gw = _gather_def(grad, idx, *ctx.args).to(ctx.windows_dtype) if ctx.needs_input_grad[1] else None
    return gx, gw, None, None, None, None, None, None


_scatter_def.register_autograd(_scatter_backward, setup_context=_scatter_setup)


# ---- scatter (in place) --------------------------------------------------------------------------------------
@torch.library.custom_op("sparsesearch::scatter_windows_inplace", mutates_args=("x",))
def _scatter_inplace_def(
    x: Tensor, windows: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool
) -> None:
    _scatter_inplace_body(x, windows, idx, _geom(x.shape[1], x.shape[2], wh, ww, sh, sw), use_triton)


@_scatter_inplace_def.register_fake
def _(x: Tensor, windows: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> None:
    return None


# ---- helpers of the backward ---------------------------------------------------------------------------------
@torch.library.custom_op("sparsesearch::place_windows", mutates_args=())
def _place_def(
    windows: Tensor, idx: Tensor, H: int, W: int, wh: int, ww: int, sh: int, sw: int, use_triton: bool
) -> Tensor:
    geom = _geom(H, W, wh, ww, sh, sw)
    shape = (idx.shape[0], H, W, windows.shape[2])
    if use_triton:
        return _triton_impl().merge(None, windows, idx, geom, shape=shape, dtype=windows.dtype)
    return reference.scatter(windows.new_zeros(shape), windows, idx, geom)


@_place_def.register_fake
def _(windows: Tensor, idx: Tensor, H: int, W: int, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return windows.new_empty((idx.shape[0], H, W, windows.shape[2]))


def _place_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    windows, idx, H, W, wh, ww, sh, sw, use_triton = inputs
    ctx.save_for_backward(idx)
    ctx.args = (wh, ww, sh, sw, use_triton)


def _place_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    (idx,) = ctx.saved_tensors
    gw = _gather_def(grad, idx, *ctx.args) if ctx.needs_input_grad[0] else None
    return (gw,) + (None,) * 8


_place_def.register_autograd(_place_backward, setup_context=_place_setup)


@torch.library.custom_op("sparsesearch::zero_windows", mutates_args=())
def _zero_def(x: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    geom = _geom(x.shape[1], x.shape[2], wh, ww, sh, sw)
    if use_triton:
        return _triton_impl().merge(x, None, idx, geom)
    return reference.zero_kept(x, idx, geom)


@_zero_def.register_fake
def _(x: Tensor, idx: Tensor, wh: int, ww: int, sh: int, sw: int, use_triton: bool) -> Tensor:
    return x.new_empty(x.shape)


def _zero_setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, idx, wh, ww, sh, sw, use_triton = inputs
    ctx.save_for_backward(idx)
    ctx.args = (wh, ww, sh, sw, use_triton)


def _zero_backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
    (idx,) = ctx.saved_tensors
    gx = _zero_def(grad, idx, *ctx.args) if ctx.needs_input_grad[0] else None
    return (gx,) + (None,) * 6


_zero_def.register_autograd(_zero_backward, setup_context=_zero_setup)


# ---- Python entry points -------------------------------------------------------------------------------------
def _check_map(x: Tensor, geom: WindowGeometry, what: str = "x") -> None:
    if x.dim() != 4 or x.shape[1] != geom.H or x.shape[2] != geom.W:
        raise SparseSearchError(f"{what} must have shape (B, {geom.H}, {geom.W}, C) for {geom}, got {tuple(x.shape)}")


def _check_idx(idx: Tensor, x: Tensor) -> None:
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise SparseSearchError(f"idx must have shape (B={x.shape[0]}, k), got {tuple(idx.shape)}")


# `direct=True` runs the op's body without the custom-op dispatch: only for eager calls that autograd, tracers and
# dispatch modes do not see (the caller decides, see `sparsesearch.ops._direct`).
def score_windows_op(x: Tensor, geom: WindowGeometry, use_triton: bool = False, direct: bool = False) -> Tensor:
    """(B, H, W, C) -> (B, nW) float32 window scores, through ``sparsesearch::score_windows``."""
    _check_map(x, geom)
    if direct:
        return _score_body(x, geom, use_triton)
    return _score_def(x, geom.wh, geom.ww, geom.sh, geom.sw, use_triton)


def gather_windows_op(
    x: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool = False, direct: bool = False
) -> Tensor:
    """(B, H, W, C), (B, k) -> (B*k, wh*ww, C) kept windows, through ``sparsesearch::gather_windows``."""
    _check_map(x, geom)
    _check_idx(idx, x)
    if direct:
        return _gather_body(x, idx, geom, use_triton)
    return _gather_def(x, idx, geom.wh, geom.ww, geom.sh, geom.sw, use_triton)


def scatter_windows_op(
    x: Tensor, windows: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool = False, direct: bool = False
) -> Tensor:
    """(B, H, W, C), (B*k, N, C), (B, k) -> new (B, H, W, C), through ``sparsesearch::scatter_windows``."""
    _check_map(x, geom)
    _check_idx(idx, x)
    if direct:
        return _scatter_body(x, windows, idx, geom, use_triton)
    return _scatter_def(x, windows, idx, geom.wh, geom.ww, geom.sh, geom.sw, use_triton)


def scatter_windows_inplace_op(
    x: Tensor, windows: Tensor, idx: Tensor, geom: WindowGeometry, use_triton: bool = False, direct: bool = False
) -> Tensor:
    """Write the kept windows into x itself and return x (no autograd: x and windows must not need grads).

    Through ``sparsesearch::scatter_windows_inplace``; tokens of pruned windows are never read or written.
    """
    _check_map(x, geom)
    _check_idx(idx, x)
    if not x.is_contiguous():
        raise SparseSearchError("the in-place scatter needs a contiguous x")
    if direct:
        _scatter_inplace_body(x, windows, idx, geom, use_triton)
    else:
        _scatter_inplace_def(x, windows, idx, geom.wh, geom.ww, geom.sh, geom.sw, use_triton)
    return x
