"""Supernet checkpoints: the weights plus everything needed to rebuild the model, its space and its data.

A supernet file (``supernet.pt`` or a training ``last.pt``) is a ``torch.save`` of a plain dict::

    {
      "format": "sparsesearch.supernet",  # identifies the file
      "version": 1,
      "model": {name: tensor},             # state dict of the model (no DDP prefix)
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

from .errors import CheckpointError, SpaceError, SparseSearchError
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
    "PRETRAINED_HEADS",
    "checkpoint_head",
    "load_pretrained",
    "load_model_source",
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


def build_eval_dataset(
    meta: SupernetMeta,
    data: str | None = None,
    split: str = "val",
    image_size: Any = None,
    *,
    labelled: bool = True,
) -> Any:
    """The ``split`` of the data set a supernet was trained on (or of ``data``), at its training size.

    ``labelled=False`` (scoring by fidelity): any data set, labels (if any) ignored, an image folder without labels
    included. Raises DataError if no data set is named (a pretrained model records none), if it cannot be built,
    if a labelled metric is asked of data without labels or of a model without a head, or if its class count
    differs from the model's.
    """
    from .data import build_dataset  # noqa: PLC0415
    from .errors import DataError  # noqa: PLC0415

    spec = data or meta.data
    if not spec:
        raise DataError("no data to score on: pass --data DIR (a folder of images; labels are not needed for fidelity)")
    size = image_size or tuple(meta.image_size)
    if labelled and meta.task not in ("seg", "cls"):
        raise DataError(
            f"a model without a head ({meta.architecture} backbone) has no labelled metric: score it by fidelity to "
            "the dense model (--accuracy fidelity)"
        )
    task = meta.task if labelled else None
    num_classes = (meta.num_classes or None) if labelled else None
    dataset, _ = build_dataset(spec, split, size, task=task, seed=meta.data_seed, num_classes=num_classes)
    n_cls = getattr(dataset, "num_classes", None)
    if labelled and n_cls is not None and meta.num_classes and n_cls != meta.num_classes:
        raise DataError(f"data {spec} has {n_cls} classes but the supernet predicts {meta.num_classes}")
    return dataset


# ---- a pretrained model in place of a supernet ---------------------------------------------------------------
#: what `head` of :func:`load_pretrained` takes: "auto" (the head the checkpoint holds, if any) or "none"
PRETRAINED_HEADS = ("auto", "none")


def checkpoint_head(state: Mapping[str, torch.Tensor]) -> tuple[str | None, int]:
    """The task head a checkpoint's weights hold: ("seg", classes) for a segmentation head of ours (`seg_head.*`),
    ("cls", classes) for a classifier (timm `head.fc`, Microsoft `head`), (None, 0) for a backbone alone."""
    for key, value in state.items():
        if key.startswith("seg_head.") and key.endswith("classifier.weight") and value.dim() == 4:
            return "seg", int(value.shape[0])
    for key in ("head.fc.weight", "head.weight"):
        if key in state and state[key].dim() == 2 and state[key].shape[0] > 0:
            return "cls", int(state[key].shape[0])
    return None, 0


def _weights_file(path: Path) -> Path:
    """A checkpoint file; an exported folder (`sparsesearch export`) stands for its model.safetensors."""
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def load_pretrained(
    name: str,
    checkpoint: str | os.PathLike,
    space: SearchSpace | str | os.PathLike,
    *,
    head: str = "auto",
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, SearchSpace, SupernetMeta]:
    """A pretrained model in place of a supernet: ``(model, space, meta)`` as :func:`load_supernet` gives them.

    Args:
        name: the registered model name; it must be the space's architecture.
        checkpoint: timm or Microsoft Swin, timm samvit or original SAM weights, a supernet from
            `sparsesearch adapt`, or an export of `sparsesearch export` (its folder or model.safetensors).
        space: the search space (a SearchSpace or its YAML file); the model is built with its arguments.
        head: "auto": the head the checkpoint holds (a segmentation head of ours, a classifier) with its class
            count, none (a backbone: its features) if it holds none; "none": the backbone alone in any case.
    Returns the model in eval mode on `device` (dense), the space, and metadata that records no data set
    (``meta.data`` is ""; pass data to score on) and ``task`` "seg", "cls" or "features".
    Raises CheckpointError for a missing file, a checkpoint of another family or weights that do not fit.
    """
    from .models import convert_state_dict, list_models, read_state_dict  # noqa: PLC0415

    space = space if isinstance(space, SearchSpace) else SearchSpace.load(space)
    if name not in list_models():
        raise CheckpointError(f"unknown model {name!r}: `sparsesearch models` lists them")
    if name != space.architecture:
        raise CheckpointError(
            f"--model {name} is not the architecture of space {space.name} ({space.architecture}): give a space "
            f"of {name} (search_spaces/ has one per model family)"
        )
    if head not in PRETRAINED_HEADS:
        raise CheckpointError(f"head {head!r}: use one of {', '.join(PRETRAINED_HEADS)}")
    path = _weights_file(Path(checkpoint))
    state = read_state_dict(path)
    task, classes = checkpoint_head(state) if head == "auto" else (None, 0)
    if task is None:
        state = {k: v for k, v in state.items() if not k.startswith(("seg_head.", "head."))}
    model_kwargs: dict[str, Any] = {"head": task, **({"num_classes": classes} if task else {})}
    model = space.create_model(**model_kwargs)
    converted, _ = convert_state_dict(state, model)  # CheckpointError for a checkpoint of another family
    load_weights(model, converted, str(path))
    size = max(space.resolutions, key=lambda r: r[0] * r[1])
    meta = SupernetMeta.create(
        space,
        model_kwargs,
        task=task or "features",
        num_classes=classes,
        data="",
        image_size=(int(size[0]), int(size[1])),
        extra={"pretrained": name, "checkpoint": str(path)},
    )
    return model.to(device).eval(), space, meta


def load_model_source(
    *,
    supernet: str | os.PathLike | None = None,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    space: str | os.PathLike | None = None,
    head: str = "auto",
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, SearchSpace, SupernetMeta]:
    """``(model, space, meta)`` from what a command was given: a supernet (``--supernet``, with an optional
    ``--space`` that must be its own), or a pretrained model (``--model NAME --checkpoint PATH --space FILE``,
    see :func:`load_pretrained`). A SparseSearchError (one line) for a combination that does not make sense."""
    if supernet is not None and model is not None:
        raise SparseSearchError(
            "--supernet and --model name two models: give a supernet from `sparsesearch adapt`, or a pretrained "
            "--model NAME --checkpoint PATH with --space FILE"
        )
    if model is not None:
        if space is None:
            raise SparseSearchError(
                f"--model {model} needs --space FILE: the search space of its architecture (e.g. search_spaces/)"
            )
        if checkpoint is None:
            raise SparseSearchError(f"--model {model} needs --checkpoint PATH: the pretrained weights to search")
        return load_pretrained(model, checkpoint, space, head=head, device=device)
    if checkpoint is not None:
        raise SparseSearchError("--checkpoint goes with --model NAME (and --space FILE); a supernet is --supernet")
    if supernet is None:
        raise SparseSearchError(
            "no model: give --supernet CKPT (from `sparsesearch adapt`) or --model NAME --checkpoint PATH --space FILE"
        )
    if not Path(supernet).is_file():
        raise CheckpointError(f"supernet {supernet} does not exist (train one with `sparsesearch adapt`)")
    net, net_space, meta = load_supernet(supernet, device=device)
    if space is not None and not same_space(SearchSpace.load(space), net_space):
        raise SparseSearchError(f"--space {space} is not the space the supernet was trained on ({net_space.name})")
    return net, net_space, meta
