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
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..data import UNLABELLED, build_dataset
from ..errors import CheckpointError, ConfigError, DataError, SparseSearchError
from ..evaluate import EvalResult, Evaluator
from ..fidelity import FidelityEvaluator, dense_reference
from ..fileio import atomic_write
from ..models import load_checkpoint
from ..space import SearchSpace
from ..supernet import SupernetMeta, load_pretrained, load_weights, same_space, save_supernet, space_from_yaml
from . import distributed as D
from .checkpoint import (
    ARGS,
    FINAL,
    LAST,
    METRICS,
    capture_rng,
    inspect_run,
    load_train_checkpoint,
    restore_rng,
    truncate_metrics,
)
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
from .options import RUNTIME_FIELDS, AdaptOptions
from .sampling import RandomSparsity, input_resolution, kl_distill

__all__ = [
    "AdaptResult",
    "adapt",
    "train_supernet",
    "seg_or_cls_loss",
    "distill_loss",
    "build_optimizer",
    "cosine_schedule",
]

DEFAULT_EPOCHS = 10


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


# ---- losses ---------------------------------------------------------------------------------------------------
def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """KL(teacher || student) of the class distributions, times T^2.

    seg: student/teacher logits (B, C, H, W) (a teacher of another size is resized to the student's), averaged
    over pixels (those whose ``target`` (B, H, W) is ``ignore_index`` excluded); cls: (B, C), averaged over B.
    """
    mask = (target != ignore_index) if student.dim() == 4 and target is not None else None
    return kl_distill(student, teacher, temperature, mask)


# ---- the run ----------------------------------------------------------------------------------------------------
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
        return _Run(options, info, resume, overwrite, explicit, progress, on_step, log).run()
    finally:
        D.teardown(info)


#: the same function under a name that does not shadow the ``sparsesearch.adapt`` package at top level
train_supernet = adapt


class _StopRequested(Exception):
    pass


@dataclass
class _Plan:
    """The data and step counts of a run."""

    train_ds: Any
    val_ds: Any | None
    task: str
    size: tuple[int, int]
    num_classes: int
    ignore_index: int
    spe: int  # steps per epoch (per process)
    total: int
    warmup: int


@dataclass
class _Training:
    """What the steps of a run work with."""

    space: SearchSpace
    plan: _Plan
    out: Path
    model: nn.Module
    train_model: nn.Module  # the model, or DDP around it
    meta: SupernetMeta
    sampler: RandomSparsity
    evaluator: Evaluator | None
    writer: Any
    settings: StepSettings


class _Run:
    def __init__(
        self,
        options: AdaptOptions,
        info: D.DistInfo,
        resume: bool,
        overwrite: bool,
        explicit: Collection[str] | None,
        progress: bool | None,
        on_step: Callable[[dict[str, Any]], None] | None,
        log: Callable[[str], None] | None,
    ) -> None:
        self.opts = options.replace()
        self.opts.validate()
        self.info = info
        self.resume = resume
        self.overwrite = overwrite
        defaults = AdaptOptions()
        self.explicit = (
            set(explicit)
            if explicit is not None
            else {n for n in AdaptOptions.field_names() if getattr(self.opts, n) != getattr(defaults, n)}
        )
        self.progress = progress
        self.on_step = on_step
        self._log = log
        self.ckpt: dict[str, Any] | None = None
        self.stop_flag = False
        self._teacher: tuple[nn.Module, SupernetMeta] | None = None

    def log(self, msg: str) -> None:
        if self._log is not None and self.info.is_main:
            self._log(msg)

    # ---- set-up -------------------------------------------------------------------------------------------
    def _prepare_out(self) -> Path:
        if not self.opts.out:
            raise ConfigError("an output folder is needed (--out DIR)")
        out = Path(self.opts.out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a folder")
        if self.resume:
            if not (out / LAST).exists():
                raise CheckpointError(
                    f"--resume: {out} holds no {LAST} to resume from ({inspect_run(out).describe()}); "
                    "start a new run without --resume"
                )
            self.ckpt = load_train_checkpoint(out / LAST)
        elif not self.overwrite and (state := inspect_run(out)).exists:
            raise SparseSearchError(
                f"{out} already holds {state.describe()}; pass --resume to continue it or --overwrite to start "
                "over (never clobbered silently)"
            )
        return out

    def _merge_resumed_options(self, out: Path) -> None:
        assert self.ckpt is not None
        saved = AdaptOptions.from_mapping(self.ckpt["train"]["args"], f"{out / LAST} (recorded settings)")
        given = self.opts
        merged = saved.replace(out=str(out))
        for name in sorted(self.explicit):
            value = getattr(given, name)
            if name in RUNTIME_FIELDS:
                setattr(merged, name, value)
            elif name == "space":
                continue  # compared by content below
            elif value != getattr(saved, name):
                raise ConfigError(
                    f"--{name.replace('_', '-')} {value!r} differs from {getattr(saved, name)!r} recorded in "
                    f"{out / LAST}; a resumed run keeps its settings (use a new --out to change them)"
                )
        if "space" in self.explicit and given.space:
            merged.space = given.space
        self.opts = merged

    def _load_space(self, out: Path) -> SearchSpace:
        if self.ckpt is not None:
            meta = SupernetMeta.from_dict(self.ckpt["meta"], str(out / LAST))
            saved = space_from_yaml(meta.space_yaml, str(out / LAST))
            if "space" in self.explicit and self.opts.space:
                given = SearchSpace.load(self.opts.space)
                if not same_space(given, saved):
                    raise CheckpointError(
                        f"{out / LAST} is a checkpoint of space {saved.name!r} ({saved.architecture}, "
                        f"{dict(saved.model_kwargs) or 'default size'}), not of --space {self.opts.space} "
                        f"({given.architecture}, {dict(given.model_kwargs) or 'default size'})"
                    )
            return saved
        if not self.opts.space:
            raise ConfigError("a search space is needed (--space FILE, e.g. search_spaces/demo.yaml)")
        return SearchSpace.load(self.opts.space)

    def _datasets(self, space: SearchSpace) -> tuple[Any, Any | None, str, tuple[int, int]]:
        o = self.opts
        if not o.data:
            raise ConfigError("a data set is needed (--data synthetic[:N] or a folder)")
        size = o.image_size or max(space.resolutions, key=lambda r: r[0] * r[1])
        if o.teacher is not None:  # labels, if any, are not used: any data set, images alone included
            train, task = build_dataset(o.data, "train", size, seed=o.data_seed)
            val = build_dataset(o.data, "val", size, seed=o.data_seed)[0] if o.val_samples > 0 else None
            return train, val, task, (int(size[0]), int(size[1]))
        train, task = build_dataset(o.data, "train", size, task=o.task, seed=o.data_seed, num_classes=o.num_classes)
        if task == UNLABELLED:
            raise DataError(
                f"data {o.data} holds images without labels: adapt trains on labels; without labels, distil from the "
                "--init checkpoint with --teacher frozen"
            )
        val = None
        if o.val_samples > 0:
            try:
                classes = getattr(train, "num_classes", None)
                val, _ = build_dataset(o.data, "val", size, task=task, seed=o.data_seed, num_classes=classes)
            except DataError as e:
                raise DataError(f"{e} (validation set; pass --val-samples 0 to train without validation)") from None
        return train, val, task, (int(size[0]), int(size[1]))

    def _train_state(self, step: int, spe: int, total: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": step,
            "epoch": step // spe,
            "batch_in_epoch": step % spe,
            "steps_per_epoch": spe,
            "total_steps": total,
            **self.opt.state_dict(),
            "rng": rngs,
            "args": self.opts.to_dict(),
            "world_size": self.info.world_size,
        }

    def _plan(self, space: SearchSpace) -> _Plan:
        """The data sets and the step counts of the run."""
        o = self.opts
        train_ds, val_ds, task, size = self._datasets(space)
        per_rank = math.ceil(len(train_ds) / self.info.world_size)
        spe = per_rank // o.batch
        if spe < 1:
            raise DataError(
                f"data {o.data} has {len(train_ds)} training items ({per_rank} per process), "
                f"fewer than --batch {o.batch}"
            )
        total = o.steps if o.steps is not None else (o.epochs or DEFAULT_EPOCHS) * spe
        warmup = o.warmup_steps if o.warmup_steps is not None else round(0.05 * total)
        ignore_index = int(getattr(train_ds, "ignore_index", 255))
        classes = int(getattr(train_ds, "num_classes", 0))
        teacher = self._teacher_model(space)
        if teacher is not None:  # the head (and task) the teacher's checkpoint holds
            task, classes = teacher[1].task, teacher[1].num_classes
        return _Plan(
            train_ds,
            val_ds,
            task,
            size,
            classes,
            ignore_index,
            spe,
            total,
            min(warmup, max(0, total - 1)),
        )

    def _build_model(self, space: SearchSpace, plan: _Plan, out: Path) -> tuple[nn.Module, SupernetMeta]:
        """The supernet with its weights (the resumed checkpoint's, --init's, or fresh), on the device."""
        o = self.opts
        torch.manual_seed(o.seed)  # identical on every rank (DDP also broadcasts rank 0's weights)
        model_kwargs: dict[str, Any] = {
            "num_classes": plan.num_classes,
            "head": plan.task if plan.task in ("seg", "cls") else None,
            "drop_path_rate": o.drop_path,
        }
        model = space.create_model(**model_kwargs)
        meta = SupernetMeta.create(
            space,
            model_kwargs,
            task=plan.task,
            num_classes=plan.num_classes,
            data=o.data,
            data_seed=o.data_seed,
            image_size=plan.size,
            ignore_index=plan.ignore_index,
            class_names=list(getattr(plan.train_ds, "class_names", []) or []) if not o.teacher else [],
            total_steps=plan.total,
            extra={"teacher": {"kind": o.teacher, "init": o.init}} if o.teacher else {},
        )
        if self.ckpt is not None:
            saved_meta = SupernetMeta.from_dict(self.ckpt["meta"], str(out / LAST))
            if saved_meta.architecture != meta.architecture or saved_meta.model_kwargs != meta.model_kwargs:
                raise CheckpointError(
                    f"{out / LAST} holds {saved_meta.architecture} {saved_meta.model_kwargs}, but this run builds "
                    f"{meta.architecture} {meta.model_kwargs}"
                )
            load_weights(model, self.ckpt["model"], str(out / LAST))
        elif (teacher := self._teacher_model(space)) is not None:
            load_weights(model, teacher[0].state_dict(), str(o.init))  # the student starts as its teacher
            self.log(f"teacher: {o.init}, frozen ({plan.task}); no labels are used")
        elif o.init:
            report = load_checkpoint(model, o.init)
            heads = sorted({k.split(".")[0] for k in report.initialised_head})
            self.log(
                f"init: {o.init} ({report.converted_from} format{'; new head ' + ', '.join(heads) if heads else ''})"
            )
        model.to(self.info.device)
        torch.manual_seed(int(np.random.SeedSequence([o.seed, self.info.rank, 1]).generate_state(1)[0]))  # drop-path
        return model, meta

    def _teacher_model(self, space: SearchSpace) -> tuple[nn.Module, SupernetMeta] | None:
        """(the frozen teacher, its metadata: task, classes) for ``teacher="frozen"``: the --init checkpoint with the
        head it holds, loaded once; None when the run trains on labels."""
        o = self.opts
        if o.teacher is None:
            return None
        if self._teacher is None:
            if not o.init:
                raise ConfigError(f"--teacher {o.teacher} needs --init CKPT: the pretrained weights that teach")
            teacher, _, meta = load_pretrained(space.architecture, o.init, space, device=self.info.device)
            if o.task is not None and o.task != meta.task:
                raise ConfigError(
                    f"--task {o.task}, but the teacher {o.init} has a {meta.task} head: without labels the student "
                    "learns the teacher's outputs, so it keeps the teacher's head (drop --task)"
                )
            self._teacher = (teacher, meta)
        return self._teacher

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model under torchrun; the model itself otherwise."""
        if not self.info.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        device = self.info.device
        # every parameter takes part in every forward (pruned blocks use the same weights on fewer windows),
        # so the reducer needs no unused-parameter search
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)

    def _optimisation(self, model: nn.Module, plan: _Plan, out: Path) -> int:
        """Set up self.opt (restored, with the RNG states, from a resumed checkpoint); returns the first step."""
        o, info = self.opts, self.info
        self.opt = Optimisation(
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
            return 0
        tr = self.ckpt["train"]
        if int(tr["total_steps"]) != plan.total:
            raise ConfigError(
                f"{out / LAST} was set up for {tr['total_steps']} steps but this run would take {plan.total} "
                "(the data set or world size changed?)"
            )
        self.opt.load_state_dict(tr)
        restore_rng(tr["rng"][info.rank % len(tr["rng"])])
        if int(tr.get("world_size", 1)) != info.world_size:
            self.log(f"resuming a {tr.get('world_size')}-process run on {info.world_size}: the data split differs")
        self.log(f"resuming {out} at step {int(tr['step'])} of {plan.total}")
        return int(tr["step"])

    def _prepare_files(self, out: Path, start: int) -> Any:
        """Rank 0 settles the folder (old run files, metrics cut at `start`, args.yaml); the others wait.
        Returns the TensorBoard writer (None without --tensorboard)."""
        info, writer = self.info, None
        D.barrier(info)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if self.ckpt is None and self.overwrite:
                for name in (LAST, FINAL, METRICS, ARGS):
                    (out / name).unlink(missing_ok=True)
                shutil.rmtree(out / "tb", ignore_errors=True)
            if self.ckpt is not None:
                truncate_metrics(out / METRICS, start)
            text = yaml.safe_dump(self.opts.to_dict(), sort_keys=False)
            atomic_write(out / ARGS, lambda f: f.write(text), binary=False)
            if self.opts.tensorboard:
                writer = _tensorboard_writer(out / "tb")
        D.barrier(info)
        return writer

    # ---- main ---------------------------------------------------------------------------------------------
    def run(self) -> AdaptResult:
        with isolated_rng():  # the run seeds and draws; the caller's RNG streams are left as they were
            return self._run()

    def _run(self) -> AdaptResult:
        info = self.info
        out = self._prepare_out()
        if self.ckpt is not None:
            self._merge_resumed_options(out)
        o = self.opts
        if o.tensorboard and info.is_main:
            _tensorboard_writer(None)  # fail early, with the install hint, if it is missing
        space = self._load_space(out)
        plan = self._plan(space)
        model, meta = self._build_model(space, plan, out)
        train_model = self._wrap(model)
        start = self._optimisation(model, plan, out)
        result = AdaptResult(out, start, plan.total, start >= plan.total, start if self.ckpt is not None else None)
        result.world_size = info.world_size
        if start >= plan.total:
            self.log(f"{out} is already finished ({plan.total} steps); nothing to do")
            return result
        writer = self._prepare_files(out, start)
        sampler = self._sampler(model, space, plan)
        evaluator = self._evaluator(model, space, plan) if plan.val_ds is not None and info.is_main else None
        settings = StepSettings(
            plan.task,
            plan.ignore_index,
            (torch.float16 if info.device.type == "cuda" else torch.bfloat16) if o.amp else None,
            o.distill_weight,
            info.distributed,
            labels=o.teacher is None,
        )
        t = _Training(space, plan, out, model, train_model, meta, sampler, evaluator, writer, settings)
        t_run = time.perf_counter()
        digest = self._train(t, result, start)
        self._finish(t, result, digest, time.perf_counter() - t_run)
        return result

    def _sampler(self, model: nn.Module, space: SearchSpace, plan: _Plan) -> RandomSparsity:
        """Each step's configs and the distillation: in-place (--distill) or from the frozen teacher (--teacher)."""
        o, teacher = self.opts, self._teacher_model(space)
        kind = "cosine" if plan.task == "features" else "kl"
        return RandomSparsity(
            model,
            space,
            o.sampler,
            o.seed,
            distill=o.distill,
            kind=kind if teacher is not None else "kl",
            temperature=o.distill_temperature,
            teacher=teacher[0] if teacher is not None else None,
        )

    def _evaluator(self, model: nn.Module, space: SearchSpace, plan: _Plan) -> Evaluator:
        """Validation: mIoU/top-1 on labels, or without labels the fidelity to the frozen teacher run dense."""
        o, teacher = self.opts, self._teacher_model(space)
        batch, device = max(o.batch, 8), self.info.device
        assert plan.val_ds is not None
        if teacher is None:
            return Evaluator(model, plan.val_ds, o.val_samples, batch=batch, device=device, amp=o.amp, cache=False)
        reference = dense_reference(space)
        return FidelityEvaluator(
            model,
            plan.val_ds,
            o.val_samples,
            reference=reference,
            reference_model=teacher[0],
            batch=batch,
            device=device,
            amp=o.amp,
            cache=False,
        )

    def _train(self, t: _Training, result: AdaptResult, start: int) -> str:
        """Steps start..total (checkpoints, metrics, progress); returns the digest of every config trained."""
        o, info = self.opts, self.info
        digest = hashlib.sha256()
        metrics_file = open(t.out / METRICS, "a") if info.is_main else None  # noqa: SIM115
        bar = None
        if info.is_main and self.progress is not False:
            from ..progress import progress_bar  # noqa: PLC0415

            bar = progress_bar(t.plan.total, initial=start, desc="adapt", unit="step")
        old_handlers = self._install_signal_handlers()
        try:
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
                self._after_step(t, rec, result, metrics_file, bar)
                t0 = time.perf_counter()
        except _StopRequested:
            self.log(f"stopped at step {result.step}; {t.out / LAST} written (continue with --resume)")
            raise KeyboardInterrupt from None
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()
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
        losses, lr = train_step(t.train_model, self.opt, passes, images, targets, t.settings, size, t.sampler)
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

    def _after_step(self, t: _Training, rec: dict[str, Any], result: AdaptResult, metrics_file: Any, bar: Any) -> None:
        """Validation, the metrics line, progress, checkpoints and a requested stop after a step."""
        o, info, step, total = self.opts, self.info, rec["step"], t.plan.total
        result.losses[step] = rec["loss"]
        result.configs[step] = rec["genes"]
        result.step = step
        if o.val_every and step % o.val_every == 0 and step < total:
            if t.evaluator is not None:
                result.val = self._validate(t.evaluator, t.sampler, t.space)
                rec["val"] = {k: v.to_dict() for k, v in result.val.items()}
            D.barrier(info)
        if metrics_file is not None:
            metrics_file.write(json.dumps(rec) + "\n")
            metrics_file.flush()
            if t.writer is not None:
                _tb_log(t.writer, rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.1f}", refresh=False)
                bar.update(1)
        if self.on_step is not None:
            self.on_step(rec)
        if (step % o.ckpt_every == 0 and step < total) or self.stop_flag:
            self._save(t.out, t.model, t.meta, step, t.plan.spe, total, result.val)
        if self.stop_flag:
            raise _StopRequested

    def _finish(self, t: _Training, result: AdaptResult, digest: str, seconds: float) -> None:
        """The end: validation, agreement between ranks, last.pt, supernet.pt and the metrics' end record."""
        info, total = self.info, t.plan.total
        if t.evaluator is not None:
            result.val = self._validate(t.evaluator, t.sampler, t.space)
        result.fingerprints = D.all_gather_object(info, D.fingerprint(t.model))
        result.config_digests = D.all_gather_object(info, digest)
        self._save(t.out, t.model, t.meta, total, t.plan.spe, total, result.val)
        if info.is_main:
            t.meta.step, t.meta.finished = total, True
            t.meta.metrics = {k: v.to_dict() for k, v in result.val.items()}
            save_supernet(t.out / FINAL, t.model, t.meta)
            end = {
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
            with open(t.out / METRICS, "a") as f:
                f.write(json.dumps(end) + "\n")
            if t.writer is not None:
                t.writer.close()
        D.barrier(info)
        if not result.ranks_agree:
            raise SparseSearchError(
                f"the {info.world_size} processes ended with different weights or configs: {result.fingerprints}"
            )
        result.finished = True

    def _validate(self, evaluator: Evaluator, sampler: RandomSparsity, space: SearchSpace) -> dict[str, EvalResult]:
        out = {}
        for role, cfg in (("dense", sampler.densest), ("sparsest", sampler.sparsest)):
            out[role] = evaluator(cfg, input_resolution(space, cfg))
        self.log("val: " + ", ".join(f"{k} {v}" for k, v in out.items()))
        return out

    def _save(
        self,
        out: Path,
        model: nn.Module,
        meta: SupernetMeta,
        step: int,
        spe: int,
        total: int,
        val: dict[str, EvalResult],
    ) -> None:
        rngs = D.all_gather_object(self.info, capture_rng())
        if self.info.is_main:
            meta.step, meta.finished = step, step >= total
            meta.metrics = {k: v.to_dict() for k, v in val.items()}
            save_supernet(out / LAST, model, meta, train_state=self._train_state(step, spe, total, rngs))

    # ---- signals (single process only: DDP ranks could stop at different steps) ------------------------------
    def _install_signal_handlers(self) -> dict[int, Any]:
        if self.info.distributed or threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:
            if self.stop_flag:  # second signal: stop now
                raise KeyboardInterrupt
            self.stop_flag = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):
                pass
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)


def _tensorboard_writer(logdir: Path | None) -> Any:
    """A SummaryWriter (torch's, else tensorboardX's); with ``logdir`` None only checks that one exists."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        try:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]  # noqa: PLC0415
        except ImportError:
            raise SparseSearchError(
                "--tensorboard needs the tensorboard package: pip install tensorboard (or sparsesearch[tensorboard]); "
                "metrics.jsonl is written either way"
            ) from None
    return None if logdir is None else SummaryWriter(str(logdir))


def _tb_log(writer: Any, rec: dict[str, Any]) -> None:
    step = rec["step"]
    writer.add_scalar("train/loss", rec["loss"], step)
    for k, v in rec["losses"].items():
        writer.add_scalar(f"train/loss_{k}", v, step)
    writer.add_scalar("train/lr", rec["lr"], step)
    writer.add_scalar("train/images_per_s", rec["images_per_s"], step)
    for k, v in (rec.get("val") or {}).items():
        writer.add_scalar(f"val/{v['metric']}_{k}", v["value"], step)
