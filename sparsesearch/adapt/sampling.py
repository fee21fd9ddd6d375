"""Which configs a training step runs: the sampling rules of supernet adaptation.

Every rule is a pure function of (space, seed, step): DDP ranks that share the seed agree on each step's
configs without communicating, and a resumed run samples exactly what the uninterrupted run would.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import SparsityConfig
from ..errors import ConfigError
from ..space import SearchSpace

__all__ = ["SAMPLERS", "StepConfig", "ConfigSampler", "input_resolution"]

#: "uniform": one random config per step; "sandwich": the densest, the sparsest and one random config;
#: "dense": the densest config only (a dense fine-tuning baseline with the same loop).
SAMPLERS = ("uniform", "sandwich", "dense")


@dataclass(frozen=True)
class StepConfig:
    """One forward/backward pass of a step: its role ("dense", "sparsest", "sampled") and config."""

    role: str
    config: SparsityConfig


def input_resolution(space: SearchSpace, config: SparsityConfig) -> tuple[int, int] | None:
    """The input size a config asks for: its resolution gene when the space offers several resolutions,
    else None (train and evaluate at the data set's image size)."""
    if len(space.resolutions) > 1 and config.resolution is not None:
        return (int(config.resolution[0]), int(config.resolution[1]))
    return None


class ConfigSampler:
    """The configs of each step under a sampling rule.

    Args:
        space: the search space (``space.sample`` respects its ordering rules).
        rule: one of :data:`SAMPLERS`.
        seed: the run's seed; step t draws from ``numpy.random.default_rng([seed, t])``.
        distill: the densest config runs first every step (its output is the soft target of the others).

    For spaces with several resolutions the densest config takes the largest and the sparsest the smallest.
    """

    def __init__(self, space: SearchSpace, rule: str = "uniform", seed: int = 0, distill: bool = False) -> None:
        if rule not in SAMPLERS:
            raise ConfigError(f"unknown sampler {rule!r}; use one of {', '.join(SAMPLERS)}")
        self.space = space
        self.rule = rule
        self.seed = int(seed)
        self.distill = distill
        by_area = sorted(space.resolutions, key=lambda r: r[0] * r[1])
        self._densest = space.densest(by_area[-1])
        self._sparsest = space.sparsest(by_area[0])

    def sample(self, step: int) -> SparsityConfig:
        """The random config of step ``step`` (0-based)."""
        rng = np.random.default_rng([self.seed, int(step)])
        return self.space.sample(rng)

    def configs(self, step: int) -> list[StepConfig]:
        """The passes of step ``step`` in the order they run (a teacher, if any, first)."""
        if self.rule == "dense":
            return [StepConfig("dense", self._densest)]
        out = []
        if self.rule == "sandwich" or self.distill:
            out.append(StepConfig("dense", self._densest))
        if self.rule == "sandwich":
            out.append(StepConfig("sparsest", self._sparsest))
        out.append(StepConfig("sampled", self.sample(step)))
        return out
