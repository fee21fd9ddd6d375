"""sparsesearch: window pruning + hardware-aware layerwise sparsity search for windowed vision transformers.

    >>> import sparsesearch as ss
    >>> space = ss.SearchSpace.load("search_spaces/swin_t.yaml")
    >>> model = space.create_model(num_classes=10)
    >>> model.set_config(space.uniform(0.5))
"""
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
from .models import SwinTransformer, create_model, list_models, load_checkpoint
from .space import SearchSpace

__version__ = "0.1.0"

__all__ = [
    "SparsityConfig",
    "SearchSpace",
    "SwinTransformer",
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
    "__version__",
]
