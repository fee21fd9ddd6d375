"""The supernet adaptation loop: every step trains the configs a sampling rule picks, on one set of weights.

    from sparsesearch.adapt import AdaptOptions, adapt
    result = adapt(AdaptOptions(space="search_spaces/demo.yaml", data="synthetic", out="runs/x", steps=200))

One step = one batch. For each of the step's configs (see :class:`~sparsesearch.adapt.sampling.RandomSparsity`)
the batch goes forward and backward and the gradients add up; then one AdamW step and one scheduler step.
With ``distill`` the densest config runs first on the labels and its detached output is the soft target of
the others (KL on per-pixel class distributions for "seg", on logits for "cls").

Determinism: the configs of step t come from (seed, t), the batches from (seed, epoch, position) and the
torch/numpy/python RNGs are checkpointed, so a resumed run repeats the losses of an uninterrupted one
(bit-exact on CPU). Under ``torchrun`` every rank samples the same configs and rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..data import build_dataset, make_loader
from ..errors import CheckpointError, ConfigError, DataError, SparseSearchError
from ..evaluate import EvalResult, Evaluator
from ..fileio import atomic_write
from ..models import load_checkpoint
from ..space import SearchSpace
from ..supernet import SupernetMeta, load_weights, same_space, save_supernet, space_from_yaml
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
from .options import RUNTIME_FIELDS, AdaptOptions
from .sampling import RandomSparsity, StepConfig, input_resolution, kl_distill

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


# ---- losses, optimiser, schedule --------------------------------------------------------------------------------
def seg_or_cls_loss(logits: torch.Tensor, target: torch.Tensor, task: str, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy. seg: logits (B, C, H, W), target (B, H, W) with ``ignore_index``; cls: (B, C), (B,)."""
    logits = logits.float()
    if task == "seg":
        if not bool((target != ignore_index).any()):
            return logits.sum() * 0.0  # every pixel ignored: no signal, but keep the graph (DDP)
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    return F.cross_entropy(logits, target)


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


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms (1-D tensors) and relative position bias tables."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("relative_position_bias_table") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps``, then cosine decay to ``min_lr`` at the end."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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
        train, task = build_dataset(o.data, "train", size, task=o.task, seed=o.data_seed, num_classes=o.num_classes)
        val = None
        if o.val_samples > 0:
            try:
                val, _ = build_dataset(o.data, "val", size, task=task, seed=o.data_seed, num_classes=train.num_classes)
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
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rngs,
            "args": self.opts.to_dict(),
            "world_size": self.info.world_size,
        }

    # ---- main ---------------------------------------------------------------------------------------------
    def run(self) -> AdaptResult:
        info = self.info
        out = self._prepare_out()
        if self.ckpt is not None:
            self._merge_resumed_options(out)
        o = self.opts
        if o.tensorboard and info.is_main:
            _tensorboard_writer(None)  # fail early, with the install hint, if it is missing
        space = self._load_space(out)
        train_ds, val_ds, task, size = self._datasets(space)
        num_classes = int(train_ds.num_classes)
        ignore_index = int(getattr(train_ds, "ignore_index", 255))

        per_rank = math.ceil(len(train_ds) / info.world_size)
        spe = per_rank // o.batch
        if spe < 1:
            raise DataError(
                f"data {o.data} has {len(train_ds)} training items ({per_rank} per process), fewer than --batch {o.batch}"
            )
        total = o.steps if o.steps is not None else (o.epochs or DEFAULT_EPOCHS) * spe
        warmup = o.warmup_steps if o.warmup_steps is not None else round(0.05 * total)
        warmup = min(warmup, max(0, total - 1))

        # model: identical on every rank (same seed; DDP also broadcasts rank 0's weights)
        torch.manual_seed(o.seed)
        model_kwargs = {"num_classes": num_classes, "head": task, "drop_path_rate": o.drop_path}
        model = space.create_model(**model_kwargs)
        meta = SupernetMeta.create(
            space,
            model_kwargs,
            task=task,
            num_classes=num_classes,
            data=o.data,
            data_seed=o.data_seed,
            image_size=size,
            ignore_index=ignore_index,
            class_names=list(getattr(train_ds, "class_names", []) or []),
            total_steps=total,
        )
        if self.ckpt is not None:
            saved_meta = SupernetMeta.from_dict(self.ckpt["meta"], str(out / LAST))
            if saved_meta.architecture != meta.architecture or saved_meta.model_kwargs != meta.model_kwargs:
                raise CheckpointError(
                    f"{out / LAST} holds {saved_meta.architecture} {saved_meta.model_kwargs}, but this run builds "
                    f"{meta.architecture} {meta.model_kwargs}"
                )
            load_weights(model, self.ckpt["model"], str(out / LAST))
        elif o.init:
            report = load_checkpoint(model, o.init)
            extra = (
                f"; new head {', '.join(sorted({k.split('.')[0] for k in report.initialised_head}))}"
                if report.initialised_head
                else ""
            )
            self.log(f"init: {o.init} ({report.converted_from} format{extra})")
        device = info.device
        model.to(device)
        torch.manual_seed(int(np.random.SeedSequence([o.seed, info.rank, 1]).generate_state(1)[0]))

        train_model: nn.Module = model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

            # every parameter takes part in every forward (pruned blocks use the same weights on fewer windows),
            # so the reducer needs no unused-parameter search
            train_model = DDP(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=False,
            )

        self.optimizer = build_optimizer(model, o.lr, o.weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, total, warmup, o.lr, o.min_lr)
        use_scaler = o.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

        start = 0
        if self.ckpt is not None:
            tr = self.ckpt["train"]
            start = int(tr["step"])
            if int(tr["total_steps"]) != total:
                raise ConfigError(
                    f"{out / LAST} was set up for {tr['total_steps']} steps but this run would take {total} "
                    "(the data set or world size changed?)"
                )
            self.optimizer.load_state_dict(tr["optimizer"])
            self.scheduler.load_state_dict(tr["scheduler"])
            if self.scaler is not None and tr.get("scaler"):
                self.scaler.load_state_dict(tr["scaler"])
            rngs = tr["rng"]
            restore_rng(rngs[info.rank % len(rngs)])
            if int(tr.get("world_size", 1)) != info.world_size:
                self.log(f"resuming a {tr.get('world_size')}-process run on {info.world_size}: the data split differs")
            self.log(f"resuming {out} at step {start} of {total}")

        result = AdaptResult(out, start, total, start >= total, start if self.ckpt is not None else None)
        result.world_size = info.world_size
        if start >= total:
            self.log(f"{out} is already finished ({total} steps); nothing to do")
            return result

        # files (rank 0); the others wait until the folder is settled
        D.barrier(info)
        writer = None
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
            if o.tensorboard:
                writer = _tensorboard_writer(out / "tb")
        D.barrier(info)

        sampler = RandomSparsity(model, space, o.sampler, o.seed, distill=o.distill, temperature=o.distill_temperature)
        evaluator = None
        if val_ds is not None and info.is_main:
            evaluator = Evaluator(
                model, val_ds, o.val_samples, batch=max(o.batch, 8), device=device, amp=o.amp, cache=False
            )

        digest = hashlib.sha256()
        metrics_file = open(out / METRICS, "a") if info.is_main else None  # noqa: SIM115
        bar = None
        if info.is_main and self.progress is not False:
            from ..progress import progress_bar  # noqa: PLC0415

            bar = progress_bar(total, initial=start, desc="adapt", unit="step")
        old_handlers = self._install_signal_handlers()
        t_run = time.perf_counter()
        try:
            loader_iter: Iterator[Any] | None = None
            loader_epoch = -1
            train_model.train()
            for step in range(start, total):
                epoch, within = divmod(step, spe)
                if loader_iter is None or epoch != loader_epoch:
                    loader = make_loader(
                        train_ds,
                        o.batch,
                        shuffle=True,
                        seed=o.seed,
                        workers=o.workers,
                        drop_last=True,
                        epoch=epoch,
                        skip_batches=within,
                        rank=info.rank,
                        world_size=info.world_size,
                        pin_memory=device.type == "cuda",
                    )
                    loader_iter, loader_epoch = iter(loader), epoch
                t0 = time.perf_counter()
                images, targets = next(loader_iter)
                images = images.to(device, non_blocking=True)
                targets = torch.as_tensor(targets).to(device, non_blocking=True)
                passes = sampler.configs(step)
                losses = self._step(train_model, model, sampler, passes, images, targets, task, ignore_index, amp_dtype)
                for p in passes:
                    digest.update(p.config.key().encode())
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                mean_losses = D.all_reduce_mean(info, torch.tensor(list(losses.values()), dtype=torch.float64))
                dt = time.perf_counter() - t0
                sampled = passes[-1].config
                rec: dict[str, Any] = {
                    "step": step + 1,
                    "epoch": epoch,
                    "loss": float(mean_losses.mean()),
                    "losses": {k: float(v) for k, v in zip(losses, mean_losses.tolist())},
                    "lr": lr,
                    "images_per_s": o.batch * info.world_size / dt,
                    "sparsity": round(sampled.mean_sparsity(), 6),
                    "genes": space.encode(sampled).tolist(),
                }
                result.losses[step + 1] = rec["loss"]
                result.configs[step + 1] = rec["genes"]
                result.step = step + 1
                if o.val_every and (step + 1) % o.val_every == 0 and step + 1 < total:
                    if evaluator is not None:
                        result.val = self._validate(evaluator, sampler, space)
                        rec["val"] = {k: v.to_dict() for k, v in result.val.items()}
                    D.barrier(info)
                if info.is_main:
                    assert metrics_file is not None
                    metrics_file.write(json.dumps(rec) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        _tb_log(writer, rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.1f}", refresh=False)
                        bar.update(1)
                if self.on_step is not None:
                    self.on_step(rec)
                if (step + 1) % o.ckpt_every == 0 and step + 1 < total:
                    self._save(out, model, meta, step + 1, spe, total, result.val)
                if self.stop_flag:
                    self._save(out, model, meta, step + 1, spe, total, result.val)
                    raise _StopRequested
        except _StopRequested:
            self.log(f"stopped at step {result.step}; {out / LAST} written (continue with --resume)")
            raise KeyboardInterrupt from None
        finally:
            self._restore_signal_handlers(old_handlers)
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                metrics_file.close()

        # the end: validation, agreement between ranks, final files
        if evaluator is not None:
            result.val = self._validate(evaluator, sampler, space)
        result.fingerprints = D.all_gather_object(info, D.fingerprint(model))
        result.config_digests = D.all_gather_object(info, digest.hexdigest()[:16])
        self._save(out, model, meta, total, spe, total, result.val)
        if info.is_main:
            meta.step, meta.finished = total, True
            meta.metrics = {k: v.to_dict() for k, v in result.val.items()}
            save_supernet(out / FINAL, model, meta)
            end = {
                "event": "end",
                "step": total,
                "seconds": round(time.perf_counter() - t_run, 3),
                "val": meta.metrics,
                "world_size": info.world_size,
                "process_group": D.backend(info),
                "ranks_agree": result.ranks_agree,
                "fingerprints": result.fingerprints,
                "config_digests": result.config_digests,
            }
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(end) + "\n")
            if writer is not None:
                writer.close()
        D.barrier(info)
        if not result.ranks_agree:
            raise SparseSearchError(
                f"the {info.world_size} processes ended with different weights or configs: {result.fingerprints}"
            )
        result.finished = True
        return result

    def _step(
        self,
        train_model: nn.Module,
        model: nn.Module,
        rs: RandomSparsity,
        passes: list[StepConfig],
        images: torch.Tensor,
        targets: torch.Tensor,
        task: str,
        ignore_index: int,
        amp_dtype: torch.dtype,
    ) -> dict[str, float]:
        """Forward/backward every pass (gradients add up; DDP syncs on the last), then one optimiser step."""
        o = self.opts
        device = images.device
        space = rs.space
        losses: dict[str, float] = {}
        distributed = self.info.distributed
        for i, p in enumerate(passes):
            x, y = images, targets
            res = input_resolution(space, p.config)
            if res is not None and tuple(x.shape[-2:]) != res:
                x = F.interpolate(x, size=res, mode="bilinear", align_corners=False)
                if task == "seg":
                    y = F.interpolate(y[:, None].float(), size=res, mode="nearest")[:, 0].long()
            sync = not distributed or i == len(passes) - 1
            ctx = contextlib.nullcontext() if sync else train_model.no_sync()  # type: ignore[operator]
            amp = torch.autocast(device.type, dtype=amp_dtype) if o.amp else contextlib.nullcontext()
            with ctx:
                with amp:
                    logits = train_model(x, config=p.config)
                label_loss = seg_or_cls_loss(logits, y, task, ignore_index)
                if rs.teacher is not None and not p.teacher:
                    kd = rs.distill_loss(logits, mask=(y != ignore_index) if task == "seg" else None)
                    loss = (1.0 - o.distill_weight) * label_loss + o.distill_weight * kd
                else:
                    loss = label_loss
                if p.teacher:
                    rs.set_teacher(logits)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            losses[p.role] = float(loss.detach())
        if o.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses

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
