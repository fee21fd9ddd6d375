"""Errors raised by the library (the CLI turns each into one line and exit code 2), and its warnings."""

from __future__ import annotations

__all__ = [
    "SparseSearchError",
    "ConfigError",
    "SpaceError",
    "CheckpointError",
    "DataError",
    "LatencyTableError",
    "BudgetError",
    "SparseSearchWarning",
]


class SparseSearchError(Exception):
    """Base class: a problem the user can act on, with a message that says what to do."""


class ConfigError(SparseSearchError):
    """A sparsity config is malformed or does not fit the model it is applied to."""


class SpaceError(SparseSearchError):
    """A search space file is malformed or inconsistent with its architecture."""


class CheckpointError(SparseSearchError):
    """A checkpoint cannot be read or does not match the model."""


class DataError(SparseSearchError):
    """A dataset folder or file is missing, empty or malformed."""


class LatencyTableError(SparseSearchError):
    """A latency table is malformed or was measured for another setup."""


class BudgetError(SparseSearchError):
    """A latency budget cannot be parsed or cannot be met."""


class SparseSearchWarning(UserWarning):
    """Something the user should know that does not stop the run; the CLI prints it as one line."""
