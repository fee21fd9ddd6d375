"""Whether the Triton backend of the window ops can be used here: availability and the per-tensor support test.

`sparsesearch.ops` imports this module lazily (it tries to import triton) and takes the Triton bodies of the
custom ops (`custom_ops`, kernels in `triton_impl`) only where `AVAILABLE` and `supports(x)` allow.

Set ``TRITON_INTERPRET=1`` before this module is first imported to run the kernels on CPU tensors with the
Triton interpreter (tests); `INTERPRET` records what was in effect.
"""

from __future__ import annotations

import torch

__all__ = ["AVAILABLE", "INTERPRET", "UNAVAILABLE_REASON", "supports"]

UNAVAILABLE_REASON: str | None = None
"""Why the kernels cannot be used here (None when AVAILABLE)."""

try:
    from . import triton_impl as _impl
except Exception as exc:  # noqa: BLE001  (triton missing, or a broken installation: fall back to torch)
    AVAILABLE: bool = False
    INTERPRET: bool = False
    UNAVAILABLE_REASON = f"triton could not be imported ({type(exc).__name__}: {exc})"
    _DTYPES: tuple[torch.dtype, ...] = ()
else:
    AVAILABLE = True
    INTERPRET = _impl.INTERPRET
    _DTYPES = _impl.DTYPES


def supports(x: torch.Tensor) -> bool:
    """True when the kernels can run on x: a float32/float16/bfloat16 CUDA tensor, or a CPU tensor when the
    kernels are interpreted (TRITON_INTERPRET=1 at import)."""
    if not AVAILABLE or x.dtype not in _DTYPES:
        return False
    if x.device.type == "cuda":
        return torch.cuda.is_available()
    return INTERPRET and x.device.type == "cpu"
