"""The trainer and export's fine-tune draw their random numbers without touching the caller's global RNG
streams, and stay deterministic: the same seed gives the same weights."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sparsesearch.adapt import AdaptOptions, adapt
from sparsesearch.adapt.checkpoint import capture_rng
from sparsesearch.export import finetune_config
from sparsesearch.supernet import load_supernet

from .test_adapt import TINY


def _draws() -> tuple[list[float], list[float], float]:
    """The next numbers of the global torch, numpy and python streams (consumes them)."""
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), random.random()


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


def _run(space_file: Path, out: Path) -> object:
    opts = AdaptOptions(
        space=str(space_file), data="synthetic:8", out=str(out), steps=2, batch=4, val_samples=0, drop_path=0.1
    )
    return adapt(opts, progress=False)


def test_adapt_leaves_the_global_rng_alone_and_is_deterministic(space_file, tmp_path):
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    state = capture_rng()
    expected = _draws()  # what the caller's streams give next without a run in between
    torch.set_rng_state(state["torch"])
    np.random.seed(1234)
    random.seed(1234)
    first = _run(space_file, tmp_path / "a")
    assert _draws() == expected
    torch.manual_seed(99)  # another caller state: the run's own numbers do not depend on it
    second = _run(space_file, tmp_path / "b")
    assert first.fingerprints == second.fingerprints and first.losses == second.losses


def test_finetune_leaves_the_global_rng_alone_and_is_deterministic(space_file, tmp_path):
    _run(space_file, tmp_path / "sn")
    losses = []
    for caller_seed in (5, 6):
        model, space, meta = load_supernet(tmp_path / "sn" / "supernet.pt")
        cfg = space.sparsest()
        torch.manual_seed(caller_seed)
        expected = torch.rand(3).tolist()
        torch.manual_seed(caller_seed)
        losses.append(finetune_config(model, meta, cfg, steps=3, batch=4, lr=1e-3))
        assert torch.rand(3).tolist() == expected
    assert losses[0] == losses[1] and len(losses[0]) == 3
