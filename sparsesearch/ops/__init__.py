"""Window ops for pruned blocks, behind one dispatch point.

`backend="auto"` (the default) uses the Triton kernels for CUDA tensors when they are available and the torch
reference otherwise. Override per call with `backend=` or globally with the environment variable
``SPARSESEARCH_KERNELS=torch|triton|auto|export``. "export" runs plain torch ops written for the graph they
export to (`export_impl`: static sizes but the batch, one ScatterND write-back), not the custom ops, and selects
windows with TopK: for exporters that only know standard ops (ONNX, whose TopK breaks ties by the lower index, as
the reference does).

Both backends run as torch custom ops (``sparsesearch::score_windows``, ``gather_windows``, ``scatter_windows``,
``scatter_windows_inplace``; see `custom_ops`): the torch bodies of `reference` are the body of the torch backend,
the Triton kernels of `triton_impl` that of the Triton one (`triton_backend` says whether it can run here), so
torch.compile, CUDA graphs, FlopCounterMode and fvcore see the same named ops on every device.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

from ..errors import SparseSearchError
from . import custom_ops, export_impl, reference
from .geometry import (
    WindowGeometry,
    WindowTables,
    keep_count,
    relative_position_index,
    shift_mask,
    shift_mask_kinds,
    token_index,
    window_tables,
)

__all__ = [
    "Backend",
    "WindowGeometry",
    "WindowTables",
    "keep_count",
    "token_index",
    "window_tables",
    "shift_mask",
    "shift_mask_kinds",
    "relative_position_index",
    "resolve_backend",
    "runs_torch",
    "score_windows",
    "select_windows",
    "gather_windows",
    "scatter_windows",
    "can_scatter_inplace",
]

Backend = Literal["auto", "torch", "triton", "export"]
_BACKENDS = ("auto", "torch", "triton", "export")


_UNSET = object()
_triton_module: object = _UNSET  # the Triton backend module, None when unusable; looked up once


def _triton_ops() -> Any:
    """The module `triton_backend`, or None when Triton (or its kernels) cannot be used here."""
    global _triton_module
    if _triton_module is _UNSET:
        try:
            from . import triton_backend  # noqa: PLC0415  (optional: imports triton)
        except ImportError:
            _triton_module = None
        else:
            _triton_module = triton_backend if triton_backend.AVAILABLE else None
    return _triton_module


def resolve_backend(x: torch.Tensor, backend: Backend | None = None) -> str:
    """Pick "torch" or "triton" for tensor x from the argument, then SPARSESEARCH_KERNELS, then the device.

    "auto" takes Triton for CUDA tensors it supports (float32/float16/bfloat16) and torch otherwise, CPU
    included (even when the kernels are interpreted). An explicit "triton" raises SparseSearchError when the
    kernels cannot run on x (CPU tensors need TRITON_INTERPRET=1 set before the kernels are first imported).
    """
    choice = _choice(backend)
    if choice in ("torch", "export"):
        return choice
    kernels = _triton_ops()
    if choice == "triton":
        if kernels is None:
            raise SparseSearchError("the Triton backend was requested but triton is not installed or usable here")
        if not kernels.supports(x):
            raise SparseSearchError(
                f"the Triton kernels cannot run on a {x.device.type} {x.dtype} tensor: they take CUDA "
                "float32/float16/bfloat16 tensors (CPU ones only with TRITON_INTERPRET=1 set before import); "
                "use backend='torch' or SPARSESEARCH_KERNELS=torch"
            )
        return "triton"
    return "triton" if kernels is not None and x.device.type == "cuda" and kernels.supports(x) else "torch"


def runs_torch(x: torch.Tensor, backend: Backend | None = None) -> bool:
    """Whether the window ops run their torch bodies on x, i.e. `resolve_backend(x, backend) == "torch"`, without
    its lookups in the common case (a CPU tensor under "auto"): every pruned block of every forward asks."""
    choice = _choice(backend)
    if choice == "torch" or (choice == "auto" and not x.is_cuda):
        return True
    return resolve_backend(x, backend) == "torch"


def _choice(backend: Backend | None) -> str:
    choice = backend or os.environ.get("SPARSESEARCH_KERNELS", "auto")
    if choice not in _BACKENDS:
        raise SparseSearchError(f"unknown kernel backend {choice!r}: use one of {', '.join(_BACKENDS)}")
    return choice


def _use_triton(x: torch.Tensor, choice: str) -> bool:
    """`choice` from `_choice`; CPU tensors under "auto" short-cut the lookup (this runs once per op call)."""
    if choice == "torch" or (choice == "auto" and x.device.type != "cuda"):
        return False
    return resolve_backend(x, choice) == "triton"  # type: ignore[arg-type]


def _probe_private_torch() -> tuple[Any, Any] | None:
    """The two private torch functions `_direct` asks (dispatch-mode stack depth, profiler on), or None when this
    torch lacks either: then every op goes through the custom-op dispatch (correct everywhere, a little slower)."""
    stack_len = getattr(torch._C, "_len_torch_dispatch_stack", None)
    profiling = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled", None)
    if not (callable(stack_len) and callable(profiling)):
        return None
    try:
        stack_len(), profiling()
    except Exception:  # noqa: BLE001  (a changed signature: treat as missing)
        return None
    return stack_len, profiling


_PRIVATE_TORCH = _probe_private_torch()  # probed once, at import


def _direct(x: torch.Tensor) -> bool:
    """Whether an op may call its body directly, skipping the custom-op dispatch: in eager inference (grad mode
    off) on a plain tensor, with no tracer (torch.jit, dynamo) and no dispatch mode (FlopCounterMode, fake
    tensors, make_fx) watching. Those see the named ``sparsesearch::*`` ops as before; plain eager inference saves
    the dispatch, which costs 30-60 us per call on CPU once caches are cold (about 10 % of a small pruned block).
    Always False when this torch lacks the private functions that tell whether a dispatch mode or the profiler
    is active (see `_probe_private_torch`).
    """
    if _PRIVATE_TORCH is None:
        return False
    stack_len, profiling = _PRIVATE_TORCH
    return (
        not torch.is_grad_enabled()
        and type(x) is torch.Tensor
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and stack_len() == 0
        and not profiling()  # profiles keep showing the named ops
    )


def score_windows(x: torch.Tensor, geom: WindowGeometry, backend: Backend | None = None) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW) float32 window scores; see `reference.score`.

    Both backends run as the custom op ``sparsesearch::score_windows``; Triton's scores equal the reference's up
    to float32 rounding (summation order), not bit for bit.
    """
    choice = _choice(backend)
    if choice == "export":
        return export_impl.score(x, geom)
    return custom_ops.score_windows_op(x, geom, _use_triton(x, choice), _direct(x))


def select_windows(scores: torch.Tensor, k: int, backend: Backend | None = None) -> torch.Tensor:
    """(B, nW) scores -> (B, k) int64 kept indices, ascending; ties go to the lower index.

    "export": the same windows by descending score (one TopK, whose ties go to the lower index): the exported
    block's gather, attention and write-back do not depend on the windows' order."""
    if _choice(backend) == "export":
        return torch.topk(scores, k, dim=1, largest=True, sorted=True).indices
    return reference.select(scores, k)


def gather_windows(
    x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry, backend: Backend | None = None
) -> torch.Tensor:
    """(B, H, W, C), (B, k) -> (B*k, wh*ww, C) kept windows; see `reference.gather`.

    Runs as ``sparsesearch::gather_windows`` (differentiable: the gradient scatters into zeros).
    """
    choice = _choice(backend)
    if choice == "export":
        return export_impl.gather(x, idx, geom)
    return custom_ops.gather_windows_op(x, idx, geom, _use_triton(x, choice), _direct(x))


def can_scatter_inplace(x: torch.Tensor, windows: torch.Tensor) -> bool:
    """Whether `scatter_windows(..., inplace=True)` really writes into x: when autograd is off (torch.no_grad or
    torch.inference_mode), x is contiguous, and x may be modified here (an inference tensor only inside
    inference mode).

    With grad mode on the scatter always runs out of place, even if nothing requires grad: x may have been saved
    for the backward of an earlier op (e.g. `x * weight`), which an in-place write would invalidate.
    """
    if torch.is_grad_enabled() or not x.is_contiguous():
        return False
    if torch.compiler.is_compiling():  # dynamo cannot trace is_inference(): compile under no_grad, not inference_mode
        return True
    return not (x.is_inference() and not torch.is_inference_mode_enabled())


def scatter_windows(
    x: torch.Tensor,
    windows: torch.Tensor,
    idx: torch.Tensor,
    geom: WindowGeometry,
    backend: Backend | None = None,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """(B, H, W, C), (B*k, N, C), (B, k) -> (B, H, W, C); see `reference.scatter`.

    Out of place (the default, and always with grad mode on): a new tensor, through
    ``sparsesearch::scatter_windows``, which copies every token once; its gradient is (dy with the kept tokens
    zeroed) for x and the gathered dy for windows. With `inplace=True` the caller declares that x is not needed
    afterwards: where `can_scatter_inplace(x, windows)` holds (inference: torch.no_grad or torch.inference_mode,
    and x contiguous) the kept windows are written into x itself through ``sparsesearch::scatter_windows_inplace``
    and x is returned, so tokens of pruned windows are never read or copied; otherwise the out-of-place op runs.
    """
    choice = _choice(backend)
    if choice == "export":
        return export_impl.scatter(x, windows, idx, geom)
    use_triton = _use_triton(x, choice)
    direct = _direct(x)
    if inplace and can_scatter_inplace(x, windows):
        return custom_ops.scatter_windows_inplace_op(x, windows, idx, geom, use_triton, direct)
    return custom_ops.scatter_windows_op(x, windows, idx, geom, use_triton, direct)
