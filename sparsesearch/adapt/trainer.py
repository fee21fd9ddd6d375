"""The supernet adaptation loop: every step trains the configs a sampling rule picks, on one set of weights.

    from sparsesearch.adapt import AdaptOptions, adapt
    result = adapt(AdaptOptions(space="search_spaces/demo.yaml", data="synthetic", out="runs/x", steps=200))

One step = one batch. For each of the step's configs (see :class:`~sparsesearch.adapt.sampling.RandomSparsity`)
the batch goes forward and backward and the gradients add up; then one AdamW step and one scheduler step.
With ``distill`` the densest config runs first on the labels and its detached output is the soft target of
the others (KL on per-pixel class distributions for "seg", on logits for "cls").

Determinism: the configs of step t come from (seed, t), the batches from (seed, epoch, position) and the
torch/numpy/python RNGs are checkpointed, so a resumed run repeats the losses of an uninterrupted one
(bit-exact on CPU). The run seeds and draws inside :func:`~sparsesearch.adapt.loop.isolated_rng`: the caller's
global RNG states are the same after :func:`adapt` as before. Under ``torchrun`` every rank samples the same
configs and rank 0 alone writes files.

The run's parts live beside this module: `prepare` (folder, settings, data, model), `checkpointing` (optimiser
state, last.pt), `validation`, `metrics_log` (metrics.jsonl, TensorBoard, progress) and `stopping` (SIGINT /
SIGTERM); this module drives the steps.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SparseSearchError
from ..evaluate import EvalResult, Evaluator
from ..space import SearchSpace
from ..supernet import SupernetMeta, save_supernet
from . import distributed as D
from .checkpoint import FINAL, LAST
from .checkpointing import Checkpointer
from .loop import (
    Optimisation,
    StepSettings,
    batches,
    build_optimizer,
    cosine_schedule,
    isolated_rng,
    seg_or_cls_loss,
    train_step,
)
from .metrics_log import MetricsLog, tensorboard_writer
from .options import AdaptOptions
from .prepare import Plan, RunSetup
from .sampling import RandomSparsity, input_resolution
from .stopping import StopRequested, StopSignals
from .validation import make_evaluator, validate

__all__ = [
    "AdaptResult",
    "adapt",
    "seg_or_cls_loss",
    "build_optimizer",
    "cosine_schedule",
]


@dataclass
class AdaptResult:
    """What a call of :func:`adapt` did.

    Attributes:
        out: the run folder. step: steps done at the end of this call. total_steps: steps of the run.
        finished: the run reached total_steps. resumed_from: the step it resumed at (None for a new run).
        losses: step (1-based) -> mean loss over the step's configs, for the steps run in this call.
        configs: step -> the sampled config's genes (space encoding), for the steps run in this call.
        val: last validation figures per config role. world_size: processes.
        fingerprints, config_digests: per rank, a hash of the final weights and of every config trained; equal
            across ranks when they agree.
    """

    out: Path
    step: int
    total_steps: int
    finished: bool
    resumed_from: int | None = None
    losses: dict[int, float] = field(default_factory=dict)
    configs: dict[int, list[int]] = field(default_factory=dict)
    val: dict[str, EvalResult] = field(default_factory=dict)
    world_size: int = 1
    fingerprints: list[str] = field(default_factory=list)
    config_digests: list[str] = field(default_factory=list)

    @property
    def ranks_agree(self) -> bool:
        return len(set(self.fingerprints)) <= 1 and len(set(self.config_digests)) <= 1


def adapt(
    options: AdaptOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    explicit: Collection[str] | None = None,
    progress: bool | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Train a supernet as ``options`` say, writing OUT/{supernet.pt, last.pt, metrics.jsonl, args.yaml}.

    Args:
        options: the settings (``space``, ``data`` and ``out`` needed, except that a resumed run takes
            ``space``/``data`` from its checkpoint).
        resume: continue the run in ``options.out`` from its last.pt, with its recorded settings.
        overwrite: start afresh in a folder that already holds a run (its run files are deleted).
        explicit: the option names the user set; on resume only these are compared with the recorded
            settings (a training setting that differs is a ConfigError). Default: those that differ from the
            defaults.
        progress: a progress bar (None or True: a live bar on a terminal, a line every 5 % otherwise; False: none).
            Only rank 0 shows it.
        on_step: called on every rank after each step with that step's record (as logged).
        log: called with one-line messages (rank 0 only), e.g. ``print``.

    Raises:
        SparseSearchError subclasses (one line each) for bad settings, data, spaces or checkpoints.
    """
    info = D.setup(options.device if isinstance(options.device, str) else "auto")
    try:
        say = functools.partial(_say, log, info)
        setup = RunSetup(options, info, resume, overwrite, explicit, say)
        return _Run(setup, progress, on_step, say).run()
    finally:
        D.teardown(info)


@dataclass
class _Training:
    """What the steps of a run work with."""

    space: SearchSpace
    plan: Plan
    model: nn.Module
    train_model: nn.Module  # the model, or DDP around it
    meta: SupernetMeta
    opt: Optimisation
    sampler: RandomSparsity
    evaluator: Evaluator | None
    settings: StepSettings
    ckpt: Checkpointer


def _say(log: Callable[[str], None] | None, info: D.DistInfo, msg: str) -> None:
    """A one-line message to `log`, on rank 0 only."""
    if log is not None and info.is_main:
        log(msg)


class _Run:
    """One call of `adapt`: set up (`RunSetup`), then the steps, then the end."""

    def __init__(
        self,
        setup: RunSetup,
        progress: bool | None,
        on_step: Callable[[dict[str, Any]], None] | None,
        log: Callable[[str], None],
    ) -> None:
        self.setup, self.info = setup, setup.info
        self.progress = progress
        self.on_step = on_step
        self.log = log
        self.stop = StopSignals(enabled=not setup.info.distributed)

    @property
    def opts(self) -> AdaptOptions:
        return self.setup.opts

    def run(self) -> AdaptResult:
        with isolated_rng():  # the run seeds and draws; the caller's RNG streams are left as they were
            return self._run()

    def _run(self) -> AdaptResult:
        info, setup = self.info, self.setup
        out = setup.prepare_out()
        if setup.ckpt is not None:
            setup.merge_resumed_options(out)
        o = self.opts
        if o.tensorboard and info.is_main:
            tensorboard_writer(None)  # fail early, with the install hint, if it is missing
        space = setup.load_space(out)
        plan = setup.plan(space)
        model, meta = setup.build_model(space, plan, out)
        train_model = setup.wrap(model)
        ckpt = Checkpointer(o, info, out, setup.ckpt, self.log)
        opt, start = ckpt.optimisation(model, plan)
        result = AdaptResult(out, start, plan.total, start >= plan.total, start if setup.ckpt is not None else None)
        result.world_size = info.world_size
        if start >= plan.total:
            self.log(f"{out} is already finished ({plan.total} steps); nothing to do")
            return result
        writer = ckpt.prepare_files(start, setup.overwrite)
        teacher = setup.teacher_model(space)
        sampler = self._sampler(model, space, plan, teacher[0] if teacher is not None else None)
        evaluator = (
            make_evaluator(model, space, plan, o, info.device, teacher[0] if teacher is not None else None)
            if plan.val_ds is not None and info.is_main
            else None
        )
        settings = StepSettings(
            plan.task,
            plan.ignore_index,
            (torch.float16 if info.device.type == "cuda" else torch.bfloat16) if o.amp else None,
            o.distill_weight,
            info.distributed,
            labels=o.teacher is None,
        )
        t = _Training(space, plan, model, train_model, meta, opt, sampler, evaluator, settings, ckpt)
        t_run = time.perf_counter()
        metrics = MetricsLog(out, info.is_main, writer, self._bar(plan.total, start))
        digest = self._train(t, result, start, metrics)
        self._finish(t, result, digest, time.perf_counter() - t_run, metrics)
        return result

    def _sampler(self, model: nn.Module, space: SearchSpace, plan: Plan, teacher: nn.Module | None) -> RandomSparsity:
        """Each step's configs and the distillation: in-place (--distill) or from the frozen teacher (--teacher)."""
        o = self.opts
        kind = "cosine" if plan.task == "features" else "kl"
        return RandomSparsity(
            model,
            space,
            o.sampler,
            o.seed,
            distill=o.distill,
            kind=kind if teacher is not None else "kl",
            temperature=o.distill_temperature,
            teacher=teacher,
        )

    def _bar(self, total: int, start: int) -> Any:
        """The progress bar (rank 0, unless progress is False)."""
        if not self.info.is_main or self.progress is False:
            return None
        from ..progress import progress_bar  # noqa: PLC0415

        return progress_bar(total, initial=start, desc="adapt", unit="step")

    def _train(self, t: _Training, result: AdaptResult, start: int, metrics: MetricsLog) -> str:
        """Steps start..total (checkpoints, metrics, progress); returns the digest of every config trained."""
        o, info = self.opts, self.info
        digest = hashlib.sha256()
        try:
            with self.stop:
                t.train_model.train()
                t0 = time.perf_counter()
                for step, epoch, (images, targets) in batches(
                    t.plan.train_ds,
                    o.batch,
                    seed=o.seed,
                    start=start,
                    total=t.plan.total,
                    steps_per_epoch=t.plan.spe,
                    workers=o.workers,
                    rank=info.rank,
                    world_size=info.world_size,
                    pin_memory=info.device.type == "cuda",
                ):
                    rec = self._one_step(t, step, epoch, images, targets, digest, t0)
                    self._after_step(t, rec, result, metrics)
                    t0 = time.perf_counter()
        except StopRequested:
            self.log(f"stopped at step {result.step}; {t.ckpt.out / LAST} written (continue with --resume)")
            raise KeyboardInterrupt from None
        finally:
            metrics.close()
        return digest.hexdigest()[:16]

    def _one_step(
        self,
        t: _Training,
        step: int,
        epoch: int,
        images: torch.Tensor,
        targets: Any,
        digest: Any,
        t0: float,
    ) -> dict[str, Any]:
        """Train step `step` (0-based) on one batch; returns its metrics record."""
        device = self.info.device
        images = images.to(device, non_blocking=True)
        targets = torch.as_tensor(targets).to(device, non_blocking=True)
        passes = t.sampler.configs(step)
        size = functools.partial(input_resolution, t.space)
        losses, lr = train_step(t.train_model, t.opt, passes, images, targets, t.settings, size, t.sampler)
        for p in passes:
            digest.update(p.config.key().encode())
        mean_losses = D.all_reduce_mean(self.info, torch.tensor(list(losses.values()), dtype=torch.float64))
        sampled = passes[-1].config
        return {
            "step": step + 1,
            "epoch": epoch,
            "loss": float(mean_losses.mean()),
            "losses": {k: float(v) for k, v in zip(losses, mean_losses.tolist())},
            "lr": lr,
            "images_per_s": self.opts.batch * self.info.world_size / (time.perf_counter() - t0),
            "sparsity": round(sampled.mean_sparsity(), 6),
            "genes": t.space.encode(sampled).tolist(),
        }

    def _after_step(self, t: _Training, rec: dict[str, Any], result: AdaptResult, metrics: MetricsLog) -> None:
        """Validation, the metrics line, progress, checkpoints and a requested stop after a step."""
        o, info, step, total = self.opts, self.info, rec["step"], t.plan.total
        result.losses[step] = rec["loss"]
        result.configs[step] = rec["genes"]
        result.step = step
        if o.val_every and step % o.val_every == 0 and step < total:
            if t.evaluator is not None:
                result.val = validate(t.evaluator, t.sampler, t.space, self.log)
                rec["val"] = {k: v.to_dict() for k, v in result.val.items()}
            D.barrier(info)
        metrics.write(rec)
        if self.on_step is not None:
            self.on_step(rec)
        if (step % o.ckpt_every == 0 and step < total) or self.stop.requested:
            t.ckpt.save(t.model, t.meta, step, t.plan.spe, total, result.val)
        if self.stop.requested:
            raise StopRequested

    def _finish(self, t: _Training, result: AdaptResult, digest: str, seconds: float, metrics: MetricsLog) -> None:
        """The end: validation, agreement between ranks, last.pt, supernet.pt and the metrics' end record."""
        info, total = self.info, t.plan.total
        if t.evaluator is not None:
            result.val = validate(t.evaluator, t.sampler, t.space, self.log)
        result.fingerprints = D.all_gather_object(info, D.fingerprint(t.model))
        result.config_digests = D.all_gather_object(info, digest)
        t.ckpt.save(t.model, t.meta, total, t.plan.spe, total, result.val)
        if info.is_main:
            t.meta.step, t.meta.finished = total, True
            t.meta.metrics = {k: v.to_dict() for k, v in result.val.items()}
            save_supernet(t.ckpt.out / FINAL, t.model, t.meta)
            metrics.end(
                {
                    "event": "end",
                    "step": total,
                    "seconds": round(seconds, 3),
                    "val": t.meta.metrics,
                    "world_size": info.world_size,
                    "process_group": D.backend(info),
                    "ranks_agree": result.ranks_agree,
                    "fingerprints": result.fingerprints,
                    "config_digests": result.config_digests,
                }
            )
        D.barrier(info)
        if not result.ranks_agree:
            raise SparseSearchError(
                f"the {info.world_size} processes ended with different weights or configs: {result.fingerprints}"
            )
        result.finished = True
