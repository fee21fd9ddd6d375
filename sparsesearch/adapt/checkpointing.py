"""A training run's checkpoints: the optimiser and RNG states restored from a resumed run's last.pt, the folder
settled before the first step (old run files, metrics cut at the resumed step, args.yaml), and last.pt written
with everything a resumed run needs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ..errors import ConfigError
from ..evaluate import EvalResult
from ..fileio import atomic_write
from ..supernet import SupernetMeta, save_supernet
from . import distributed as D
from .checkpoint import ARGS, FINAL, LAST, METRICS, capture_rng, restore_rng, truncate_metrics
from .loop import Optimisation
from .metrics_log import tensorboard_writer
from .options import AdaptOptions
from .prepare import Plan

__all__ = ["Checkpointer"]


class Checkpointer:
    """Checkpoints of the run in `out`.

    Args:
        opts: the run's settings (recorded in every checkpoint and in args.yaml).
        info: the process (rank 0 writes; every rank's RNG state is gathered).
        out: the run folder.
        ckpt: the resumed run's last checkpoint (None for a new run).
        log: one-line messages (rank 0 only).
    """

    def __init__(
        self,
        opts: AdaptOptions,
        info: D.DistInfo,
        out: Path,
        ckpt: dict[str, Any] | None,
        log: Callable[[str], None],
    ) -> None:
        self.opts, self.info, self.out, self.ckpt, self.log = opts, info, out, ckpt, log
        self.opt: Optimisation | None = None

    def optimisation(self, model: nn.Module, plan: Plan) -> tuple[Optimisation, int]:
        """The optimiser, scheduler and scaler (restored, with the RNG states, from a resumed checkpoint) and the
        first step."""
        o, info = self.opts, self.info
        opt = self.opt = Optimisation(
            model,
            lr=o.lr,
            weight_decay=o.weight_decay,
            total_steps=plan.total,
            warmup_steps=plan.warmup,
            min_lr=o.min_lr,
            scaler=o.amp and info.device.type == "cuda",
            clip_grad=o.clip_grad,
        )
        if self.ckpt is None:
            return opt, 0
        tr = self.ckpt["train"]
        if int(tr["total_steps"]) != plan.total:
            raise ConfigError(
                f"{self.out / LAST} was set up for {tr['total_steps']} steps but this run would take {plan.total} "
                "(the data set or world size changed?)"
            )
        opt.load_state_dict(tr)
        restore_rng(tr["rng"][info.rank % len(tr["rng"])])
        if int(tr.get("world_size", 1)) != info.world_size:
            self.log(f"resuming a {tr.get('world_size')}-process run on {info.world_size}: the data split differs")
        self.log(f"resuming {self.out} at step {int(tr['step'])} of {plan.total}")
        return opt, int(tr["step"])

    def prepare_files(self, start: int, overwrite: bool) -> Any:
        """Rank 0 settles the folder (old run files, metrics cut at `start`, args.yaml); the others wait.
        Returns the TensorBoard writer (None without --tensorboard)."""
        info, writer = self.info, None
        D.barrier(info)
        if info.is_main:
            out = self.out
            out.mkdir(parents=True, exist_ok=True)
            if self.ckpt is None and overwrite:
                for name in (LAST, FINAL, METRICS, ARGS):
                    (out / name).unlink(missing_ok=True)
                shutil.rmtree(out / "tb", ignore_errors=True)
            if self.ckpt is not None:
                truncate_metrics(out / METRICS, start)
            text = yaml.safe_dump(self.opts.to_dict(), sort_keys=False)
            atomic_write(out / ARGS, lambda f: f.write(text), binary=False)
            if self.opts.tensorboard:
                writer = tensorboard_writer(out / "tb")
        D.barrier(info)
        return writer

    def save(
        self,
        model: nn.Module,
        meta: SupernetMeta,
        step: int,
        spe: int,
        total: int,
        val: dict[str, EvalResult],
    ) -> None:
        """last.pt at `step`: the weights, `meta` with the validation figures `val`, and the train state (every
        rank's RNG states, the optimiser's, the settings) a resumed run starts from."""
        rngs = D.all_gather_object(self.info, capture_rng())
        if self.info.is_main:
            meta.step, meta.finished = step, step >= total
            meta.metrics = {k: v.to_dict() for k, v in val.items()}
            save_supernet(self.out / LAST, model, meta, train_state=self._train_state(step, spe, total, rngs))

    def _train_state(self, step: int, spe: int, total: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // spe,
            "batch_in_epoch": step % spe,
            "steps_per_epoch": spe,
            "total_steps": total,
            **(self.opt.state_dict() if self.opt is not None else {}),
            "rng": rngs,
            "args": self.opts.to_dict(),
            "world_size": self.info.world_size,
        }
