"""Random search: each "generation" evaluates `population` fresh random configs within the budget."""

from __future__ import annotations

import numpy as np

from .backends import SearchContext, check_options

__all__ = ["run_random"]


def run_random(ctx: SearchContext) -> int:
    """Deterministic per (seed, generation), so a resumed run re-draws the same batches and the cache skips those
    already evaluated. Takes no options."""
    check_options(ctx.algorithm, ctx.options, (), "the random sampler")
    scorer = ctx.scorer()
    for gen in range(1, ctx.generations + 1):
        rng = np.random.default_rng([ctx.seed, gen])
        cand = np.unique(ctx.space.sample_genes(rng, n=ctx.population * 50), axis=0)
        rng.shuffle(cand)
        feasible, _ = scorer.feasible(cand, limit=ctx.population)
        if len(feasible):
            scorer.score(feasible)
        ctx.log(ctx.record(gen))
    return ctx.generations
