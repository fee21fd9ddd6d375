"""Triton window kernels against the torch reference, the custom ops and the dispatch: interpreted on CPU (the
suite), or compiled on a GPU with ``SPARSESEARCH_TEST_DEVICE=cuda`` (benchmarks/gpu/run.sh does that).

On CPU the kernels run under the Triton interpreter: TRITON_INTERPRET=1 must be in effect when the kernel module
is first imported (triton decides it when a kernel is decorated), so it is set here before anything imports it;
the Makefile sets it for the whole suite as well. If the kernels were imported earlier without it, every test
here is skipped with that reason. With ``SPARSESEARCH_TEST_DEVICE=cuda`` the same tests run on CUDA tensors with
the real compiler (TRITON_INTERPRET must then be unset), and bf16 joins the backward tests (the interpreter
computes bf16 arithmetic in fp32, so only a GPU checks it).

Exactness: gather, scatter (out of place and in place) and their gradients are compared bit for bit
(torch.equal) with the reference in fp32 and fp16 (bf16 too). Window scores are not bit-exact on general
inputs (the kernel and torch sum in different orders): they are compared with a tight tolerance, the selected
windows are compared bit for bit on inputs without near-ties, and scores are bit-exact on inputs whose
arithmetic is exact (where they equal the correctly rounded result, which the CPU reference misses by one
ulp when torch's float32 sqrt rounds the wrong way).

Without a GPU, `test_kernels_compile_for_sm90` at least compiles every kernel variant for sm_90 with the GPU
launch config (in a subprocess without the interpreter) and checks its memory accesses.
"""

from __future__ import annotations

import os

_DEVICE = os.environ.get("SPARSESEARCH_TEST_DEVICE", "cpu")
if _DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton kernels are created: see the module docstring

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from sparsesearch import SparseSearchError, ops  # noqa: E402
from sparsesearch.models.swin import SwinBlock  # noqa: E402
from sparsesearch.ops import WindowGeometry, custom_ops, reference  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed (Linux x86-64 only)")
tl = pytest.importorskip("triton.language")

from sparsesearch.ops import triton_backend, triton_impl  # noqa: E402

DEVICE = torch.device(_DEVICE)
ON_CUDA = DEVICE.type == "cuda"
if DEVICE.type not in ("cpu", "cuda"):
    raise ValueError(f"SPARSESEARCH_TEST_DEVICE={_DEVICE!r}: use cpu or cuda")
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip("SPARSESEARCH_TEST_DEVICE=cuda but torch sees no CUDA device", allow_module_level=True)
if not triton_backend.AVAILABLE:
    pytest.skip(f"Triton kernels unavailable: {triton_backend.UNAVAILABLE_REASON}", allow_module_level=True)
if ON_CUDA and triton_impl.INTERPRET:
    pytest.skip("SPARSESEARCH_TEST_DEVICE=cuda needs TRITON_INTERPRET unset (the kernels were built for the "
                "interpreter)", allow_module_level=True)  # fmt: skip
if not ON_CUDA and not triton_impl.INTERPRET:
    pytest.skip(
        "sparsesearch.ops.triton_impl was imported before TRITON_INTERPRET=1 was set, so its kernels were built "
        "for a GPU and cannot run on CPU tensors: run pytest with TRITON_INTERPRET=1 in the environment",
        allow_module_level=True,
    )

pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")

VERSIONS = f"triton {triton.__version__}, numpy {np.__version__}, torch {torch.__version__}, {DEVICE.type}"
cpu_only = pytest.mark.skipif(ON_CUDA, reason="checks the CPU interpreter set-up")
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="needs SPARSESEARCH_TEST_DEVICE=cuda and a GPU")

# (H, W, window, shifted, batch): shift / no shift, padding, a window clamped to the map, batch 1/2/3
GEOMS = [
    (8, 8, 4, False, 1),  # no shift, no padding
    (8, 8, 4, True, 2),  # shift, no padding
    (9, 11, 4, True, 3),  # shift and padding on both sides
    (10, 7, 4, False, 2),  # padding, no shift
    (5, 13, 7, True, 1),  # window clamped to H (5x7, no shift along H), shift + padding along W
    (3, 3, 7, True, 3),  # window clamped on both sides: a single unshifted window
]
GEOM_IDS = [f"{h}x{w}-w{win}-{'s' if s else 'n'}-b{b}" for h, w, win, s, b in GEOMS]
CHANNELS = [24, 40]  # not powers of two
DTYPES = [torch.float32, torch.float16]
GRAD_DTYPES = DTYPES + [torch.bfloat16] if ON_CUDA else DTYPES  # bf16 arithmetic: GPU only (see the docstring)


def _geom(case: tuple[int, int, int, bool, int]) -> tuple[WindowGeometry, int]:
    H, W, win, shifted, B = case
    return WindowGeometry.create(H, W, win, shifted), B


def _keep_counts(n: int) -> list[int]:
    return sorted({1, max(1, n // 2), n})


def _random_idx(B: int, n: int, k: int, gen: torch.Generator, ordered: bool = True) -> torch.Tensor:
    rows = [torch.randperm(n, generator=gen)[:k] for _ in range(B)]
    return torch.stack([r.sort().values if ordered else r for r in rows]).to(DEVICE)


def _randn(*shape: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(device=DEVICE, dtype=dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bit-equal on CPU. On CUDA up to rounding, relative to the tensor's scale: attention backward and the
    atomics of index backward (the relative position bias) do not promise one summation order from call to call;
    the window ops themselves are compared bit for bit in the tests above."""
    if not ON_CUDA:
        assert torch.equal(a, b)
        return
    rtol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(a.dtype, 1e-4)
    torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=rtol * float(b.float().abs().max()) + 1e-6)


# --------------------------------------------------------------------------------------------------------------
# canary: the interpreter itself
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def _canary_kernel(a_ptr, b_ptr, out_ptr, sum_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    m = i < n
    a = tl.load(a_ptr + i, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + i, mask=m, other=-1.0)
    q = i // 3
    r = i - q * 3
    tl.store(out_ptr + i, a + b * r.to(tl.float32), mask=m)
    tl.store(sum_ptr, tl.sum(tl.where(m, a, 0.0), axis=0))


def test_interpreter_canary():
    """A tiny kernel with known exact results: masked loads, integer division, casts, a reduction."""
    n = 10
    a = torch.arange(n, dtype=torch.float32, device=DEVICE).to(torch.bfloat16)  # 0..9 exact in bf16
    b = torch.full((n,), 0.5, dtype=torch.float32, device=DEVICE)
    out = torch.full((16,), 7.0, device=DEVICE)
    total = torch.zeros(1, device=DEVICE)
    _canary_kernel[(1,)](a, b, out, total, n, BLOCK=16)
    expected = torch.tensor([i + 0.5 * (i % 3) for i in range(n)] + [7.0] * 6)
    ok = torch.equal(out.cpu(), expected) and total.item() == 45.0
    assert ok, (
        f"Triton ({'compiled' if ON_CUDA else 'interpreted'}) computed wrong values ({VERSIONS}): "
        f"got {out.tolist()} and sum {total.item()}, "
        f"expected {expected.tolist()} and 45.0. The interpreter is known to be silently wrong with some numpy "
        "versions: install the numpy/triton versions of constraints.txt (make does)"
    )


# --------------------------------------------------------------------------------------------------------------
# gather and scatter: bit for bit
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
@pytest.mark.parametrize("C", CHANNELS)
@pytest.mark.parametrize("case", GEOMS, ids=GEOM_IDS)
def test_gather_scatter_bit_exact(case, C, dtype):
    geom, B = _geom(case)
    gen = torch.Generator().manual_seed(hash((case, C)) % 2**31)
    x = _randn(B, geom.H, geom.W, C, dtype=dtype, gen=gen)
    x_before = x.clone()
    n = geom.num_windows
    for k in _keep_counts(n):
        idx = _random_idx(B, n, k, gen)
        got = ops.gather_windows(x, idx, geom, backend="triton")
        assert torch.equal(got, reference.gather(x, idx, geom)), f"gather k={k}"
        new = _randn(B * k, geom.window_area, C, dtype=dtype, gen=gen)
        want = reference.scatter(x, new, idx, geom)
        assert torch.equal(ops.scatter_windows(x, new, idx, geom, backend="triton"), want), f"scatter k={k}"
        assert torch.equal(x, x_before), "the out-of-place scatter modified x"
        y = x.clone()
        with torch.no_grad():
            out = ops.scatter_windows(y, new, idx, geom, backend="triton", inplace=True)
        assert out is y and torch.equal(y, want), f"in-place scatter k={k}"


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_unordered_idx_and_mixed_dtypes(backend):
    """Any distinct indices (not only ascending) and windows of another dtype than x (cast like the reference)."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(1)
    x = _randn(2, 9, 11, 24, dtype=torch.float16, gen=gen)
    idx = _random_idx(2, geom.num_windows, 4, gen, ordered=False)
    assert torch.equal(ops.gather_windows(x, idx, geom, backend), reference.gather(x, idx, geom))
    for wdtype in (torch.float32, torch.bfloat16):
        new = _randn(8, geom.window_area, 24, dtype=wdtype, gen=gen) * 3
        want = reference.scatter(x, new, idx, geom)
        assert torch.equal(ops.scatter_windows(x, new, idx, geom, backend), want)
        y = x.clone()
        with torch.no_grad():
            assert torch.equal(ops.scatter_windows(y, new, idx, geom, backend, inplace=True), want)
    xb = x.to(torch.bfloat16)
    new = _randn(8, geom.window_area, 24, dtype=torch.float32, gen=gen)
    assert torch.equal(ops.scatter_windows(xb, new, idx, geom, backend), reference.scatter(xb, new, idx, geom))


@pytest.mark.parametrize("C", [96, 40, 200])
def test_gpu_launch_config_under_interpreter(C):
    """The tile sizes used on a GPU (channel blocks smaller than C, masked tails) give the same results."""
    geom = WindowGeometry.create(9, 11, 4, True)
    cfg = triton_impl.launch_config(geom.window_area, C, interpret=False)
    assert cfg.block_c < triton.next_power_of_2(C) or C == 40
    gen = torch.Generator().manual_seed(C)
    x = _randn(2, 9, 11, C, dtype=torch.float16, gen=gen)
    idx = _random_idx(2, geom.num_windows, 3, gen)
    torch.testing.assert_close(triton_impl.score(x, geom, cfg), reference.score(x, geom), rtol=1e-6, atol=1e-6)
    assert torch.equal(triton_impl.gather(x, idx, geom, cfg), reference.gather(x, idx, geom))
    new = _randn(6, geom.window_area, C, dtype=torch.float16, gen=gen)
    want = reference.scatter(x, new, idx, geom)
    assert torch.equal(triton_impl.merge(x, new, idx, geom, config=cfg), want)
    y = x.clone()
    triton_impl.scatter_inplace(y, new, idx, geom, cfg)
    assert torch.equal(y, want)


def test_launch_configs_for_swin_t_stages():
    """GPU tiles for Swin-T's channel counts divide C exactly and stay within 8192 elements."""
    for C in (96, 192, 384, 768):
        cfg = triton_impl.launch_config(49, C, interpret=False)
        assert C % cfg.block_c == 0 and cfg.block_n == 64 and cfg.block_n * cfg.block_c <= 8192
        assert cfg.block_t * cfg.block_c <= 8192


_AOT_SCRIPT = r"""
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sparsesearch.ops import triton_impl as T

assert not T.INTERPRET
div = [["tt.divisibility", 16]]  # what triton infers at launch for aligned pointers and H, W = 256
def compile_ptx(fn, sig, consts, aligned, num_warps):
    names = list(sig)
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs={(names.index(n),): div for n in aligned})
    opts = {"num_warps": num_warps, "enable_fp_fusion": False}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
i32 = lambda *names: {n: "i32" for n in names}
for dt in ("fp16", "bf16", "fp32"):
    p, C = "*" + dt, 96
    cfg = T.launch_config(49, C, interpret=False)
    geo = {"WH": 7, "WW": 7, "C": C, "BLOCK_C": cfg.block_c}
    kinds = {k: "constexpr" for k in ("C", "WH", "WW", "BLOCK_C")}
    jobs = [("score", T._score_kernel, {"x_ptr": p, "out_ptr": "*fp32", **i32("H", "W", "nW", "nWw", "sh", "sw"),
             **kinds, "BLOCK_N": "constexpr"}, {**geo, "BLOCK_N": 64}, ["x_ptr", "out_ptr", "H", "W"])]
    for tw in (True, False):
        jobs.append((f"copy{int(tw)}", T._window_copy_kernel, {"x_ptr": p, "win_ptr": p, "idx_ptr": "*i64",
                     **i32("H", "W", "K", "nWw", "sh", "sw"), **kinds, "TO_WINDOWS": "constexpr",
                     "BLOCK_N": "constexpr"}, {**geo, "TO_WINDOWS": tw, "BLOCK_N": 64}, ["x_ptr", "win_ptr", "H", "W"]))
    for hb, hw in ((True, True), (False, True), (True, False)):
        jobs.append((f"merge{int(hb)}{int(hw)}", T._merge_kernel, {"base_ptr": p, "win_ptr": p, "slot_ptr": "*i32",
                     "out_ptr": p, **i32("H", "W", "K", "nW", "nWw", "sh", "sw"), **kinds, "HAS_BASE": "constexpr",
                     "HAS_WIN": "constexpr", "BLOCK_T": "constexpr"},
                     {**geo, "HAS_BASE": hb, "HAS_WIN": hw, "BLOCK_T": cfg.block_t},
                     ["base_ptr", "win_ptr", "slot_ptr", "out_ptr", "H", "W"]))
    for name, fn, sig, consts, aligned in jobs:
        ptx = compile_ptx(fn, sig, consts, aligned, cfg.num_warps)
        loads = re.findall(r"ld\.global[.\w]*", ptx)
        stores = re.findall(r"st\.global[.\w]*", ptx)
        scalar = [m for m in loads if m.endswith((".b16", ".b8"))]  # a 16-bit element loaded alone
        if not name.startswith("merge"):  # merge loads int32 slots one by one; the others load no 32-bit index
            scalar += [m for m in loads if m == "ld.global.b32"]
        if name != "score":  # the score stores one float per window
            scalar += [m for m in stores if ".v4." not in m]
        ok = not scalar and any(".v4." in m for m in loads)
        print(dt, name, "vector" if ok else "SCALAR " + " ".join(sorted(set(loads + stores))))
"""


@cpu_only  # on a GPU every test here runs the compiled kernels themselves
def test_kernels_compile_for_sm90():
    """The GPU path, checked without a GPU: every kernel variant lowers to PTX/cubin for sm_90 (H100) with the
    GPU launch config, and all its data loads and stores are 16-byte vector accesses. The interpreter accepts
    code the compiler rejects, so this is the only check here of what will run on the GPU."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    try:
        from triton.backends.nvidia import compiler as _nv  # noqa: F401, PLC0415
    except ImportError:
        pytest.skip("triton has no NVIDIA backend here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    missing = ("not found", "No such file", "Cannot find")
    if proc.returncode != 0 and "ptxas" in proc.stderr and any(m in proc.stderr for m in missing):
        pytest.skip(f"no ptxas to assemble for sm_90: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"sm_90 compilation failed ({VERSIONS}):\n{proc.stderr[-4000:]}"
    lines = proc.stdout.split("\n")
    assert sum(line.endswith(" vector") for line in lines) == 18, proc.stdout


# --------------------------------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
@pytest.mark.parametrize("C", CHANNELS)
@pytest.mark.parametrize("case", GEOMS, ids=GEOM_IDS)
def test_scores_close_and_selection_exact(case, C, dtype):
    geom, B = _geom(case)
    gen = torch.Generator().manual_seed(hash((case, C, 7)) % 2**31)
    x = _randn(B, geom.H, geom.W, C, dtype=dtype, gen=gen)
    got = ops.score_windows(x, geom, backend="triton")
    want = reference.score(x, geom)
    assert got.dtype == torch.float32 and got.shape == (B, geom.num_windows)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    ordered = want.sort(dim=1).values
    gaps = (ordered[:, 1:] - ordered[:, :-1]) / ordered[:, 1:]
    assert geom.num_windows == 1 or gaps.min() > 1e-4, "test input has near-ties: pick another seed"
    for k in _keep_counts(geom.num_windows):
        assert torch.equal(ops.select_windows(got, k), ops.select_windows(want, k))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", GEOMS, ids=GEOM_IDS)
def test_scores_correctly_rounded_on_exact_arithmetic(case, dtype):
    """Every token's channels share one magnitude m/16, so every sum is exact and the right answer is the
    correctly rounded float32 square root of an exact number: the kernel must return exactly that.

    The reference is only within one ulp of it: torch's CPU float32 sqrt is not correctly rounded (e.g.
    sqrt(1230/256) gives 2.1919596 where 2.1919599 is nearest). CUDA's sqrtf, like the kernel's sqrt_rn, is.
    """
    geom, B = _geom(case)
    gen = torch.Generator().manual_seed(3)
    mag = torch.randint(0, 17, (B, geom.H, geom.W, 1), generator=gen).double() / 16
    sign = torch.randint(0, 2, (B, geom.H, geom.W, 40), generator=gen).double() * 2 - 1
    x = (mag * sign).to(device=DEVICE, dtype=dtype)
    tok = torch.cat([mag.reshape(B, -1), mag.new_zeros(B, 1)], dim=1)
    exact = tok[:, ops.token_index(geom)].square().sum(dim=-1)  # exact in float64 (multiples of 1/256)
    want = torch.from_numpy(np.sqrt(exact.numpy()).astype(np.float32))  # sqrt in float64 then round: correct
    got = ops.score_windows(x, geom, backend="triton").cpu()
    assert torch.equal(got, want)
    ref = reference.score(x, geom).cpu()
    ulp = torch.from_numpy(np.spacing(want.numpy()))
    assert ((ref - want).abs() <= ulp).all()


# --------------------------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", GRAD_DTYPES, ids=str)
@pytest.mark.parametrize("case", [GEOMS[1], GEOMS[2], GEOMS[4]], ids=[GEOM_IDS[1], GEOM_IDS[2], GEOM_IDS[4]])
def test_backward_equals_reference(case, dtype):
    geom, B = _geom(case)
    C = 24
    gen = torch.Generator().manual_seed(11)
    x0 = _randn(B, geom.H, geom.W, C, dtype=dtype, gen=gen)
    for k in _keep_counts(geom.num_windows):
        idx = _random_idx(B, geom.num_windows, k, gen)
        g_win = _randn(B * k, geom.window_area, C, dtype=dtype, gen=gen)
        g_map = _randn(B, geom.H, geom.W, C, dtype=dtype, gen=gen)
        w0 = _randn(B * k, geom.window_area, C, dtype=dtype, gen=gen)
        grads = {}
        for name in ("triton", "torch", "reference"):
            x = x0.clone().requires_grad_()
            w = w0.clone().requires_grad_()
            if name == "reference":
                gathered = reference.gather(x, idx, geom)
                out = reference.scatter(x, w, idx, geom)
            else:
                gathered = ops.gather_windows(x, idx, geom, backend=name)
                out = ops.scatter_windows(x, w, idx, geom, backend=name, inplace=True)  # grad: out of place
            assert out is not x
            torch.autograd.backward([gathered, out], [g_win, g_map])
            grads[name] = (x.grad, w.grad)
        for name in ("triton", "torch"):
            assert torch.equal(grads[name][0], grads["reference"][0]), f"{name} dx, k={k}"
            assert torch.equal(grads[name][1], grads["reference"][1]), f"{name} dwindows, k={k}"


def test_backward_mixed_dtype_windows():
    """fp32 windows scattered into an fp16 map: the windows' gradient comes back in fp32, as the reference's."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(5)
    x0 = _randn(2, 9, 11, 24, dtype=torch.float16, gen=gen)
    w0 = _randn(6, geom.window_area, 24, dtype=torch.float32, gen=gen)
    idx = _random_idx(2, geom.num_windows, 3, gen)
    g = _randn(2, 9, 11, 24, dtype=torch.float16, gen=gen)
    res = []
    for fn in (
        lambda x, w: ops.scatter_windows(x, w, idx, geom, "triton"),
        lambda x, w: reference.scatter(x, w, idx, geom),
    ):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        fn(x, w).backward(g)
        res.append((x.grad, w.grad))
    assert res[0][1].dtype == torch.float32
    assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1])


def _score_by_autograd(x: torch.Tensor, geom: WindowGeometry) -> torch.Tensor:
    """The README's window score in plain differentiable torch ops (the gradient the custom op's formula must give)."""
    B, H, W, _ = x.shape
    tok = x.abs().mean(dim=-1, dtype=torch.float32).reshape(B, H * W)
    tok = torch.cat([tok, tok.new_zeros(B, 1)], dim=1)
    return tok[:, ops.token_index(geom, x.device)].square().sum(dim=-1).sqrt()


_SCORE_GRAD_TOL = {torch.float32: (1e-5, 1e-7), torch.float16: (1e-3, 1e-5), torch.bfloat16: (8e-3, 1e-5)}


@pytest.mark.parametrize("dtype", [torch.float32] + GRAD_DTYPES[1:] if ON_CUDA else [torch.float32], ids=str)
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_score_gradient(backend, dtype):
    """The score's registered gradient against autograd through the README's formula (computed in float32 from x
    of any dtype, so both round once at the end: within one unit of x's precision)."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(2)
    x0 = _randn(2, 9, 11, 24, dtype=dtype, gen=gen)
    g = _randn(2, geom.num_windows, dtype=torch.float32, gen=gen)
    x, xr = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    ops.score_windows(x, geom, backend).backward(g)
    _score_by_autograd(xr, geom).backward(g)
    rtol, atol = _SCORE_GRAD_TOL[dtype]
    torch.testing.assert_close(x.grad, xr.grad, rtol=rtol, atol=atol)


def _place_args(geom: WindowGeometry) -> tuple[int, ...]:
    """(H, W, wh, ww, sh, sw, use_triton) of the backward helper ops for a geometry."""
    return (geom.H, geom.W, geom.wh, geom.ww, geom.sh, geom.sw, False)


def test_gradcheck_custom_ops_float64():
    """Numerical gradients (and second derivatives of the linear ops) of every registered formula."""
    geom = WindowGeometry.create(5, 6, 4, True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 3], [1, 2]])
    w = torch.randn(4, geom.window_area, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    checks = [  # (the score's formula is checked in test_score_gradient: the reference takes no float64)
        (lambda x: custom_ops.gather_windows_op(x, idx, geom), (x,)),
        (lambda x, w: custom_ops.scatter_windows_op(x, w, idx, geom), (x, w)),
        (lambda w: torch.ops.sparsesearch.place_windows(w, idx, *_place_args(geom)), (w,)),
        (lambda x: torch.ops.sparsesearch.zero_windows(x, idx, *_place_args(geom)[2:]), (x,)),
    ]
    for i, (fn, inputs) in enumerate(checks):
        assert torch.autograd.gradcheck(fn, inputs), i
        assert torch.autograd.gradgradcheck(fn, inputs), i


@pytest.mark.parametrize("use_triton", [False, True])
def test_opcheck(use_triton):
    """torch.library.opcheck: schemas, fake kernels and autograd registrations are consistent; with the torch
    bodies also through AOT dispatch with dynamic shapes (forward and traced backward)."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 11, 24, generator=gen).to(DEVICE).requires_grad_()
    idx = _random_idx(2, geom.num_windows, 3, gen)
    w = torch.randn(6, geom.window_area, 24, generator=gen).to(DEVICE).requires_grad_()
    args = (geom.wh, geom.ww, geom.sh, geom.sw, use_triton)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    if not use_triton:
        tests += ("test_aot_dispatch_dynamic",)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for op, op_args in (
            (custom_ops._score_def, (x, *args)),
            (custom_ops._gather_def, (x, idx, *args)),
            (custom_ops._scatter_def, (x, w, idx, *args)),
            (custom_ops._place_def, (w, idx, 9, 11, *args)),
            (custom_ops._zero_def, (x, idx, *args)),
            (custom_ops._scatter_inplace_def, (x.detach().clone(), w.detach(), idx, *args)),
        ):
            torch.library.opcheck(op, op_args, test_utils=tests)


# --------------------------------------------------------------------------------------------------------------
# in place or not
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_inplace_only_where_allowed(backend):
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(6)
    x = _randn(2, 9, 11, 24, dtype=torch.float32, gen=gen)
    idx = _random_idx(2, geom.num_windows, 3, gen)
    w = _randn(6, geom.window_area, 24, dtype=torch.float32, gen=gen)
    want = reference.scatter(x, w, idx, geom)

    for requires_grad in (False, True):  # grad mode on: out of place, y untouched (it may be saved elsewhere)
        y = x.clone().requires_grad_(requires_grad)
        out = ops.scatter_windows(y, w, idx, geom, backend, inplace=True)
        assert out is not y and torch.equal(y.detach(), x) and torch.equal(out.detach(), want)
    with torch.no_grad():
        y = x.clone()
        assert ops.scatter_windows(y, w, idx, geom, backend, inplace=True) is y and torch.equal(y, want)
        y = x.clone().requires_grad_()  # no grad mode: in place even for a leaf that requires grad
        assert ops.scatter_windows(y, w, idx, geom, backend, inplace=True) is y
        y = x.clone().transpose(1, 2).contiguous().transpose(1, 2)  # not contiguous: out of place
        out = ops.scatter_windows(y, w, idx, geom, backend, inplace=True)
        assert out is not y and torch.equal(y, x) and torch.equal(out, want)
    with torch.inference_mode():
        y = x.clone()
        assert ops.scatter_windows(y, w, idx, geom, backend, inplace=True) is y and torch.equal(y, want)
    y_inf = y  # an inference tensor outside inference mode cannot be modified: out of place
    out = ops.scatter_windows(y_inf, w, idx, geom, backend, inplace=True)
    assert out is not y_inf
    assert not ops.can_scatter_inplace(y_inf, w)


# --------------------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------------------
@cpu_only
def test_dispatch(monkeypatch):
    x = torch.zeros(1, 4, 4, 8)
    monkeypatch.delenv("SPARSESEARCH_KERNELS", raising=False)
    assert triton_backend.supports(x)  # interpreted: CPU tensors are supported...
    assert ops.resolve_backend(x) == "torch"  # ...but "auto" only takes Triton for CUDA tensors
    assert ops.resolve_backend(x, "triton") == "triton"
    monkeypatch.setenv("SPARSESEARCH_KERNELS", "triton")
    assert ops.resolve_backend(x) == "triton"
    assert ops.resolve_backend(x, "torch") == "torch"  # the argument wins over the environment
    monkeypatch.setenv("SPARSESEARCH_KERNELS", "cuda")
    with pytest.raises(SparseSearchError, match="unknown kernel backend"):
        ops.resolve_backend(x)
    monkeypatch.delenv("SPARSESEARCH_KERNELS")
    with pytest.raises(SparseSearchError, match="cannot run on a cpu torch.float64"):
        ops.resolve_backend(x.double(), "triton")
    assert ops.resolve_backend(x.double()) == "torch"
    assert not triton_backend.supports(torch.zeros(2, dtype=torch.int32))


@cpu_only
@pytest.mark.parametrize("env", [None, "auto", "torch", "triton", "export"])
@pytest.mark.parametrize("backend", [None, "auto", "torch", "triton", "export"])
def test_runs_torch_says_what_resolve_backend_says(monkeypatch, env, backend):
    """The blocks' cheap check of the torch backend answers as the full dispatch, for every argument and setting."""
    if env is None:
        monkeypatch.delenv("SPARSESEARCH_KERNELS", raising=False)
    else:
        monkeypatch.setenv("SPARSESEARCH_KERNELS", env)
    for x in (torch.zeros(1, 4, 4, 8), torch.zeros(1, 4, 4, 8, dtype=torch.float64)):
        try:
            want = ops.resolve_backend(x, backend) == "torch"
        except SparseSearchError:
            with pytest.raises(SparseSearchError):
                ops.runs_torch(x, backend)
            continue
        assert ops.runs_torch(x, backend) == want


@cuda_only
def test_dispatch_on_cuda(monkeypatch):
    """ "auto" takes the compiled kernels for CUDA float tensors, the torch path for anything else."""
    monkeypatch.delenv("SPARSESEARCH_KERNELS", raising=False)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert ops.resolve_backend(torch.zeros(1, 4, 4, 8, device=DEVICE, dtype=dtype)) == "triton"
    assert ops.resolve_backend(torch.zeros(1, 4, 4, 8, device=DEVICE, dtype=torch.float64)) == "torch"
    assert ops.resolve_backend(torch.zeros(1, 4, 4, 8)) == "torch"  # CPU tensors: not interpreted here
    assert not triton_backend.INTERPRET


def test_direct_calls_only_in_plain_eager_inference():
    """Eager inference skips the custom-op dispatch; autograd, tracers, dispatch modes and the profiler do not."""
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    x = torch.zeros(1, 4, 4, 8, device=DEVICE)
    assert not ops._direct(x)  # grad mode on
    with torch.no_grad():
        assert ops._direct(x)
        with FlopCounterMode(display=False):
            assert not ops._direct(x)
        with torch.profiler.profile():
            assert not ops._direct(x)
        assert not ops._direct(torch.nn.Parameter(x))  # a tensor subclass (fake tensors, parameters...)
    with torch.inference_mode():
        assert ops._direct(x)
    traced: list[bool] = []

    def probe(t: torch.Tensor) -> torch.Tensor:
        traced.append(ops._direct(t))
        return t + 1

    with torch.no_grad():
        torch.jit.trace(probe, (x,), check_trace=False)
    assert traced == [False]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("case", GEOMS, ids=GEOM_IDS)
def test_direct_calls_equal_custom_ops(case, backend):
    """The direct (eager inference) path and the custom ops give the same bits, as both run the same bodies."""
    geom, B = _geom(case)
    gen = torch.Generator().manual_seed(11)
    x = _randn(B, geom.H, geom.W, 24, dtype=torch.float32, gen=gen)
    k = max(1, geom.num_windows // 2)
    idx = _random_idx(B, geom.num_windows, k, gen)
    w = _randn(B * k, geom.window_area, 24, dtype=torch.float32, gen=gen)
    via_op = (
        ops.score_windows(x, geom, backend),
        ops.gather_windows(x, idx, geom, backend),
        ops.scatter_windows(x, w, idx, geom, backend),
    )
    with torch.inference_mode():
        assert ops._direct(x)
        direct = (
            ops.score_windows(x, geom, backend),
            ops.gather_windows(x, idx, geom, backend),
            ops.scatter_windows(x, w, idx, geom, backend),
        )
        y = x.clone()
        assert ops.scatter_windows(y, w, idx, geom, backend, inplace=True) is y
    for a, b in zip(via_op, direct):
        assert torch.equal(a, b)
    assert torch.equal(y, via_op[2])


def test_window_tables():
    """safe/src/pad/valid agree with token_index: padded slots point at a real token of their own window."""
    for case in GEOMS:
        geom, _ = _geom(case)
        t = ops.window_tables(geom)
        tok = ops.token_index(geom)
        pad = tok == geom.H * geom.W
        assert torch.equal(t.token, tok) and torch.equal(t.valid, (~pad).float())
        assert bool((t.safe < geom.H * geom.W).all()) and torch.equal(t.safe[~pad], tok[~pad])
        assert torch.equal(t.safe[pad], tok[:, :1].expand_as(tok)[pad])
        if geom.padded:
            assert torch.equal(t.pad, pad)
            assert torch.equal(t.src, torch.where(pad, 0, torch.arange(geom.window_area).expand_as(tok)))
        else:
            assert t.pad is None and t.src is None and not bool(pad.any())


def test_triton_backend_is_differentiable():
    """The Triton backend through the public ops: the reference's results, differentiable end to end."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(8)
    x = _randn(1, 9, 11, 24, dtype=torch.float32, gen=gen).requires_grad_()
    idx = torch.tensor([[1, 4]], device=DEVICE)
    torch.testing.assert_close(ops.score_windows(x, geom, "triton"), reference.score(x.detach(), geom))
    win = ops.gather_windows(x, idx, geom, "triton")
    out = ops.scatter_windows(x, win * 2, idx, geom, "triton")
    out.sum().backward()
    want = torch.ones_like(x)
    assert torch.equal(x.grad, want + reference.scatter(torch.zeros_like(x), torch.ones_like(win), idx, geom))


def test_bad_shapes_raise():
    geom = WindowGeometry.create(9, 11, 4, True)
    x = torch.zeros(1, 9, 11, 8, device=DEVICE)
    one = torch.tensor([[0]], device=DEVICE)
    with pytest.raises(SparseSearchError, match="shape"):
        ops.gather_windows(torch.zeros(1, 8, 11, 8, device=DEVICE), one, geom, backend="triton")
    with pytest.raises(SparseSearchError, match="idx"):
        ops.gather_windows(x, torch.tensor([0, 1], device=DEVICE), geom, backend="triton")
    with pytest.raises(SparseSearchError, match="windows must have shape"):
        ops.scatter_windows(x, torch.zeros(2, 16, 8, device=DEVICE), one, geom, backend="triton")


# --------------------------------------------------------------------------------------------------------------
# the pruned block: Triton vs torch, torch.compile, named ops
# --------------------------------------------------------------------------------------------------------------
def _pruned_block(seed: int = 0, dtype: torch.dtype = torch.float32) -> SwinBlock:
    torch.manual_seed(seed)
    blk = SwinBlock(24, 3, window_size=4, max_window=4, shifted=True)
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    blk.sparsity = 0.5
    return blk.to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", GRAD_DTYPES if ON_CUDA else [torch.float32], ids=str)
def test_pruned_block_triton_equals_torch(dtype):
    """A pruned block's forward and backward (input and every parameter) with the kernels equal the torch path."""
    blk = _pruned_block(dtype=dtype)
    x0 = torch.randn(2, 9, 11, 24, generator=torch.Generator().manual_seed(9)).to(device=DEVICE, dtype=dtype)
    res = []
    for backend in ("triton", "torch"):
        blk.kernel_backend = backend
        blk.zero_grad()
        x = x0.clone().requires_grad_()
        y = blk(x)
        y.square().sum().backward()
        res.append((y.detach(), x.grad, [p.grad.clone() for p in blk.parameters()]))
    assert torch.equal(res[0][0], res[1][0])  # same windows kept, same arithmetic on them
    _same(res[0][1], res[1][1])
    for a, b in zip(res[0][2], res[1][2]):
        _same(a, b)


def test_torch_compile_captures_pruned_block():
    """torch.compile (aot_eager, fullgraph) of a pruned block: the window ops are single named nodes, and the
    compiled forward and backward equal eager bit for bit."""
    import torch._dynamo  # noqa: PLC0415

    torch._dynamo.reset()
    blk = _pruned_block(1)
    seen: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        from torch._dynamo.backends.debugging import aot_eager  # noqa: PLC0415

        return aot_eager(gm, example_inputs)

    compiled = torch.compile(blk, backend=backend, fullgraph=True)
    x0 = torch.randn(2, 9, 11, 24, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    xc, xe = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yc = compiled(xc)
        yc.sum().backward()
    ye = blk(xe)
    ye.sum().backward()
    _same(yc, ye)
    _same(xc.grad, xe.grad)
    for name in ("score_windows", "gather_windows", "scatter_windows"):
        assert f"sparsesearch.{name}.default" in seen, seen

    # inference with the in-place scatter: a mutating custom op inside a compiled graph
    def infer(x: torch.Tensor) -> torch.Tensor:
        g = WindowGeometry.create(9, 11, 4, True)
        idx = ops.select_windows(ops.score_windows(x, g), 3)
        w = ops.gather_windows(x, idx, g) * 2
        return ops.scatter_windows(x, w, idx, g, inplace=True)

    with torch.no_grad():
        want = infer(x0.clone())
        got = torch.compile(infer, backend="aot_eager", fullgraph=True)(x0.clone())
    assert torch.equal(got, want)
    torch._dynamo.reset()


def test_named_ops_seen_by_dispatch_modes():
    """FlopCounterMode / any TorchDispatchMode sees sparsesearch::* instead of index_select, cat, index_copy."""
    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    class Record(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            # the attention's rows of its (u, heads, N, N) bias and the kept windows' mask kinds (an (nW,) int64
            # table) are index_selects of the attention's own, not window ops
            own = args and (args[0].dim() == 4 or (args[0].dim() == 1 and args[0].dtype == torch.int64))
            if not (str(func).startswith("aten.index_select") and own):
                self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    blk = _pruned_block(2).eval()
    blk.fused_pruned_path = False  # the fused eager path uses plain aten ops by design (tests/test_pruned_path.py)
    x = torch.randn(1, 9, 11, 24).to(DEVICE)
    for backend in ("torch", "triton"):
        blk.kernel_backend = backend
        for skip in (False, True):  # True: the block's own real-token MLP path adds index ops of its own
            blk.skip_padded_tokens = skip
            with Record() as rec, torch.no_grad():
                blk(x)
            for name in ("score_windows", "gather_windows", "scatter_windows"):
                assert f"sparsesearch.{name}.default" in rec.names
            # the window ops' own indexing stays inside the named ops
            assert skip or not any("index_copy" in n or "index_select" in n for n in rec.names)
        del blk.skip_padded_tokens
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            blk(x)
        assert fc.get_total_flops() > 0
