"""Setting a training run up: its folder (new, overwritten or resumed), its settings (a resumed run keeps its
recorded ones), its search space, data and step counts (`Plan`), the frozen teacher, and the model with its
weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import UNLABELLED, build_dataset
from ..errors import CheckpointError, ConfigError, DataError, SparseSearchError
from ..models import load_checkpoint
from ..space import SearchSpace
from ..supernet import SupernetMeta, load_pretrained, load_weights, same_space, space_from_yaml
from . import distributed as D
from .checkpoint import LAST, inspect_run, load_train_checkpoint
from .options import RUNTIME_FIELDS, AdaptOptions

__all__ = ["DEFAULT_EPOCHS", "Plan", "RunSetup"]

DEFAULT_EPOCHS = 10


@dataclass
class Plan:
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


class RunSetup:
    """The settings of one run and what they build.

    Args:
        options: the settings asked for (copied and validated; `opts` holds the ones the run uses).
        info: the process (rank, device, world size).
        resume: continue the run in ``options.out`` (`ckpt`: its last checkpoint, once `prepare_out` ran).
        overwrite: start afresh in a folder that holds a run.
        explicit: the option names the user set (None: those that differ from the defaults).
        log: one-line messages (rank 0 only).
    """

    def __init__(
        self,
        options: AdaptOptions,
        info: D.DistInfo,
        resume: bool,
        overwrite: bool,
        explicit: Collection[str] | None,
        log: Callable[[str], None],
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
        self.log = log
        self.ckpt: dict[str, Any] | None = None
        self._teacher: tuple[nn.Module, SupernetMeta] | None = None

    def prepare_out(self) -> Path:
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

    def merge_resumed_options(self, out: Path) -> None:
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

    def load_space(self, out: Path) -> SearchSpace:
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

    def datasets(self, space: SearchSpace) -> tuple[Any, Any | None, str, tuple[int, int]]:
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

    def plan(self, space: SearchSpace) -> Plan:
        """The data sets and the step counts of the run."""
        o = self.opts
        train_ds, val_ds, task, size = self.datasets(space)
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
        teacher = self.teacher_model(space)
        if teacher is not None:  # the head (and task) the teacher's checkpoint holds
            task, classes = teacher[1].task, teacher[1].num_classes
        return Plan(
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

    def build_model(self, space: SearchSpace, plan: Plan, out: Path) -> tuple[nn.Module, SupernetMeta]:
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
        elif (teacher := self.teacher_model(space)) is not None:
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

    def teacher_model(self, space: SearchSpace) -> tuple[nn.Module, SupernetMeta] | None:
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

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around the model under torchrun; the model itself otherwise."""
        if not self.info.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: PLC0415

        device = self.info.device
        # every parameter takes part in every forward (pruned blocks use the same weights on fewer windows),
        # so the reducer needs no unused-parameter search
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False)
