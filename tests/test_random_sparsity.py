"""`ss.RandomSparsity`: the configs each step of a user's own training loop runs, and in-place distillation."""

from __future__ import annotations

import numpy as np
import pytest
import sparsesearch as ss
import torch
import torch.nn.functional as F

SPACE = """
name: rs
architecture: swin_nano
model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2], window_size: 4}
resolutions: [[64, 64], [48, 48]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: a, blocks: ["0.0", "0.1"]}
  - {name: b, blocks: ["1.0", "1.1"]}
  - {name: c, blocks: ["2.0", "2.1", "3.0", "3.1"], choices: [0.0]}
window_sizes: [[4, 2], [4], [4], [4]]
"""


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("rs") / "rs.yaml"
    path.write_text(SPACE)
    return ss.SearchSpace.load(path)


def test_sandwich_order_and_extremes(space):
    rs = ss.RandomSparsity(None, space, sampler="sandwich", seed=3)
    for step in range(5):
        passes = rs.configs(step)
        assert [p.role for p in passes] == ["dense", "sparsest", "sampled"]
        assert not any(p.teacher for p in passes)  # no distillation asked
        assert passes[0].config == space.densest((64, 64)) and passes[1].config == space.sparsest((48, 48))
        assert space.is_valid(space.encode(passes[2].config))
    sampled = {rs.configs(t)[2].config.key() for t in range(30)}
    assert len(sampled) > 10  # random, not one config again and again
    assert [p.role for p in ss.RandomSparsity(None, space, "uniform", distill=True).configs(0)] == ["dense", "sampled"]
    assert ss.RandomSparsity(None, space, "uniform", distill=True).configs(0)[0].teacher


def test_two_ranks_agree_whatever_their_global_rng(space):
    """Simulated DDP ranks: same seed and step, different global RNG state and call history -> same configs."""

    def rank(r: int) -> list[str]:
        torch.manual_seed(100 + r)
        np.random.seed(200 + r)
        rs = ss.RandomSparsity(None, space, sampler="sandwich", seed=7)
        if r == 1:
            rs.configs(99)  # a rank that looked ahead (e.g. resumed elsewhere) still agrees
            torch.rand(5)
            np.random.rand(5)
        return [p.config.key() for t in range(12) for p in rs.configs(t)]

    assert rank(0) == rank(1)
    other = ss.RandomSparsity(None, space, sampler="sandwich", seed=8)
    assert [p.config.key() for t in range(12) for p in other.configs(t)] != rank(0)  # the seed matters


def test_applied_sets_and_restores_the_config_even_through_ddp_style_wrappers(space):
    model = space.create_model(head="seg", num_classes=2)

    class Wrapper(torch.nn.Module):  # what DDP looks like: the model under .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    rs = ss.RandomSparsity(Wrapper(model), space, seed=0)
    sub = rs.configs(0)[2]
    with rs.applied(sub) as cfg:
        assert model.config == cfg == sub.config
    assert model.config is None
    with pytest.raises(RuntimeError):
        with rs.applied(sub):
            raise RuntimeError("a failing step")
    assert model.config is None
    assert rs.resolution(sub) == sub.config.resolution  # two resolutions: resize the inputs to it


def test_distillation_losses_against_independent_formulas(space):
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(2, 3, 4, 4)
    t_up = F.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)
    T = 2.0
    kl = ss.RandomSparsity(None, space, distill=True, kind="kl", temperature=T)
    kl.set_teacher(t)
    p, q = torch.softmax(t_up / T, 1), torch.log_softmax(s / T, 1)
    want = (p * (p.log() - q)).sum(1).mean() * T**2
    torch.testing.assert_close(kl.distill_loss(s), want)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    torch.testing.assert_close(kl.distill_loss(s, mask=mask), (p * (p.log() - q)).sum(1)[:, :4].mean() * T**2)
    bce = ss.RandomSparsity(None, space, distill=True, kind="bce", temperature=1.0)
    bce.set_teacher(t_up)
    pt = torch.sigmoid(t_up)
    want = -(pt * F.logsigmoid(s) + (1 - pt) * F.logsigmoid(-s)).mean()
    torch.testing.assert_close(bce.distill_loss(s), want)
    mse = ss.RandomSparsity(None, space, distill=True, kind="mse")
    torch.testing.assert_close(mse.distill_loss(s, t_up), ((s - t_up) ** 2).mean())
    off = ss.RandomSparsity(None, space, distill=False)
    off.set_teacher(t_up)
    loss = off.distill_loss(s)
    assert float(loss.detach()) == 0.0 and loss.requires_grad  # zero, graph kept (DDP)
    kl.configs(1)  # a new step forgets the teacher
    assert kl.teacher is None and float(kl.distill_loss(s).detach()) == 0.0
    with pytest.raises(ss.ConfigError, match="distillation kind"):
        ss.RandomSparsity(None, space, kind="l1")
