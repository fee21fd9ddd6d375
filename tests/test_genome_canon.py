"""Genomes of one model map to one genome: same outputs, evaluated once, told apart when the model differs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sparsesearch as ss
import torch
from sparsesearch.latency.structure import GenomeCanon
from sparsesearch.search.accuracy import AccuracyCache

DEMO = Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml"


def _outputs(model, space, genomes, x):
    out = []
    with torch.inference_mode():
        for g in genomes:
            model.set_config(space.decode(g))
            out.append(model(x))
    return out


def test_canonical_genomes_run_the_same_model_and_distinct_ones_do_not():
    space = ss.SearchSpace.load(DEMO)  # stages 3 and 4 hold 4 windows at 256x256: sparsity moves in quarters
    canon = GenomeCanon(space)
    torch.manual_seed(0)
    model = space.create_model(num_classes=3, head="seg").eval()
    x = torch.randn(1, 3, 256, 256)
    g = np.array([6, 2, 8, 6, 0, 0, 0, 0, 0])  # 0.6, 0.2, 0.8, 0.6
    c = canon(g)
    assert c.tolist() == [6, 2, 7, 4, 0, 0, 0, 0, 0]  # 0.8 keeps 1 of 4 like 0.7; 0.6 keeps 2 like 0.4
    a, b = _outputs(model, space, [g, c], x)
    assert torch.equal(a, b)
    other = c.copy()
    other[2] = 4  # 0.4 keeps 2 windows, not 1: another model
    assert canon(other).tolist() == other.tolist()
    (d,) = _outputs(model, space, [other], x)
    assert not torch.allclose(a, d)
    X = space.sample_genes(0, n=50)
    assert np.array_equal(canon(canon(X)), canon(X))  # idempotent
    assert np.all(canon(X) <= X)  # the smallest equivalent choice


def test_the_cache_evaluates_one_model_once():
    space = ss.SearchSpace.load(DEMO)
    seen: list = []

    def evaluator(configs):
        seen.extend(c.key() for c in configs)
        return [1.0] * len(configs)

    cache = AccuracyCache(space, evaluator, canon=GenomeCanon(space))
    X = np.array([[6, 2, 8, 6, 0, 0, 0, 0, 0], [6, 2, 7, 4, 0, 0, 0, 0, 0], [6, 2, 7, 5, 0, 0, 0, 0, 0]])
    assert cache.evaluate(X).tolist() == [1.0, 1.0, 1.0]
    assert len(seen) == 1 and len(cache) == 1
    assert cache.items()[0][0].tolist() == [6, 2, 7, 4, 0, 0, 0, 0, 0]
