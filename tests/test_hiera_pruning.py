"""SAM 2 Hiera trunk (models/hiera.py), pruned, against the independent reference (tests/reference_hiera.py):
random configs with windowed and global blocks pruned and q-pool blocks at 0, on padded and unpadded maps, batch
1 and 2, on the fused inference path, the general path (no_grad and grad mode) and the Triton kernels (interpreted);
windows other than the defaults (a q-pool block runs the previous stage's); the config rules (q-pool sparsity and
odd pooled windows refused, in the model and in a search space); gradients; `features_only`; `forward(x, config)`.

TRITON_INTERPRET=1 must be set before the kernels are first imported (see tests/test_kernels.py); it is set here
too. The Triton tests skip when the kernels were imported without it or triton is missing.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import functools  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402
import sparsesearch as ss  # noqa: E402
import torch  # noqa: E402
from sparsesearch import ops  # noqa: E402
from sparsesearch.config import SparsityConfig  # noqa: E402
from sparsesearch.errors import SpaceError, SparseSearchError  # noqa: E402
from sparsesearch.models import FeatureListNet  # noqa: E402
from sparsesearch.models.hiera import ARCHS, HieraBlock, HieraDet, checkpoint_filter_fn  # noqa: E402

from .reference_hiera import RefHiera, kept_window_mask, pruned_forward, randomise, sam2_checkpoint  # noqa: E402

# the tiny member's layout (12 blocks: q-pool 1, 3, 10; global 5, 7, 9; windows 8, 4, 14, 7) at a sixth of its width;
# every window up to 16 fits (no weights depend on the window)
NARROW = dict(ARCHS["sam2_hiera_tiny"], embed_dim=16)
MAX_WINDOW = (8, 8, 16, 8)
QPOOL = (1, 3, 10)
GLOBAL = (5, 7, 9)
SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.95)  # 0.95: one window kept


def _reference(arch: dict, seed: int, dtype: torch.dtype) -> RefHiera:
    ref = RefHiera(
        arch["embed_dim"],
        arch["num_heads"],
        arch["stages"],
        arch["global_att_blocks"],
        arch["window_spec"],
        arch["global_pos_size"],
    )
    randomise(ref, seed)
    return ref.to(dtype).eval()


def _loaded(ref: RefHiera, arch: dict, dtype: torch.dtype) -> HieraDet:
    model = HieraDet(**{**arch, "head": None, "max_window_size": MAX_WINDOW}).to(dtype).eval()
    sd, _ = checkpoint_filter_fn(sam2_checkpoint(ref), model)
    model.load_state_dict(sd, strict=True)
    return model


@functools.cache
def _pair(dtype: torch.dtype) -> tuple[RefHiera, HieraDet]:
    """The reference and the model loaded from it as an original SAM 2 checkpoint (one of each per dtype, shared by
    the tests: each leaves the model dense, torch backend)."""
    ref = _reference(NARROW, 0, dtype)
    return ref, _loaded(ref, NARROW, dtype)


def _image(size: int, batch: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size * 10 + batch), dtype=dtype)


def _rows(flat: list[float], depths=(1, 2, 7, 2)) -> list[list[float]]:
    out, i = [], 0
    for d in depths:
        out.append(flat[i : i + d])
        i += d
    return out


def _random_flat(seed: int) -> list[float]:
    """Block sparsities (q-pool blocks at 0) with at least one windowed and one global block pruned."""
    rng = random.Random(seed)
    while True:
        flat = [0.0 if i in QPOOL else rng.choice(SPARSITIES) for i in range(12)]
        if any(flat[i] > 0 for i in GLOBAL) and any(flat[i] > 0 for i in range(12) if i not in QPOOL + GLOBAL):
            return flat


@functools.cache
def _want(size: int, batch: int, seed: int, windows: tuple[int, ...], dtype: torch.dtype = torch.float64):
    """The reference's pruned stage maps (cached: every path is checked against the same)."""
    ref, _ = _pair(dtype)
    with torch.no_grad():
        return pruned_forward(ref, _image(size, batch, dtype), _random_flat(seed), list(windows))


def _stage_maps(model: HieraDet, img: torch.Tensor, config: SparsityConfig) -> list[torch.Tensor]:
    model.set_config(config)
    try:
        return model.forward_stages(img)
    finally:
        model.set_config(None)


# (size, batch, seed, windows): 320 with the default windows pads stages 3 (20 -> 28 by 14) and 4 (10 -> 14 by 7),
# and the stage-4 q-pool block pools a padded 28x28 map; 256 with windows 8, 4, 8, 4 pads nothing (8x8, 8x8, 2x2,
# 2x2 windows)
CASES = [
    (320, 1, 0, (8, 4, 14, 7)),
    (320, 2, 1, (8, 4, 14, 7)),
    (256, 1, 2, (8, 4, 8, 4)),
    (256, 2, 3, (8, 4, 8, 4)),
]


@pytest.mark.parametrize("path", ["fused", "general", "grad"])
@pytest.mark.parametrize("size,batch,seed,windows", CASES)
def test_random_configs_match_reference(size, batch, seed, windows, path, monkeypatch):
    """fused: inference's real-token path (torch backend, no_grad, scores carried between blocks); general: the
    gather / attend / scatter path (the fused one switched off); grad: the general path in grad mode."""
    _, model = _pair(torch.float64)
    model.set_kernel_backend("torch")
    if path == "general":
        monkeypatch.setattr(HieraBlock, "fused_pruned_path", False)
    config = SparsityConfig(_rows(_random_flat(seed)), list(windows))
    img = _image(size, batch)
    with torch.set_grad_enabled(path == "grad"):
        got = _stage_maps(model, img, config)
        dense = model.forward_stages(img)
    want = _want(size, batch, seed, windows)
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    for s, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=f"stage {s + 1}, {path} path")
    assert not torch.equal(got[-1], dense[-1])  # the config did prune


def test_windows_other_than_the_defaults(monkeypatch):
    """Another window in every stage; each q-pool block runs the previous stage's window (block 1 pools windows of
    4, block 3 of 8, block 10 of 16, on a 40x40 map padded to 48 -> 24x24, cropped to 20x20)."""
    ref, model = _pair(torch.float64)
    windows = [4, 8, 16, 5]
    flat = [0.0 if i in QPOOL else p for i, p in enumerate([0.5, 0, 0.3, 0, 0.5, 0.7, 0.3, 0.5, 0.95, 0.3, 0, 0.5])]
    config = SparsityConfig(_rows(flat), windows)
    model.set_config(config)
    assert [b.window_size for b in model.hiera_blocks] == [windows[s] for s in ref.window_stage]
    assert [model.hiera_blocks[i].window_size for i in QPOOL] == [4, 8, 16]
    model.set_config(None)
    img = _image(320, 1)
    with torch.no_grad():
        want = pruned_forward(ref, img, flat, windows)
        dense_windows = pruned_forward(ref, img, flat, [8, 4, 16, 5])  # only stage 1-2 windows differ
        got = _stage_maps(model, img, config)
        monkeypatch.setattr(HieraBlock, "fused_pruned_path", False)
        general = _stage_maps(model, img, config)
    for s in range(4):
        torch.testing.assert_close(got[s], want[s], rtol=1e-9, atol=1e-9, msg=f"stage {s + 1}")
        torch.testing.assert_close(general[s], want[s], rtol=1e-9, atol=1e-9, msg=f"stage {s + 1}, general")
    # stage 2's window reaches stage 3's q-pool block: changing it changes the map that block makes
    assert not torch.equal(want[2], dense_windows[2])


def test_pruned_tokens_pass_unchanged_through_one_block():
    """A global block keeps whole windows of its stage's tiling; a windowed block at 0.95 keeps one window."""
    _, model = _pair(torch.float64)
    gen = torch.Generator().manual_seed(7)
    for i, hw, w in ((5, 20, 14), (4, 20, 14), (11, 10, 7)):
        blk = model.hiera_blocks[i]
        x = torch.randn(2, hw, hw, blk.dim, generator=gen, dtype=torch.float64)
        blk.window_size, blk.sparsity = w, 0.7
        with torch.no_grad():
            y = blk(x.clone())
        kept = kept_window_mask(x, w, 0.7)
        assert torch.equal(y[~kept], x[~kept]) and not torch.equal(y[kept], x[kept]), f"block {i}"
    model.set_config(None)


# ---- Triton (interpreted) ------------------------------------------------------------------------------------
def _triton_or_skip() -> None:
    pytest.importorskip("triton", reason="triton is not installed (Linux x86-64 only)")
    from sparsesearch.ops import triton_backend, triton_impl  # noqa: PLC0415

    if not triton_backend.AVAILABLE:
        pytest.skip(f"Triton kernels unavailable: {triton_backend.UNAVAILABLE_REASON}")
    if not triton_impl.INTERPRET:
        pytest.skip("triton_impl was imported before TRITON_INTERPRET=1 was set: run pytest with it in the environment")


# tiny grids (the interpreter runs every program in Python): 96 -> 24, 12, 6, 3 tokens a side, windows 8, 4, 4, 2:
# stages 3 and 4 padded (6 -> 8, 3 -> 4; 2x2 windows each); 128 -> 32, 16, 8, 4 with 8, 4, 4, 2: none padded
@pytest.mark.parametrize("size,batch,seed,windows", [(96, 2, 4, (8, 4, 4, 2)), (128, 1, 5, (8, 4, 4, 2))])
def test_triton_kernels_match_reference(size, batch, seed, windows, monkeypatch):
    _triton_or_skip()
    _, model = _pair(torch.float32)
    config = SparsityConfig(_rows(_random_flat(seed)), list(windows))
    img = _image(size, batch, torch.float32)
    use_triton = ops._use_triton
    launched = []
    monkeypatch.setattr(ops, "_use_triton", lambda x, choice: launched.append(use_triton(x, choice)) or launched[-1])
    model.set_kernel_backend("triton")
    try:
        with torch.no_grad():
            got = _stage_maps(model, img, config)
    finally:
        model.set_kernel_backend(None)
    want = _want(size, batch, seed, windows, torch.float32)
    for s, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4, msg=f"stage {s + 1}, triton")
    assert launched and all(launched)  # score, gather and scatter of every pruned block ran the kernels


# ---- config rules ---------------------------------------------------------------------------------------------
def test_set_config_refuses_qpool_sparsity_and_odd_pooled_windows():
    _, model = _pair(torch.float64)
    before = SparsityConfig(_rows(_random_flat(0)), [8, 4, 14, 7])
    model.set_config(before)
    state = [(b.sparsity, b.window_size) for b in model.hiera_blocks]
    flat = [0.0] * 12
    flat[3] = 0.5  # stage 3's q-pool block
    with pytest.raises(SparseSearchError) as err:
        model.set_config(SparsityConfig(_rows(flat), [8, 4, 14, 7]))
    assert "cannot be pruned (blocks 2.0)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SparseSearchError) as err:  # stage 1's window is pooled by stage 2's q-pool block
        model.set_config(SparsityConfig.dense(model.depths, [7, 4, 14, 7]))
    assert "window_size[0] = 7" in str(err.value) and "multiple of 2" in str(err.value)
    assert "\n" not in str(err.value)
    assert model.config is before and [(b.sparsity, b.window_size) for b in model.hiera_blocks] == state
    model.set_config(SparsityConfig.dense(model.depths, [8, 4, 14, 5]))  # the last stage's window is never pooled
    model.set_config(None)


QUICK_SPACE = {
    "name": "t",
    "architecture": "sam2_hiera_nano",
    "model_kwargs": {"embed_dim": 16},
    "resolutions": [[64, 64]],
    "sparsity_choices": [0.0, 0.5],
    "window_sizes": [[4], [4], [2], [2]],
}


def test_space_refuses_a_qpool_gene_with_sparsity_and_keeps_qpool_at_0():
    genes = [
        {"name": "a", "blocks": ["0.0", "1.1"]},
        {"name": "b", "blocks": ["2.0", "2.1", "2.2"]},  # 2.0: stage 3's q-pool block
        {"name": "c", "blocks": ["1.0", "3.0", "3.1"], "choices": [0.0]},
    ]
    with pytest.raises(SpaceError, match=r"gene 'b' holds block\(s\) 2.0, which sam2_hiera_nano never prunes"):
        ss.SearchSpace({**QUICK_SPACE, "genes": genes})
    genes[1]["choices"] = [0.0]
    space = ss.SearchSpace({**QUICK_SPACE, "genes": genes})
    cfg = space.uniform(0.6)
    assert cfg.sparsity == [[0.6], [0.0, 0.6], [0.0, 0.6, 0.6], [0.0, 0.6]]
    model = space.create_model(seed=0, head=None).eval()
    model.set_config(cfg)  # a config the model takes
    assert [b.sparsity for b in model.hiera_blocks] == cfg.flat()
    for seed in range(20):  # every sample and the sparsest config leave the q-pool blocks dense
        assert [space.sample(seed).sparsity[s][0] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert [space.sparsest().sparsity[s][0] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]


# ---- training, features, per-call configs ---------------------------------------------------------------------
def _ref_name(name: str) -> str:
    return name.replace("mlp.fc1", "mlp.layers.0").replace("mlp.fc2", "mlp.layers.1")


def test_gradients_through_the_pruned_path_match_reference():
    """Training (grad mode, train()): every parameter's gradient equals the reference's, on a padded map."""
    ref = _reference(NARROW, 1, torch.float64)
    model = _loaded(ref, NARROW, torch.float64).train()
    flat = _random_flat(6)
    config = SparsityConfig(_rows(flat), [8, 4, 14, 7])
    img = _image(320, 1)
    weights = torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss(maps: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([w * m.square().mean() for w, m in zip(weights, maps)]).sum()

    model.set_config(config)
    loss(model.forward_stages(img)).backward()
    loss(pruned_forward(ref, img, flat, [8, 4, 14, 7])).backward()
    ref_params = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        g, want = p.grad, ref_params[_ref_name(name)].grad
        assert g is not None and want is not None, name
        torch.testing.assert_close(g, want, rtol=1e-7, atol=1e-10, msg=name)
    pruned_global = next(i for i in GLOBAL if flat[i] > 0)
    assert model.blocks[pruned_global].attn.qkv.weight.grad.abs().sum() > 0


def test_features_only_gives_the_four_pruned_stage_maps():
    arch = dict(ARCHS["sam2_hiera_nano"], embed_dim=16)
    ref = _reference(arch, 2, torch.float32)
    model = HieraDet(**{**arch, "head": None}).eval()
    sd, _ = checkpoint_filter_fn(sam2_checkpoint(ref), model)
    model.load_state_dict(sd, strict=True)
    feats = FeatureListNet(model).eval()
    assert feats.feature_info.channels() == [16, 32, 64, 128]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    # nano: blocks 0 | 1 (q-pool) 2 | 3 (q-pool) 4 5 (global) | 6 (q-pool) 7
    flat = [0.5, 0.0, 0.7, 0.0, 0.3, 0.5, 0.0, 0.0]
    config = SparsityConfig([flat[:1], flat[1:3], flat[3:6], flat[6:]], [8, 4, 4, 4])
    img = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        maps = feats(img, config)
        want = pruned_forward(ref, img, flat, [8, 4, 4, 4])
        dense = feats(img)
    assert feats.config is None
    assert [tuple(m.shape) for m in maps] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4)]
    for m, w in zip(maps, want):
        torch.testing.assert_close(m, w.permute(0, 3, 1, 2), rtol=1e-4, atol=1e-4)
    assert not torch.equal(maps[-1], dense[-1])
    built = ss.create_model("sam2_hiera_nano", features_only=True, embed_dim=16).eval()
    with torch.no_grad():
        assert [tuple(m.shape[1:]) for m in built(img[:1])] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]


def test_forward_with_a_config_restores_the_previous_one():
    _, model = _pair(torch.float64)
    img = _image(128, 1)
    held = SparsityConfig(_rows(_random_flat(7)), [8, 4, 8, 4])
    call = SparsityConfig(_rows(_random_flat(8)), [4, 8, 14, 7])
    for previous in (held, None):
        model.set_config(previous)
        state = [(b.sparsity, b.window_size) for b in model.hiera_blocks]
        with torch.no_grad():
            out = model(img, call)
        assert model.config is previous
        assert [(b.sparsity, b.window_size) for b in model.hiera_blocks] == state
        with torch.no_grad():
            want = _stage_maps(model, img, call)[-1]
        model.set_config(previous)
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    # the dense model's windows, q-pool blocks included (each runs the previous stage's default window)
    assert [b.window_size for b in model.hiera_blocks] == [8, 8, 4, 4, 14, 14, 14, 14, 14, 14, 14, 7]
