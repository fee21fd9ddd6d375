"""Random search: each "generation" asks for `population` fresh random configs within the budget."""

from __future__ import annotations

from typing import Any

import numpy as np

from .backends import Backend, SearchContext, check_options
from .scoring import Scored

__all__ = ["RandomBackend"]


class RandomBackend(Backend):
    """Deterministic per (seed, generation): the batch of generation g is drawn from (seed, g) alone. Takes no
    options."""

    def __init__(self, ctx: SearchContext) -> None:
        super().__init__(ctx)
        check_options(ctx.algorithm, ctx.options, (), "the random sampler")
        self.generation = 0
        self.scorer = ctx.scorer()

    def ask(self) -> np.ndarray:
        ctx = self.ctx
        rng = np.random.default_rng([ctx.seed, self.generation + 1])
        cand = np.unique(ctx.space.sample_genes(rng, n=ctx.population * 50), axis=0)
        rng.shuffle(cand)
        feasible, _ = self.scorer.feasible(cand, limit=ctx.population)
        return feasible

    def tell(self, scored: Scored) -> None:
        self.generation += 1

    def state(self) -> Any:
        return self.generation

    def restore(self, state: Any) -> None:
        self.generation = int(state)
