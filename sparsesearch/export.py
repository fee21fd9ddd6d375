"""Materialise a config into a plain deployable model, with a model card; `load_exported` rebuilds it.

An exported folder holds:
    model.safetensors   the weights (the supernet's, or fine-tuned for this one config)
    model.json          architecture, model kwargs, task, classes, input size: enough to rebuild it
    config.json         the fixed SparsityConfig
    card.json           parameters, FLOPs (fvcore, per part), predicted and measured latency, accuracy
    model.onnx          optional: dynamic batch axis, checked against torch with ONNX Runtime at batch 1 and 3
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import SparsityConfig
from .errors import CheckpointError, DataError, SparseSearchError
from .fileio import atomic_write, atomic_write_text
from .models.family import family_of_model
from .options import settings_from

__all__ = [
    "ExportReport",
    "ExportSettings",
    "FinetuneSettings",
    "export_model",
    "load_exported",
    "measure_latency",
    "check_onnx",
    "finetune_config",
]


@dataclass
class ExportReport:
    """The model card (also written as card.json)."""

    architecture: str
    config: dict[str, Any]
    resolution: tuple[int, int]
    parameters: int
    gflops: float
    gflops_dense: float
    flops_parts: dict[str, float]
    measured_ms: float | None = None
    measured_dense_ms: float | None = None
    measured_on: str = ""
    predicted_ms: float | None = None
    predicted_dense_ms: float | None = None
    table: str | None = None
    table_check: dict[str, Any] | None = None  # the table's speed check (factor, rescaled) when it ran
    accuracy: dict[str, Any] | None = None
    accuracy_dense: dict[str, Any] | None = None
    finetune_steps: int = 0
    onnx: dict[str, Any] | None = None
    source: str = ""
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(
        default_factory=lambda: {"torch": torch.__version__, "python": platform.python_version()}
    )


def measure_latency(
    model: nn.Module,
    resolution: tuple[int, int],
    batch: int = 1,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    statistic: str = "mean",
) -> float:
    """Milliseconds per forward of `model` on random input, `repeats` after `warmup`: their trimmed mean, or
    with `statistic` "min" the fastest (as a latency table of fastest samples predicts)."""
    from .latency import make_timer  # noqa: PLC0415

    x = torch.randn(batch, 3, *resolution, device=device)
    timer = make_timer(device, statistic=statistic)
    with torch.inference_mode():
        return float(timer.measure(lambda: model(x), warmup=warmup, repeats=repeats).ms)


def check_onnx(
    model: Any, path: Path, resolution: tuple[int, int], seed: int = 0, batches: tuple[int, ...] = (1, 3)
) -> dict[str, Any]:
    """Export `model` to ONNX (plain ops, TopK selection) with a dynamic batch axis, and compare ONNX Runtime's
    output with torch's at each of `batches` (the kept-window count is per image, so any batch size runs).

    Returns the report: the file, max |onnxruntime - torch| over all batches and per batch, opset, versions, ok.
    """
    try:
        import numpy as np  # noqa: PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise SparseSearchError("--onnx needs onnx and onnxruntime: pip install 'sparsesearch[onnx]'") from None
    import warnings  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    inputs = {b: torch.randn(b, 3, *resolution, generator=g) for b in batches}
    blocks = family_of_model(model).block_modules(model)
    previous = [blk.kernel_backend for blk in blocks]
    model.set_kernel_backend("export")
    try:
        tmp = path.with_name(f".{path.name}.tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (inputs[batches[0]],),
                str(tmp),
                opset_version=18,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        os.replace(tmp, path)
        with torch.inference_mode():
            refs = {b: model(x).numpy() for b, x in inputs.items()}
    finally:
        for blk, backend in zip(blocks, previous):
            blk.kernel_backend = backend
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = {}
    for b, x in inputs.items():
        out = sess.run(None, {"image": x.numpy()})[0]
        diffs[b] = float(np.abs(out - refs[b]).max()) if out.shape == refs[b].shape else float("inf")
    diff = max(diffs.values())
    return {
        "file": path.name,
        "max_abs_diff": diff,
        "max_abs_diff_by_batch": {str(b): d for b, d in diffs.items()},
        "input": ["batch", 3, *resolution],
        "dynamic_batch": True,
        "opset": 18,
        "onnxruntime": ort.__version__,
        "ok": diff < 1e-3,
    }


@dataclass
class FinetuneSettings:
    """How `finetune_config` trains: `steps` of AdamW at peak `lr` (warm-up, cosine decay), `batch` images a step,
    on `device`, seeded by `seed`, on the supernet's training data or `data` (labelled)."""

    steps: int
    lr: float = 1e-4
    batch: int = 8
    device: str = "cpu"
    seed: int = 0
    data: str | None = None


def finetune_config(
    model: Any, meta: Any, config: SparsityConfig, settings: FinetuneSettings | None = None, **overrides: Any
) -> list[float]:
    """Fine-tune `model` under one fixed config on the supernet's training data (or `data`; labelled), with AdamW,
    warm-up and cosine decay, in the supernet trainer's loop (`adapt.loop`); the caller's global RNG states are left
    alone.

    settings: a `FinetuneSettings`; **overrides: its fields by name (``steps=500, lr=1e-4``).
    Returns the loss of each step.
    """
    f = settings_from(FinetuneSettings, settings, overrides, "finetune_config")
    steps, lr, batch, device, seed, data = f.steps, f.lr, f.batch, f.device, f.seed, f.data
    from .adapt.loop import Optimisation, StepSettings, batches, isolated_rng, train_step  # noqa: PLC0415
    from .adapt.sampling import StepConfig  # noqa: PLC0415
    from .data import build_dataset  # noqa: PLC0415

    if meta.task not in ("seg", "cls") or not (data or meta.data):
        raise DataError(
            "fine-tuning trains on labels: it needs a model with a head and labelled --data; adapt a pretrained "
            "model without labels with `sparsesearch adapt --teacher frozen` instead"
        )
    dataset, task = build_dataset(
        data or meta.data,
        "train",
        tuple(meta.image_size),
        task=meta.task,
        seed=meta.data_seed,
        num_classes=meta.num_classes or None,
    )
    spe = len(dataset) // batch
    if spe < 1:
        raise DataError(
            f"fine-tuning: data {meta.data} has {len(dataset)} training items, fewer than a batch of {batch}"
        )
    losses: list[float] = []
    with isolated_rng():
        torch.manual_seed(seed)  # drop-path, if the model has it
        model.to(device).train()
        model.set_config(config)
        opt = Optimisation(
            model, lr=lr, weight_decay=0.05, total_steps=steps, warmup_steps=max(1, steps // 10), min_lr=lr * 0.01
        )
        step = StepSettings(task, meta.ignore_index)
        passes = [StepConfig("config", config)]
        for _, _, (images, targets) in batches(dataset, batch, seed=seed, start=0, total=steps, steps_per_epoch=spe):
            step_losses, _ = train_step(model, opt, passes, images.to(device), targets.to(device), step)
            losses.append(step_losses["config"])
    model.eval()
    return losses


@dataclass
class ExportSettings:
    """How `export_model` builds, checks and describes the exported model.

    Attributes:
        model, checkpoint, space, head: a pretrained model instead of a supernet (`supernet.load_pretrained`;
            `head` "auto" or "none").
        data: evaluate accuracy on this data (default: none, unless val_samples is given: then the supernet's).
        val_samples: number of validation images for the accuracy figures.
        accuracy: "labels" (mIoU or top-1) or "fidelity" (to the dense model, no labels needed).
        table: a latency table (of the same space) for the predicted latency.
        finetune_steps, finetune_lr: fine-tune this one config for N steps on the supernet's training data (or
            `data`) first.
        onnx: also write model.onnx, checked with ONNX Runtime. device: where it runs. measure: time it here.
        progress: called with a line per stage.
        table_check, rescale_table: when `config` is a search's best.json with an absolute budget, the table's
            speed check runs first (`latency.ensure_table_speed`: stops outside +-10%, or rescales the table).
    """

    model: str | None = None
    checkpoint: str | os.PathLike | None = None
    space: str | os.PathLike | None = None
    head: str = "auto"
    data: str | None = None
    val_samples: int | None = None
    accuracy: str = "labels"
    table: str | os.PathLike | None = None
    finetune_steps: int = 0
    finetune_lr: float = 1e-4
    onnx: bool = False
    device: str = "cpu"
    measure: bool = True
    progress: Callable[[str], None] | None = None
    table_check: bool = True
    rescale_table: bool = False


def export_model(
    supernet: str | os.PathLike | None,
    config: SparsityConfig | str | os.PathLike,
    out: str | os.PathLike,
    settings: ExportSettings | None = None,
    **overrides: Any,
) -> ExportReport:
    """Fix `config` in the supernet's model (or a pretrained model's), optionally fine-tune it, and write the
    exported folder.

    Args:
        supernet: a supernet from `sparsesearch adapt`; or None and a pretrained `settings.model` name with its
            `checkpoint` and `space`.
        config: a config, or a config file (e.g. a search's best.json).
        settings: an `ExportSettings` (default: its defaults); **overrides: its fields by name (``table=...,
            onnx=True``); an unknown name raises SparseSearchError.
    """
    s = settings_from(ExportSettings, settings, overrides, "export_model")
    model, checkpoint, space, head, data = s.model, s.checkpoint, s.space, s.head, s.data
    val_samples, accuracy, table, finetune_steps, onnx = s.val_samples, s.accuracy, s.table, s.finetune_steps, s.onnx
    device, measure, progress, rescale_table = s.device, s.measure, s.progress, s.rescale_table
    from .supernet import load_model_source  # noqa: PLC0415

    say = progress or (lambda msg: None)
    net: Any  # a prunable model: set_config, set_kernel_backend
    net, the_space, meta = load_model_source(
        supernet=supernet, model=model, checkpoint=checkpoint, space=space, head=head, device=device
    )
    cfg = config if isinstance(config, SparsityConfig) else SparsityConfig.load(config)
    net.set_config(cfg)  # validates against the model
    r = cfg.resolution or the_space.resolutions[0]
    resolution = (int(r[0]), int(r[1]))
    checked = _checked_table(table, config, s.table_check, rescale_table, say) if table is not None else None
    if finetune_steps > 0:
        say(f"fine-tuning the config for {finetune_steps} steps")
        finetune_config(net, meta, cfg, FinetuneSettings(finetune_steps, s.finetune_lr, device=device, data=data))
        net.set_config(cfg)
    net.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say("counting FLOPs")
    dense_cfg = SparsityConfig([[0.0] * d for d in the_space.depths], cfg.window_size, cfg.resolution)
    source = str(supernet if supernet is not None else checkpoint)
    report = _card(net, the_space.architecture, cfg, dense_cfg, resolution, finetune_steps, source)
    if checked is not None:
        t, speed = checked
        report.table_check = speed.record(rescale_table) if speed else None
        report.table = str(table)
        report.predicted_ms = float(t.predict(cfg))
        report.predicted_dense_ms = float(t.dense_latency(resolution))
    if measure:
        say("measuring latency on this machine")
        _measure(report, net, cfg, dense_cfg, resolution, device, checked[0].statistic if checked else "mean")
    if data is not None or val_samples is not None:
        say("evaluating accuracy")
        fidelity = accuracy == "fidelity"
        _evaluate(report, net, meta, cfg, dense_cfg, resolution, data, val_samples, device, fidelity)
    _write_model(out, net, the_space, meta, cfg, resolution)
    if onnx:
        say("exporting ONNX and checking it with ONNX Runtime")
        report.onnx = check_onnx(net.cpu(), out / "model.onnx", resolution)
    atomic_write_text(out / "card.json", json.dumps(asdict(report), indent=1) + "\n")
    return report


def _card(
    model: Any,
    architecture: str,
    cfg: SparsityConfig,
    dense_cfg: SparsityConfig,
    resolution: tuple[int, int],
    finetune_steps: int,
    source: str,
) -> ExportReport:
    """The model card's static part: parameters and FLOPs (per part) of `cfg`, and of the dense config."""
    from .flops import count_flops  # noqa: PLC0415

    fl = count_flops(model, resolution, cfg)
    fl_dense = count_flops(model, resolution, dense_cfg)
    return ExportReport(
        architecture=architecture,
        config=cfg.to_dict(),
        resolution=resolution,
        parameters=sum(p.numel() for p in model.parameters()),
        gflops=fl.gflops,
        gflops_dense=fl_dense.gflops,
        flops_parts={k: v / 1e9 for k, v in fl.parts.items()},
        finetune_steps=finetune_steps,
        source=source,
    )


def _measure(
    report: ExportReport,
    model: Any,
    cfg: SparsityConfig,
    dense_cfg: SparsityConfig,
    resolution: tuple[int, int],
    device: str,
    statistic: str = "mean",
) -> None:
    """Measured latency of `cfg` and of the dense config on this machine, batch 1 (the model keeps `cfg`), by
    the table's `statistic` when a table predicted them."""
    from .latency import device_name  # noqa: PLC0415

    report.measured_ms = measure_latency(model, resolution, device=device, statistic=statistic)
    model.set_config(dense_cfg)
    report.measured_dense_ms = measure_latency(model, resolution, device=device, statistic=statistic)
    model.set_config(cfg)
    report.measured_on = f"{device_name(device)}, {torch.get_num_threads()} threads, batch 1"


def _evaluate(
    report: ExportReport,
    model: Any,
    meta: Any,
    cfg: SparsityConfig,
    dense_cfg: SparsityConfig,
    resolution: tuple[int, int],
    data: str | None,
    val_samples: int | None,
    device: str,
    fidelity: bool = False,
) -> None:
    """Accuracy of `cfg` and of the dense config on `data` (default: the supernet's validation data): mIoU or
    top-1, or with `fidelity` how closely each reproduces the space's densest config (`sparsesearch.fidelity`)."""
    from .evaluate import Evaluator  # noqa: PLC0415
    from .fidelity import FidelityEvaluator, dense_reference  # noqa: PLC0415
    from .supernet import build_eval_dataset  # noqa: PLC0415

    dataset = build_eval_dataset(meta, data, labelled=not fidelity)
    ev: Evaluator = (
        FidelityEvaluator(model, dataset, val_samples, reference=dense_reference(meta.space), device=device)
        if fidelity
        else Evaluator(model, dataset, val_samples, device=device)
    )
    res = None if resolution == tuple(meta.image_size) else resolution
    report.accuracy = ev(cfg, res).to_dict()
    report.accuracy_dense = ev(dense_cfg, res).to_dict()
    model.set_config(cfg)


def _write_model(
    out: Path, model: Any, space: Any, meta: Any, cfg: SparsityConfig, resolution: tuple[int, int]
) -> None:
    """model.safetensors, model.json (what rebuilds it) and config.json, each written atomically."""
    from safetensors.torch import save  # noqa: PLC0415

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda f: f.write(save(weights)))
    model_doc = {
        "format": "sparsesearch-exported/1",
        "architecture": space.architecture,
        "model_kwargs": {**space.model_args(), **meta.model_kwargs},
        "task": meta.task,
        "num_classes": meta.num_classes,
        "class_names": list(meta.class_names),
        "image_size": list(meta.image_size),
        "resolution": list(resolution),
        "ignore_index": meta.ignore_index,
    }
    atomic_write_text(out / "model.json", json.dumps(model_doc, indent=1) + "\n")
    cfg.save(out / "config.json")


def _checked_table(
    table: str | os.PathLike,
    config: SparsityConfig | str | os.PathLike,
    check: bool,
    rescale: bool,
    say: Callable[[str], None],
) -> tuple[Any, Any]:
    """(the table, its speed check or None): see `latency.ensure_table_speed` (absolute budgets of best.json)."""
    from .latency import LatencyTable, ensure_table_speed  # noqa: PLC0415

    t = LatencyTable.load(table)
    budget_ms = _absolute_budget(config)
    if check and (rescale or budget_ms is not None):
        say("checking the table's speed on this machine")
    return ensure_table_speed(t, budget_ms, check=check, rescale=rescale)


def _absolute_budget(config: SparsityConfig | str | os.PathLike) -> float | None:
    """The absolute budget (ms) a search's best.json was found under; None for a relative budget or a plain config."""
    if isinstance(config, SparsityConfig):
        return None
    try:
        doc = json.loads(Path(config).read_text())
    except (OSError, ValueError):
        return None
    text, ms = (doc.get("budget"), doc.get("budget_ms")) if isinstance(doc, dict) else (None, None)
    if not isinstance(text, str) or text.strip().endswith("x") or not isinstance(ms, (int, float)):
        return None
    return float(ms)


def load_exported(folder: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild an exported model (weights, architecture and fixed config) in eval mode."""
    from safetensors.torch import load_file  # noqa: PLC0415

    from .models import create_model  # noqa: PLC0415

    folder = Path(folder)
    for name in ("model.json", "config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} is not an exported model: {name} is missing (write one with `sparsesearch export`)"
            )
    doc = json.loads((folder / "model.json").read_text())
    if doc.get("format") != "sparsesearch-exported/1":
        raise CheckpointError(f"{folder}/model.json is not a sparsesearch export (format {doc.get('format')!r})")
    model: Any = create_model(doc["architecture"], **doc["model_kwargs"])
    try:
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    except (RuntimeError, OSError) as e:
        raise CheckpointError(
            f"{folder}/model.safetensors does not fit {doc['architecture']}: {str(e).splitlines()[0]}"
        ) from None
    model.set_config(SparsityConfig.load(folder / "config.json"))
    return model.to(device).eval()
