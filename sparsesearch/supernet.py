"""Supernet checkpoints: the weights plus everything needed to rebuild the model, its space and its data.

A supernet file (``supernet.pt`` or a training ``last.pt``) is a ``torch.save`` of a plain dict::

    {
      "format": "sparsesearch.supernet",  # identifies the file
      "version": 1,
      "model": {name: tensor},             # state dict of the SwinTransformer (no DDP prefix)
      "meta": {...},                       # SupernetMeta.to_dict(): architecture, space, model kwargs, data
      "train": {...},                      # only in training checkpoints (see sparsesearch.adapt.checkpoint)
    }

Everything but the tensors is plain Python data, so the file loads with ``torch.load(weights_only=True)``.
:func:`load_supernet` rebuilds ``(model, space, meta)`` from the file alone; ``evolve``, ``export`` and
``eval`` use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .errors import CheckpointError, SpaceError
from .fileio import atomic_torch_save, to_plain
from .space import SearchSpace

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SupernetMeta",
    "save_supernet",
    "load_supernet",
    "read_supernet_file",
    "space_from_yaml",
    "same_space",
    "load_weights",
    "model_from_meta",
    "build_eval_dataset",
]

FORMAT = "sparsesearch.supernet"
FORMAT_VERSION = 1


# ---- the space as data ---------------------------------------------------------------------------------------
def space_from_yaml(text: str, source: str = "<checkpoint>") -> SearchSpace:
    """Parse a space from YAML text (as stored in a supernet checkpoint)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpaceError(f"{source}: the stored search space is not valid YAML: {str(e).splitlines()[0]}") from None
    return SearchSpace(data, source)


def same_space(a: SearchSpace, b: SearchSpace) -> bool:
    """True if two spaces define the same architecture, genes, windows and resolutions (names aside); see
    `SearchSpace.same_as`."""
    return a.same_as(b)


# ---- metadata ------------------------------------------------------------------------------------------------
@dataclass
class SupernetMeta:
    """What a supernet file records besides its weights.

    Attributes:
        architecture: registered model name (``space.architecture``).
        space_yaml: the search space as YAML text (see `SearchSpace.to_dict`).
        model_kwargs: keyword arguments given to ``space.create_model`` (num_classes, head, ...).
        task: "seg" or "cls".
        num_classes: classes of the head (background included for "seg").
        data: the data spec it was trained on ("synthetic[:N]" or a directory).
        data_seed: seed of the data set (fixes the synthetic set's content).
        image_size: (height, width) the model was trained at.
        ignore_index: label value that metrics skip ("seg").
        class_names: names of the classes, when the data set has them.
        step: optimiser steps done; total_steps: steps the run was set up for.
        finished: True once the run reached total_steps.
        metrics: last validation figures, e.g. {"dense": {"metric": "mIoU", "value": 71.2, "n": 64}}.
        extra: free-form, for callers.
    """

    architecture: str
    space_yaml: str
    model_kwargs: dict[str, Any]
    task: str = "seg"
    num_classes: int = 0
    data: str = "synthetic"
    data_seed: int = 0
    image_size: tuple[int, int] = (224, 224)
    ignore_index: int = 255
    class_names: list[str] = field(default_factory=list)
    step: int = 0
    total_steps: int = 0
    finished: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def space(self) -> SearchSpace:
        """The search space, parsed from :attr:`space_yaml`."""
        return space_from_yaml(self.space_yaml)

    def to_dict(self) -> dict[str, Any]:
        d = to_plain(asdict(self))
        d["torch_version"] = str(torch.__version__)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<checkpoint>") -> SupernetMeta:
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source}: 'meta' must be a mapping")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("architecture", "space_yaml", "model_kwargs") if k not in data]
        if missing:
            raise CheckpointError(
                f"{source}: supernet metadata lacks {', '.join(missing)}; was it written by sparsesearch?"
            )
        kw = {k: v for k, v in data.items() if k in known}
        if "image_size" in kw:
            kw["image_size"] = tuple(int(v) for v in kw["image_size"])
        kw["model_kwargs"] = dict(kw["model_kwargs"])
        return cls(**kw)

    @classmethod
    def create(cls, space: SearchSpace, model_kwargs: Mapping[str, Any], **kw: Any) -> SupernetMeta:
        """Metadata for a model built with ``space.create_model(**model_kwargs)``."""
        text = yaml.safe_dump(space.to_dict(), sort_keys=False, default_flow_style=None)
        return cls(space.architecture, text, to_plain(dict(model_kwargs)), **kw)


# ---- files ---------------------------------------------------------------------------------------------------
def read_supernet_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check the container of a supernet/training checkpoint; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"supernet checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: torch raises many types
        reason = _first_reason(e)
        raise CheckpointError(f"cannot read {path} (truncated or not a checkpoint?): {reason}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a sparsesearch supernet checkpoint (write one with `sparsesearch adapt`; "
            "plain timm/Microsoft weights go to --init)"
        )
    if int(obj.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {obj.get('version')}; this sparsesearch reads up to {FORMAT_VERSION}"
        )
    if not isinstance(obj.get("model"), dict) or "meta" not in obj:
        raise CheckpointError(f"{path} lacks its model weights or metadata (damaged file?)")
    return obj


def _first_reason(e: BaseException) -> str:
    """The informative line of a torch.load error (its first line is often boilerplate), ANSI codes removed."""
    import re  # noqa: PLC0415

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return type(e).__name__
    pick = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])
    return pick[:200]


def save_supernet(
    path: str | os.PathLike,
    model: nn.Module,
    meta: SupernetMeta,
    *,
    train_state: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` (unwrapped from DDP if needed) with ``meta`` atomically; ``train_state`` adds the
    optimiser/scheduler/RNG state of a resumable training checkpoint."""
    module = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "meta": meta.to_dict(),
    }
    if train_state is not None:
        obj["train"] = dict(train_state)
    atomic_torch_save(obj, path)


def model_from_meta(meta: SupernetMeta, source: str = "<checkpoint>") -> tuple[nn.Module, SearchSpace]:
    """Build the (randomly initialised) model and space that ``meta`` describes."""
    space = space_from_yaml(meta.space_yaml, source)
    if space.architecture != meta.architecture:
        raise CheckpointError(f"{source}: metadata says {meta.architecture} but its space says {space.architecture}")
    try:
        model = space.create_model(**meta.model_kwargs)
    except TypeError as e:
        raise CheckpointError(
            f"{source}: cannot rebuild {meta.architecture} from its recorded arguments: {e}"
        ) from None
    return model, space


def load_supernet(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, SearchSpace, SupernetMeta]:
    """Rebuild ``(model, space, meta)`` from a supernet (or training) checkpoint.

    The model is in eval mode on ``device`` with no config applied (dense, default windows).
    Raises CheckpointError for a missing, truncated or foreign file, or weights that do not fit.
    """
    obj = read_supernet_file(path)
    meta = SupernetMeta.from_dict(obj["meta"], str(path))
    model, space = model_from_meta(meta, str(path))
    load_weights(model, obj["model"], str(path))
    return model.to(device).eval(), space, meta


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line CheckpointError naming the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        name = getattr(model, "model_name", type(model).__name__)
        if mismatched:
            k = mismatched[0]
            what = f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        elif missing:
            what = f"{len(missing)} missing keys (e.g. {missing[0]})"
        else:
            what = f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"
        raise CheckpointError(f"weights in {source} do not fit {name}: {what}")
    model.load_state_dict(state, strict=True)


def build_eval_dataset(meta: SupernetMeta, data: str | None = None, split: str = "val", image_size: Any = None) -> Any:
    """The ``split`` of the data set a supernet was trained on (or of ``data``), at its training size.

    Raises DataError if the data set cannot be built or its class count differs from the model's.
    """
    from .data import build_dataset  # noqa: PLC0415
    from .errors import DataError  # noqa: PLC0415

    spec = data or meta.data
    size = image_size or tuple(meta.image_size)
    num_classes = meta.num_classes or None
    dataset, task = build_dataset(spec, split, size, task=meta.task, seed=meta.data_seed, num_classes=num_classes)
    n_cls = getattr(dataset, "num_classes", None)
    if n_cls is not None and meta.num_classes and n_cls != meta.num_classes:
        raise DataError(f"data {spec} has {n_cls} classes but the supernet predicts {meta.num_classes}")
    return dataset
