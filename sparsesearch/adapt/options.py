"""Settings of a supernet adaptation run, from flags, a YAML config file, or Python.

A config file is a YAML mapping whose keys are the option names (``weight_decay`` or ``weight-decay``);
values given on the command line override it, and everything unset takes the defaults below.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..config import read_structured
from ..errors import ConfigError
from ..options import option
from .sampling import SAMPLERS, TEACHERS

__all__ = ["AdaptOptions", "RUNTIME_FIELDS", "parse_image_size"]

#: options a resumed run may change: they do not affect what is trained.
RUNTIME_FIELDS = frozenset(
    {"out", "init", "workers", "ckpt_every", "tensorboard", "device", "val_every", "val_samples"}
)


def parse_image_size(value: Any) -> tuple[int, int] | None:
    """``64``, ``"64"``, ``"64x96"`` or ``[64, 96]`` -> (height, width); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parts = [int(v) for v in value.lower().replace("*", "x").split("x")]
        except ValueError:
            raise ConfigError(f"image size {value!r} must look like 256 or 256x512") from None
        value = parts if len(parts) > 1 else parts[0]
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"image size {value!r} must be an int >= 16 or [height, width]")


@dataclass
class AdaptOptions:
    """Everything that defines an adaptation run.

    Attributes:
        space: search space YAML. data: "synthetic[:N]" or a data folder. out: run folder.
        task: "seg" or "cls" (None: from the data). init: weights to start from (timm/Microsoft/sparsesearch).
        steps / epochs: run length (at most one; neither: 10 epochs). batch: images per process and step.
        lr, min_lr: AdamW peak and final learning rate (cosine decay after a linear warm-up of
            ``warmup_steps``, default 5 % of the steps). weight_decay: AdamW decay (not on norms, biases and
            position tables). clip_grad: max gradient norm (0: off). drop_path: stochastic depth rate.
        amp: mixed precision (fp16 + GradScaler on CUDA, bf16 on CPU).
        sampler: "uniform", "sandwich" or "dense" (see sparsesearch.adapt.sampling).
        distill: in-place distillation from the densest config; distill_weight: weight of the distillation
            term in a student's loss (the rest is the label loss); distill_temperature: softmax temperature.
        teacher: "frozen": adaptation without labels: the ``init`` checkpoint, frozen and run dense, teaches every
            sampled config (KL of its logits for a head, 1 - cosine of its features for a backbone); labels, if the
            data has any, are not used. Needs ``init``; not with ``distill``.
        seed: training seed (config sampling, data order, initialisation). data_seed: data set seed.
        image_size: (H, W) training size (default: the space's largest resolution).
        num_classes: classes of the synthetic set (folders tell their own).
        val_samples: validation items (first N of the val split; 0: no validation). val_every: validate every
            N steps (0: at the end only). ckpt_every: write last.pt every N steps. workers: loader processes.
        tensorboard: also log to OUT/tb. device: "auto", "cpu" or "cuda".
    """

    space: str | None = option(None, help="search space YAML (e.g. search_spaces/demo.yaml)", metavar="FILE")
    data: str | None = option(
        None,
        help="'synthetic', 'synthetic:N', 'synthetic:N:objects=4-10,coverage=0.3-0.5' (denser scenes) or a data "
        "folder (with --teacher frozen: any folder of images, no labels needed)",
        metavar="DATA",
    )
    out: str | None = option(None, help="run folder", metavar="DIR")
    task: str | None = option(
        None, help="segmentation or classification (default: from the data)", choices=["seg", "cls"]
    )
    init: str | None = option(
        None, help="initial weights (timm/Microsoft .pth/.safetensors or a supernet)", metavar="CKPT"
    )
    steps: int | None = option(None, help="optimiser steps", exclusive="length")
    epochs: int | None = option(None, help="passes over the data (default 10)", exclusive="length")
    batch: int = option(8, help="images per process and step")
    lr: float = option(5e-4, help="peak AdamW learning rate")
    min_lr: float = option(1e-6, help="final learning rate of the cosine decay")
    weight_decay: float = option(0.05, help="AdamW weight decay")
    warmup_steps: int | None = option(None, help="linear warm-up steps (default 5% of the steps)")
    clip_grad: float = option(5.0, help="max gradient norm, 0 = off", metavar="NORM")
    drop_path: float = option(0.0, help="stochastic depth rate", metavar="P")
    amp: bool = option(False, help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    sampler: str = option(
        "uniform",
        help="uniform: one random config per step; sandwich: also the densest and the sparsest; dense: the "
        "densest only (a baseline)",
        choices=list(SAMPLERS),
    )
    distill: bool = option(
        False, help="in-place distillation: the densest config's output is the soft target of the others"
    )
    distill_weight: float = option(0.5, help="weight of the distillation term", metavar="W")
    distill_temperature: float = option(1.0, help="distillation temperature", metavar="T")
    teacher: str | None = option(
        None,
        help="adapt without labels: the --init checkpoint, frozen and run dense, teaches every sampled config "
        "(its logits for a head, its features for a backbone); --data may be images alone",
        choices=list(TEACHERS),
    )
    seed: int = option(0, help="training seed")
    data_seed: int = option(0, help="data set seed")
    image_size: tuple[int, int] | None = option(
        None, help="training size, e.g. 256 or 256x512 (default: the space's)", type=str, metavar="HxW"
    )
    num_classes: int | None = option(None, help="classes of the synthetic set (default 4)")
    val_samples: int = option(64, help="validation items, 0 = none")
    val_every: int = option(0, help="validate every N steps (default: at the end only)")
    ckpt_every: int = option(500, help="write last.pt every N steps")
    workers: int = option(0, help="data loader processes")
    tensorboard: bool = option(False, help="also log to OUT/tb")
    device: str = option("auto", help="auto: cuda if available", choices=["auto", "cpu", "cuda"])

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def normalise_keys(cls, data: Mapping[str, Any], source: str) -> dict[str, Any]:
        """Dashes -> underscores; ConfigError for an unknown key."""
        names = set(cls.field_names())
        out: dict[str, Any] = {}
        for key, value in data.items():
            k = str(key).replace("-", "_")
            if k not in names:
                raise ConfigError(f"{source}: unknown option {key!r}; known: {', '.join(sorted(names))}")
            out[k] = value
        return out

    @classmethod
    def from_file(cls, path: str | Path) -> dict[str, Any]:
        """The options a YAML/JSON config file sets (only those), with keys normalised."""
        data = read_structured(path)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: an adapt config file must be a mapping of option: value")
        return cls.normalise_keys(data, str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "options") -> AdaptOptions:
        """Options from a mapping (unset keys take the defaults), type-checked."""
        opts = cls(**cls.normalise_keys(data, source))
        opts.validate(source)
        return opts

    def replace(self, **changes: Any) -> AdaptOptions:
        return dataclasses.replace(self, **changes)

    # ---- checking ------------------------------------------------------------------------------------------
    def validate(self, source: str = "options") -> None:
        """Coerce types and raise ConfigError (one line, naming the option) for a bad value."""

        def bad(name: str, what: str) -> ConfigError:
            return ConfigError(f"{source}: {name.replace('_', '-')} {what}, got {getattr(self, name)!r}")

        def as_int(name: str, lo: int, allow_none: bool = False) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                elif isinstance(v, str) and v.strip().lstrip("-").isdigit():
                    v = int(v)
                else:
                    raise bad(name, "must be an integer")
            if v < lo:
                raise bad(name, f"must be >= {lo}")
            setattr(self, name, int(v))

        def as_float(name: str, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            v = getattr(self, name)
            try:
                f = float(v) if not isinstance(v, bool) else math.nan
            except (TypeError, ValueError):
                raise bad(name, "must be a number") from None
            if not math.isfinite(f) or f < lo or (lo_open and f == lo) or f > hi:
                raise bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}]")
            setattr(self, name, f)

        def as_bool(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise bad(name, "must be true or false")

        for name in ("space", "data", "out", "init"):
            v = getattr(self, name)
            if v is not None:
                setattr(self, name, str(v))
        if self.task is not None and self.task not in ("seg", "cls"):
            raise bad("task", "must be seg or cls")
        as_int("steps", 1, allow_none=True)
        as_int("epochs", 1, allow_none=True)
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"{source}: give steps or epochs, not both")
        as_int("batch", 1)
        as_float("lr", 0.0, lo_open=True)
        as_float("min_lr", 0.0)
        if self.min_lr > self.lr:
            raise bad("min_lr", f"must not exceed lr ({self.lr})")
        as_float("weight_decay", 0.0)
        as_int("warmup_steps", 0, allow_none=True)
        as_float("clip_grad", 0.0)
        as_float("drop_path", 0.0, 1.0)
        as_bool("amp")
        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"must be one of {', '.join(SAMPLERS)}")
        as_bool("distill")
        as_float("distill_weight", 0.0, 1.0)
        as_float("distill_temperature", 0.0, lo_open=True)
        if self.teacher is not None and self.teacher not in TEACHERS:
            raise bad("teacher", f"must be one of {', '.join(TEACHERS)} (or unset: train on labels)")
        if self.teacher is not None and self.distill:
            raise ConfigError(
                f"{source}: distill (in-place, the densest config teaches) and teacher {self.teacher} (the frozen "
                "init checkpoint teaches) are two teachers: pick one"
            )
        as_int("seed", 0)
        as_int("data_seed", 0)
        self.image_size = parse_image_size(self.image_size)
        as_int("num_classes", 2, allow_none=True)
        as_int("val_samples", 0)
        as_int("val_every", 0)
        as_int("ckpt_every", 1)
        as_int("workers", 0)
        as_bool("tensorboard")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", "must be auto, cpu or cuda")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the content of OUT/args.yaml, usable as a --config-file)."""
        d = dataclasses.asdict(self)
        if d["image_size"] is not None:
            d["image_size"] = list(d["image_size"])
        return d
