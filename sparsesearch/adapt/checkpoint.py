"""Training checkpoints: RNG states, run folders, and what ``--resume`` checks.

A training checkpoint (``OUT/last.pt``) is a supernet file (see :mod:`sparsesearch.supernet`) whose
``"train"`` entry holds::

    {"step": int,                    # optimiser steps done
     "epoch": int, "batch_in_epoch": int, "steps_per_epoch": int,   # the loader position
     "total_steps": int,
     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
     "scaler": GradScaler.state_dict() or None,
     "rng": [per-rank {"torch", "cuda", "numpy", "python"}],
     "args": AdaptOptions.to_dict(),
     "world_size": int}
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write
from ..supernet import read_supernet_file

__all__ = [
    "LAST",
    "FINAL",
    "METRICS",
    "ARGS",
    "capture_rng",
    "restore_rng",
    "RunState",
    "inspect_run",
    "load_train_checkpoint",
    "truncate_metrics",
]

LAST = "last.pt"
FINAL = "supernet.pt"
METRICS = "metrics.jsonl"
ARGS = "args.yaml"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA, numpy global, python ``random``) as plain data."""
    np_state = np.random.get_state(legacy=False)
    np_plain = {
        "bit_generator": np_state["bit_generator"],
        "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
        "pos": int(np_state["state"]["pos"]),
        "has_gauss": int(np_state["has_gauss"]),
        "gauss": float(np_state["gauss"]),
    }
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np_plain,
        "python": [py[0], list(py[1]), py[2]],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


@dataclass(frozen=True)
class RunState:
    """What a run folder holds: nothing, an unfinished run (last.pt at ``step``) or a finished one."""

    exists: bool
    finished: bool = False
    step: int | None = None
    total_steps: int | None = None

    def describe(self) -> str:
        if not self.exists:
            return "no run"
        if self.finished:
            return f"a finished run ({self.total_steps} steps)" if self.total_steps else "a finished run"
        if self.step is None:
            return "an unfinished run with no checkpoint yet"
        return f"an unfinished run (checkpoint at step {self.step} of {self.total_steps})"


def inspect_run(out: Path) -> RunState:
    """Look at ``out`` without loading weights: which run files are there, and how far the run got."""
    files = [out / n for n in (LAST, FINAL, METRICS, ARGS)]
    if not any(f.exists() for f in files):
        return RunState(False)
    step = total = None
    finished = (out / FINAL).exists()
    if (out / LAST).exists():
        try:
            obj = read_supernet_file(out / LAST)
            train = obj.get("train") or {}
            step, total = int(train.get("step", 0)), int(train.get("total_steps", 0))
            finished = finished and step >= total
        except CheckpointError:
            pass
    return RunState(True, finished, step, total)


def load_train_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``path`` and check that it is a resumable training checkpoint."""
    obj = read_supernet_file(path)
    train = obj.get("train")
    needed = ("step", "optimizer", "scheduler", "rng", "args", "total_steps")
    if not isinstance(train, dict) or any(k not in train for k in needed):
        raise CheckpointError(f"{path} holds weights but no training state, so it cannot be resumed (use it as --init)")
    return obj


def truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of ``path`` logged after ``step`` (a killed run may have logged past its checkpoint)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if isinstance(rec, dict) and int(rec.get("step", 0)) <= step and rec.get("event") != "end":
            keep.append(line)
    text = "".join(f"{line}\n" for line in keep)
    atomic_write(path, lambda f: f.write(text), binary=False)
