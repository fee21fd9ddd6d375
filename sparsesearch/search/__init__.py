"""Latency-constrained search over a space's genomes: pymoo, optuna, Ray Tune and random back ends.

`search(...)` runs a whole search in one call; the pieces below are its parts.
"""

from .accuracy import (
    AccuracyCache,
    AccuracyFunctionError,
    BatchEvaluator,
    ConfigScorer,
    SerialEvaluator,
    import_callable,
)
from .api import SearchResult, search
from .backends import ALGORITHMS, SearchContext
from .budget import Budget, parse_budget
from .engine import Choice, Refine, SearchCallback, SearchRun, WarmStart, run_search
from .finalists import Finalists
from .problem import ChoiceMutation, FeasibleSampling, SpaceRepair, SparsityProblem
from .records import BestRecord, Candidate, Measured, MeasuredRow, ParetoRecord
from .settings import SearchSettings

__all__ = [
    "ALGORITHMS",
    "AccuracyCache",
    "BestRecord",
    "Choice",
    "Finalists",
    "Measured",
    "MeasuredRow",
    "ParetoRecord",
    "Refine",
    "SearchCallback",
    "SearchSettings",
    "WarmStart",
    "AccuracyFunctionError",
    "BatchEvaluator",
    "Budget",
    "Candidate",
    "ChoiceMutation",
    "ConfigScorer",
    "FeasibleSampling",
    "SearchContext",
    "SearchResult",
    "SearchRun",
    "SerialEvaluator",
    "SpaceRepair",
    "SparsityProblem",
    "import_callable",
    "parse_budget",
    "run_search",
    "search",
]
