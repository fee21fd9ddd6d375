"""sparsesearch: window pruning + hardware-aware layerwise sparsity search for windowed vision transformers.

>>> import sparsesearch as ss
>>> space = ss.SearchSpace.load("search_spaces/swin_t.yaml")
>>> model = space.create_model(num_classes=10)
>>> model.set_config(space.uniform(0.5))
>>> result = ss.search(space, latency=table, accuracy=my_accuracy, budget="0.7x", model=supernet)
"""

from .adapt import AdaptOptions, AdaptResult, RandomSparsity
from .config import SparsityConfig
from .errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    DataError,
    LatencyTableError,
    SpaceError,
    SparseSearchError,
)
from .evaluate import EvalResult, EvalSettings, Evaluator, evaluate
from .export import ExportSettings, export_model, load_exported
from .fidelity import FidelityError, FidelityEvaluator, FidelitySettings, fidelity
from .latency import LatencyTable
from .models import SamViT, SwinTransformer, create_model, list_models, load_checkpoint
from .search import AccuracyFunctionError, Candidate, SearchResult, SearchSettings, search
from .search.accuracy import FidelityAccuracy
from .space import SearchSpace
from .supernet import SupernetMeta, load_pretrained, load_supernet, save_supernet

__version__ = "0.1.0"

__all__ = [
    "SparsityConfig",
    "SearchSpace",
    "LatencyTable",
    "SwinTransformer",
    "SamViT",
    "create_model",
    "list_models",
    "load_checkpoint",
    "SparseSearchError",
    "ConfigError",
    "SpaceError",
    "CheckpointError",
    "DataError",
    "LatencyTableError",
    "BudgetError",
    "AdaptOptions",
    "AdaptResult",
    "RandomSparsity",
    "evaluate",
    "Evaluator",
    "EvalSettings",
    "EvalResult",
    "fidelity",
    "FidelityEvaluator",
    "FidelitySettings",
    "FidelityAccuracy",
    "FidelityError",
    "export_model",
    "ExportSettings",
    "load_exported",
    "load_pretrained",
    "load_supernet",
    "save_supernet",
    "SupernetMeta",
    "search",
    "SearchResult",
    "SearchSettings",
    "Candidate",
    "AccuracyFunctionError",
    "__version__",
]
