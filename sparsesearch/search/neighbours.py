"""The +-1 moves around a genome that the refinement (engine) and the warm start's surrogate climb share."""

from __future__ import annotations

import numpy as np

__all__ = ["neighbours"]


def neighbours(x: np.ndarray) -> np.ndarray:
    """(m, n_var) neighbours of genome x (n_var,): each gene one step up or down, alone or traded against another
    gene's opposite step (so latency stays near the budget)."""
    moves = []
    for i in range(len(x)):
        for step in (-1, 1):
            y = x.copy()
            y[i] += step
            moves.append(y)
            for j in range(len(x)):
                if j != i:
                    z = y.copy()
                    z[j] -= step
                    moves.append(z)
    return np.stack(moves)
