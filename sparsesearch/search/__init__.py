"""Latency-constrained search over a space's genomes: pymoo, optuna, Ray Tune and random back ends."""
from .accuracy import AccuracyCache, BatchEvaluator, SerialEvaluator
from .budget import Budget, parse_budget
from .engine import ALGORITHMS, SearchContext, SearchRun, run_search
from .problem import ChoiceMutation, FeasibleSampling, SpaceRepair, SparsityProblem

__all__ = [
    "ALGORITHMS",
    "AccuracyCache",
    "BatchEvaluator",
    "Budget",
    "ChoiceMutation",
    "FeasibleSampling",
    "SearchContext",
    "SearchRun",
    "SerialEvaluator",
    "SpaceRepair",
    "SparsityProblem",
    "parse_budget",
    "run_search",
]
