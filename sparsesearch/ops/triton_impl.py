"""Triton kernels for pruned windows and their raw launchers (no autograd: see `custom_ops`).

Every kernel works on the NHWC block input in place of a rolled, padded, partitioned copy: the cyclic shift and
the bottom/right zero padding are applied by index arithmetic, evaluated in the kernels with the formulas that
`WindowGeometry` documents and `geometry` owns (window position -> token in `_window_rows`, as `token_index`;
token -> window position in `_merge_kernel`, as `token_window_index`). A kernel cannot call the Python owner, so
the formulas are restated here (a conditional subtraction in place of mod); tests/test_kernels.py compares every
kernel bit for bit with the torch bodies that index through `geometry`.

Kernels:
    `_score_kernel`        one program per (image, window): token score mean_c |x| in fp32, window score the
                           L2 norm over the window. Each element of x is read once.
    `_window_copy_kernel`  one program per (kept window, channel block). TO_WINDOWS: gather x into the dense
                           (B*k, N, C) batch (padded positions written as 0); otherwise the in-place scatter:
                           the valid positions of the windows are written over their tokens in x and nothing
                           else is touched.
    `_merge_kernel`        one program per (token block, image, channel block) over the whole output map: a
                           token of a kept window takes its value from the windows (or 0 without windows),
                           every other token from the base tensor (or 0 without a base). This is the
                           out-of-place scatter (base = x), the gradient of gather (no base) and the gradient
                           of scatter with respect to x (no windows); each output element is written once and
                           each input element read at most once.

The channel count C is a compile-time constant (one specialisation per C: a model has a handful), so when
C * element size is a multiple of 16 bytes (all Swin widths) channel offsets are provably aligned and every data
load and store is a 16-byte vector access on a GPU; tiles
are fixed per shape (`launch_config`), never autotuned, so launches are deterministic and CUDA-graph capturable.

Importing this module imports triton. Whether the kernels are interpreted (`TRITON_INTERPRET=1`, CPU tensors
work) is fixed when this module is imported, as triton decides it when a kernel is decorated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..errors import SparseSearchError
from .geometry import WindowGeometry

__all__ = [
    "INTERPRET",
    "DTYPES",
    "LaunchConfig",
    "launch_config",
    "score",
    "gather",
    "scatter_inplace",
    "merge",
]

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)
"""Element types the kernels accept."""

_MAX_TILE = 8192  # elements per program tile on a GPU

# Every launch passes enable_fp_fusion=False: no FMA contraction, so the score's products and sums round as
# written (as torch's do); it also settles the default triton 3.9 warns about (TRITON_DEFAULT_FP_FUSION).


# --------------------------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _window_rows(w, b, t, H, W, nWw, sh, sw, WH: tl.constexpr, WW: tl.constexpr):  # type: ignore[no-untyped-def]
    """Row index (b*H + h)*W + w (int64) of the token at window positions t of window w, and their validity."""
    wr = w // nWw
    wc = w - wr * nWw
    ti = t // WW
    tj = t - ti * WW
    hp = wr * WH + ti
    wp = wc * WW + tj
    valid = (t < WH * WW) & (hp < H) & (wp < W)
    r = hp + sh
    r = tl.where(r >= H, r - H, r)
    c = wp + sw
    c = tl.where(c >= W, c - W, c)
    row = (b.to(tl.int64) * H + r) * W + c
    return row, valid


@triton.jit
def _score_kernel(  # type: ignore[no-untyped-def]  # triton.jit: untyped by design
    x_ptr,
    out_ptr,
    H,
    W,
    C: tl.constexpr,
    nW,
    nWw,
    sh,
    sw,
    WH: tl.constexpr,
    WW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # b * nW + w
    b = pid // nW
    w = pid - b * nW
    t = tl.arange(0, BLOCK_N)
    row, valid = _window_rows(w, b, t, H, W, nWw, sh, sw, WH, WW)
    base = x_ptr + row[:, None] * C
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        m = valid[:, None] & (ch < C)[None, :]
        # cast before any arithmetic: fp16/bf16 are summed in fp32 (and the interpreter's bf16 is unreliable)
        v = tl.load(base + ch[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(tl.abs(v), axis=1)
    tok = tl.div_rn(acc, tl.full([BLOCK_N], C, tl.float32))  # sum, then divide: as torch's mean
    tl.store(out_ptr + pid, tl.sqrt_rn(tl.sum(tok * tok, axis=0)))


@triton.jit
def _window_copy_kernel(  # type: ignore[no-untyped-def]  # triton.jit: untyped by design
    x_ptr,
    win_ptr,
    idx_ptr,
    H,
    W,
    C: tl.constexpr,
    K,
    nWw,
    sh,
    sw,
    WH: tl.constexpr,
    WW: tl.constexpr,
    TO_WINDOWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # b * K + j: the j-th kept window of image b, row of the windows batch
    pid_c = tl.program_id(1)
    b = pid // K
    w = tl.load(idx_ptr + pid)
    t = tl.arange(0, BLOCK_N)
    row, valid = _window_rows(w, b, t, H, W, nWw, sh, sw, WH, WW)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (ch < C)[None, :]
    x_off = row[:, None] * C + ch[None, :]
    w_off = (pid.to(tl.int64) * (WH * WW) + t)[:, None] * C + ch[None, :]
    if TO_WINDOWS:
        v = tl.load(x_ptr + x_off, mask=valid[:, None] & cmask, other=0.0)
        tl.store(win_ptr + w_off, v, mask=(t < WH * WW)[:, None] & cmask)
    else:
        m = valid[:, None] & cmask
        v = tl.load(win_ptr + w_off, mask=m, other=0.0)
        tl.store(x_ptr + x_off, v.to(x_ptr.dtype.element_ty), mask=m)


@triton.jit
def _merge_kernel(  # type: ignore[no-untyped-def]  # triton.jit: untyped by design
    base_ptr,
    win_ptr,
    slot_ptr,
    out_ptr,
    H,
    W,
    C: tl.constexpr,
    K,
    nW,
    nWw,
    sh,
    sw,
    WH: tl.constexpr,
    WW: tl.constexpr,
    HAS_BASE: tl.constexpr,
    HAS_WIN: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_t = tl.program_id(0)
    b = tl.program_id(1)
    pid_c = tl.program_id(2)
    HW = H * W
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)  # flat h * W + w within image b
    tmask = tok < HW
    h = tok // W
    w = tok - h * W
    hs = h - sh  # position in the shifted map (never in the padding)
    hs = tl.where(hs < 0, hs + H, hs)
    ws = w - sw
    ws = tl.where(ws < 0, ws + W, ws)
    wr = hs // WH
    wc = ws // WW
    pos = (hs - wr * WH) * WW + (ws - wc * WW)
    slot = tl.load(slot_ptr + b * nW + wr * nWw + wc, mask=tmask, other=-1)  # kept slot j of the window, or -1
    kept = tmask & (slot >= 0)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = (ch < C)[None, :]
    out_off = (b.to(tl.int64) * HW + tok)[:, None] * C + ch[None, :]
    if HAS_BASE:
        v = tl.load(base_ptr + out_off, mask=(tmask & (slot < 0))[:, None] & cmask, other=0.0)
    else:
        v = tl.zeros([BLOCK_T, BLOCK_C], dtype=out_ptr.dtype.element_ty)
    if HAS_WIN:
        w_row = (b.to(tl.int64) * K + slot) * (WH * WW) + pos
        wv = tl.load(win_ptr + w_row[:, None] * C + ch[None, :], mask=kept[:, None] & cmask, other=0.0)
        v = tl.where(kept[:, None], wv.to(out_ptr.dtype.element_ty), v)
    tl.store(out_ptr + out_off, v, mask=tmask[:, None] & cmask)


INTERPRET: bool = not isinstance(_score_kernel, triton.runtime.JITFunction)
"""True when the kernels above were created by the Triton interpreter (TRITON_INTERPRET=1 when this module was
first imported): they then run on CPU tensors."""


# --------------------------------------------------------------------------------------------------------------
# launch configuration
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes of one launch. Fixed (never autotuned), so a launch is deterministic and graph-capturable.

    Attributes:
        block_n: window positions per program (a whole window: next power of two >= wh*ww).
        block_c: channels per program (window kernels and merge) or per loop step (score).
        block_t: tokens per program of the merge kernel.
        num_warps: warps per program on a GPU (ignored by the interpreter).
    """

    block_n: int
    block_c: int
    block_t: int
    num_warps: int


def _pow2_divisor(n: int) -> int:
    return n & -n


def launch_config(window_area: int, channels: int, interpret: bool | None = None) -> LaunchConfig:
    """Tile sizes for windows of `window_area` positions and `channels` channels.

    Interpreted (the default when INTERPRET): whole windows and all channels in one tile, so grids stay small.
    On a GPU: channel blocks that divide C when a power of two >= 32 does (96 -> 32, 192 -> 64, 384/768 -> 128),
    so no lane is masked along C, and tiles of at most 8192 elements.
    """
    interpret = INTERPRET if interpret is None else interpret
    block_n = triton.next_power_of_2(window_area)
    full_c = triton.next_power_of_2(channels)
    if interpret:
        return LaunchConfig(block_n, full_c, 128, 1)
    div = _pow2_divisor(channels)
    block_c = min(128, div if div >= 32 else full_c)
    block_c = max(16, min(block_c, _MAX_TILE // block_n))
    block_t = max(16, min(128, 4096 // block_c))
    return LaunchConfig(block_n, block_c, block_t, 8 if block_n * block_c >= 8192 else 4)


# --------------------------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------------------------
def _check_x(x: torch.Tensor, geom: WindowGeometry, what: str = "x") -> None:
    if x.dim() != 4 or x.shape[1] != geom.H or x.shape[2] != geom.W:
        raise SparseSearchError(
            f"{what} must have shape (B, {geom.H}, {geom.W}, C) for this window geometry, got {tuple(x.shape)}"
        )
    if x.dtype not in DTYPES:
        raise SparseSearchError(f"the Triton window kernels take float32, float16 or bfloat16, not {x.dtype}")


def _check_idx(idx: torch.Tensor, batch: int, device: torch.device) -> None:
    if idx.dim() != 2 or idx.shape[0] != batch:
        raise SparseSearchError(f"idx must have shape (B={batch}, k), got {tuple(idx.shape)}")
    if idx.device != device:
        raise SparseSearchError(f"idx is on {idx.device} but the feature map on {device}: move it there")
    if idx.dtype not in (torch.int64, torch.int32):
        raise SparseSearchError(f"idx must hold int64 or int32 window indices, not {idx.dtype}")


def _check_windows(windows: torch.Tensor, rows: int, geom: WindowGeometry, channels: int) -> None:
    if windows.dim() != 3 or tuple(windows.shape) != (rows, geom.window_area, channels):
        raise SparseSearchError(
            f"windows must have shape (B*k={rows}, N={geom.window_area}, C={channels}), got {tuple(windows.shape)}"
        )
    if windows.dtype not in DTYPES:
        raise SparseSearchError(f"the Triton window kernels take float32, float16 or bfloat16, not {windows.dtype}")


def _interpreter_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast on the host when interpreting: the interpreter's float32 -> bfloat16 conversion does not round to
    nearest even (a GPU's does, in the kernel)."""
    return t.to(dtype) if INTERPRET and t.dtype != dtype else t


class _device_of:
    """Make x's CUDA device the current one for a launch (a no-op on CPU)."""

    def __init__(self, x: torch.Tensor) -> None:
        self._guard = torch.cuda.device(x.device) if x.is_cuda else None

    def __enter__(self) -> None:
        if self._guard is not None:
            self._guard.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._guard is not None:
            self._guard.__exit__(*exc)


def score(x: torch.Tensor, geom: WindowGeometry, config: LaunchConfig | None = None) -> torch.Tensor:
    """Window scores straight from the block input.

    Args:
        x: (B, H, W, C) float32/float16/bfloat16.
        config: tile sizes (default `launch_config`).
    Returns:
        (B, nW) float32: per window, the L2 norm of the token scores mean_c |x| (padded positions score 0).
    """
    _check_x(x, geom)
    x = x.contiguous()
    B, H, W, C = x.shape
    cfg = config or launch_config(geom.window_area, C)
    out = torch.empty(B, geom.num_windows, device=x.device, dtype=torch.float32)
    if out.numel() == 0:
        return out
    if C == 0:
        return out.zero_()
    with _device_of(x):
        _score_kernel[(B * geom.num_windows,)](
            x, out, H, W, C, geom.num_windows, geom.nWw, geom.sh, geom.sw,
            WH=geom.wh, WW=geom.ww, BLOCK_N=cfg.block_n, BLOCK_C=min(cfg.block_c, triton.next_power_of_2(C)),
            num_warps=cfg.num_warps, enable_fp_fusion=False,
        )  # fmt: skip
    return out


def gather(
    x: torch.Tensor, idx: torch.Tensor, geom: WindowGeometry, config: LaunchConfig | None = None
) -> torch.Tensor:
    """Copy the kept windows of the shifted, padded partition into a dense batch, in one pass.

    Args:
        x: (B, H, W, C).
        idx: (B, k) int64/int32 kept window indices in [0, nW), distinct within a row.
    Returns:
        (B*k, wh*ww, C) of x's dtype, image-major then in idx order; padded positions are 0.
    """
    _check_x(x, geom)
    _check_idx(idx, x.shape[0], x.device)
    x = x.contiguous()
    idx = idx.contiguous()
    B, H, W, C = x.shape
    K = idx.shape[1]
    out = torch.empty(B * K, geom.window_area, C, device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    cfg = config or launch_config(geom.window_area, C)
    with _device_of(x):
        _window_copy_kernel[(B * K, triton.cdiv(C, cfg.block_c))](
            x, out, idx, H, W, C, K, geom.nWw, geom.sh, geom.sw,
            WH=geom.wh, WW=geom.ww, TO_WINDOWS=True, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps, enable_fp_fusion=False,
        )  # fmt: skip
    return out


def scatter_inplace(
    x: torch.Tensor,
    windows: torch.Tensor,
    idx: torch.Tensor,
    geom: WindowGeometry,
    config: LaunchConfig | None = None,
) -> None:
    """Write the valid positions of `windows` over their tokens of x, in place; nothing else of x is touched.

    Args:
        x: (B, H, W, C), contiguous; modified.
        windows: (B*k, wh*ww, C), cast to x's dtype (padded positions are ignored).
        idx: (B, k) kept window indices, as given to `gather`.
    """
    _check_x(x, geom)
    _check_idx(idx, x.shape[0], x.device)
    if not x.is_contiguous():
        raise SparseSearchError("the in-place scatter needs a contiguous x (use the out-of-place scatter)")
    B, H, W, C = x.shape
    K = idx.shape[1]
    _check_windows(windows, B * K, geom, C)
    if windows.device != x.device:
        raise SparseSearchError(f"windows are on {windows.device} but x on {x.device}")
    windows = _interpreter_cast(windows, x.dtype).contiguous()
    idx = idx.contiguous()
    if windows.numel() == 0:
        return
    cfg = config or launch_config(geom.window_area, C)
    with _device_of(x):
        _window_copy_kernel[(B * K, triton.cdiv(C, cfg.block_c))](
            x, windows, idx, H, W, C, K, geom.nWw, geom.sh, geom.sw,
            WH=geom.wh, WW=geom.ww, TO_WINDOWS=False, BLOCK_N=cfg.block_n, BLOCK_C=cfg.block_c,
            num_warps=cfg.num_warps, enable_fp_fusion=False,
        )  # fmt: skip


def window_slots(idx: torch.Tensor, num_windows: int) -> torch.Tensor:
    """(B, k) kept indices -> (B, nW) int32: the position j of each window in its row of idx, -1 if pruned."""
    B, K = idx.shape
    slots = torch.full((B, num_windows), -1, device=idx.device, dtype=torch.int32)
    src = torch.arange(K, device=idx.device, dtype=torch.int32).expand(B, K)
    return slots.scatter_(1, idx.to(torch.int64), src)


def merge(
    base: torch.Tensor | None,
    windows: torch.Tensor | None,
    idx: torch.Tensor,
    geom: WindowGeometry,
    shape: tuple[int, int, int, int] | None = None,
    dtype: torch.dtype | None = None,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """A new (B, H, W, C) map: tokens of kept windows from `windows`, all others from `base`.

    A missing `base` gives 0 outside the kept windows (the gradient of gather); missing `windows` give 0 inside
    them (the gradient of scatter with respect to x). Both present: the out-of-place scatter.

    Args:
        base: (B, H, W, C) or None.
        windows: (B*k, wh*ww, C) or None (padded positions are ignored); cast to the output dtype.
        idx: (B, k) kept window indices, distinct within a row.
        shape, dtype: of the output when `base` is None (default: from windows).
    Returns:
        (B, H, W, C), contiguous, of base's dtype (else `dtype`, else windows').
    """
    if base is None and windows is None:
        raise SparseSearchError("merge needs a base map, windows, or both")
    if base is not None:
        _check_x(base, geom, "base")
        base = base.contiguous()
        B, _, _, C = base.shape
        out_dtype = base.dtype
    else:
        assert windows is not None
        if shape is None:
            if windows.dim() != 3:
                raise SparseSearchError(f"windows must have shape (B*k, N, C), got {tuple(windows.shape)}")
            shape = (idx.shape[0], geom.H, geom.W, windows.shape[2])
        B, _, _, C = shape
        out_dtype = dtype or windows.dtype
        if out_dtype not in DTYPES:
            raise SparseSearchError(f"the Triton window kernels take float32, float16 or bfloat16, not {out_dtype}")
    device = base.device if base is not None else windows.device  # type: ignore[union-attr]
    _check_idx(idx, B, device)
    K = idx.shape[1]
    if windows is not None:
        _check_windows(windows, B * K, geom, C)
        if windows.device != device:
            raise SparseSearchError(f"windows are on {windows.device} but the feature map on {device}")
        windows = _interpreter_cast(windows, out_dtype).contiguous()
    out = torch.empty(B, geom.H, geom.W, C, device=device, dtype=out_dtype)
    if out.numel() == 0:
        return out
    slots = window_slots(idx, geom.num_windows)
    cfg = config or launch_config(geom.window_area, C)
    HW = geom.H * geom.W
    # a missing input is replaced by the other one (never dereferenced: HAS_BASE / HAS_WIN), not by `out`, so no
    # argument aliases the output (the interpreter copies arguments in and out)
    with _device_of(out):
        _merge_kernel[(triton.cdiv(HW, cfg.block_t), B, triton.cdiv(C, cfg.block_c))](
            base if base is not None else windows, windows if windows is not None else base, slots, out,
            geom.H, geom.W, C, K, geom.num_windows, geom.nWw, geom.sh, geom.sw,
            WH=geom.wh, WW=geom.ww, HAS_BASE=base is not None, HAS_WIN=windows is not None,
            BLOCK_T=cfg.block_t, BLOCK_C=cfg.block_c, num_warps=cfg.num_warps, enable_fp_fusion=False,
        )  # fmt: skip
    return out
