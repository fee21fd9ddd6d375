"""What lets the package run on other software than `make` installs (the GPU image: torch 2.11, no scipy):
the guard on torch's private functions, Kendall's tau without scipy, DDP through torchrun with one process."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from sparsesearch import ops
from sparsesearch.adapt import distributed as D
from sparsesearch.latency.validate import kendall_tau_b
from sparsesearch.ops import WindowGeometry, reference


def test_private_torch_probe_falls_back_when_a_function_is_missing(monkeypatch):
    assert ops._probe_private_torch() is not None  # this torch has both
    monkeypatch.delattr(torch._C, "_len_torch_dispatch_stack")
    assert ops._probe_private_torch() is None
    monkeypatch.undo()
    monkeypatch.delattr(torch._C._autograd, "_profiler_enabled")
    assert ops._probe_private_torch() is None


def test_ops_without_the_private_functions_take_the_custom_op_path(monkeypatch):
    """With the probe failed, eager inference never goes direct, and the results stay the reference's."""
    geom = WindowGeometry.create(9, 11, 4, True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 11, 8, generator=gen)
    idx = torch.tensor([[0, 3, 5], [1, 2, 7]])
    w = torch.randn(6, geom.window_area, 8, generator=gen)
    monkeypatch.setattr(ops, "_PRIVATE_TORCH", None)
    with torch.inference_mode():
        assert not ops._direct(x)
        assert torch.equal(ops.score_windows(x, geom, "torch"), reference.score(x, geom))
        assert torch.equal(ops.gather_windows(x, idx, geom, "torch"), reference.gather(x, idx, geom))
        assert torch.equal(ops.scatter_windows(x, w, idx, geom, "torch"), reference.scatter(x, w, idx, geom))


def test_kendall_tau_b_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 40):
        a = rng.integers(0, 5, n).astype(float)  # ties on both sides
        b = a + rng.integers(0, 3, n)
        assert kendall_tau_b(list(a), list(b)) == pytest.approx(stats.kendalltau(a, b).statistic, rel=1e-12)
    assert kendall_tau_b([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
    assert np.isnan(kendall_tau_b([1.0], [2.0])) and np.isnan(kendall_tau_b([1.0, 1.0], [1.0, 2.0]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau_b([1.0, 2.0], [1.0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_with_one_process_joins_a_process_group(monkeypatch):
    """torchrun --nproc_per_node 1 runs the DDP code path (gloo here, NCCL on a GPU); a plain process does not."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    alone = D.setup("cpu")
    assert not alone.distributed and D.backend(alone) is None
    env = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "test",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = D.setup("cpu")
    try:
        assert info.distributed and info.world_size == 1 and D.backend(info) == "gloo"
        assert torch.equal(D.all_reduce_mean(info, torch.tensor([2.0, 4.0])), torch.tensor([2.0, 4.0]))
    finally:
        D.teardown(info)
