"""Materialise a config into a plain deployable model, with a model card; `load_exported` rebuilds it.

An exported folder holds:
    model.safetensors   the weights (the supernet's, or fine-tuned for this one config)
    model.json          architecture, model kwargs, task, classes, input size: enough to rebuild it
    config.json         the fixed SparsityConfig
    card.json           parameters, FLOPs (fvcore, per part), predicted and measured latency, accuracy
    model.onnx          optional: dynamic batch axis, checked against torch with ONNX Runtime at batch 1 and 3
    model.int8.onnx     optional (--quantize dynamic): model.onnx with its linear layers (MatMul, Gemm with constant
                        weights) quantised by ONNX Runtime's dynamic quantisation, checked against torch the same way

With ONNX, the card also gives the ONNX Runtime latency (fp32, and int8 when quantised) of the config and of the
dense config beside torch's, and the int8 model's accuracy beside the fp32 one's when the export evaluates labels.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
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
from .options import settings_from

__all__ = [
    "ExportReport",
    "ExportSettings",
    "FinetuneSettings",
    "export_model",
    "load_exported",
    "measure_latency",
    "check_onnx",
    "check_quantize",
    "export_onnx_file",
    "quantize_onnx",
    "OrtModule",
    "QUANTIZE_MODES",
    "INT8_TOLERANCE",
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
    onnx_ms: dict[str, Any] | None = None  # ONNX Runtime latency (fp32, int8; config and dense) beside torch's
    accuracy_int8: dict[str, Any] | None = None  # the int8 ONNX model's accuracy (labels only)
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


#: the ways `--quantize` can quantise the ONNX model
QUANTIZE_MODES = ("dynamic",)
#: the int8 model passes its check when max |int8 - torch| <= INT8_TOLERANCE * max |torch| at every batch: dynamic
#: quantisation rounds each linear layer's weights and input to steps of 1/254 and 1/255 of their ranges, errors
#: that the layers compound (0.004 to 0.02 of the output's range on the demo model, samvit_nano and the tests'
#: model); the margin covers a window whose score the rounding moves across the kept count's threshold. A failed
#: int8 check is a warning of the CLI, not an error: the card gives the int8 accuracy
INT8_TOLERANCE = 0.1
_ONNX_HINT = "pip install 'sparsesearch[onnx]'"


def _onnxruntime(what: str = "--onnx") -> Any:
    """The onnxruntime module; SparseSearchError (one line: how to install it) when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401, PLC0415
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        raise SparseSearchError(f"{what} needs onnx and onnxruntime: {_ONNX_HINT}") from None
    return ort


def check_quantize(onnx: bool, quantize: str | None) -> None:
    """SparseSearchError (one line) unless `quantize` is None or a mode of `QUANTIZE_MODES` asked with `onnx`, and
    ONNX Runtime's quantisation tools import here."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise SparseSearchError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    if not onnx:
        raise SparseSearchError("--quantize quantises the ONNX model: add --onnx")
    _onnxruntime("--quantize")
    try:
        import onnxruntime.quantization  # noqa: F401, PLC0415
    except ImportError as e:
        raise SparseSearchError(f"--quantize needs onnxruntime.quantization ({e}): {_ONNX_HINT}") from None


def export_onnx_file(model: Any, path: Path, example: torch.Tensor) -> None:
    """Write `model` (its config set) to ONNX at `path` (atomically): the blocks on the "export" kernel backend
    (static sizes but the batch, TopK selection), opset 18, input "image" (B, 3, H, W) with a dynamic batch axis
    B, output "logits"; H and W are those of `example` (`latency.runtime.write_onnx`)."""
    from .latency.runtime import write_onnx  # noqa: PLC0415

    tmp = path.with_name(f".{path.name}.tmp")
    write_onnx(model, example, tmp, model, ("image", "logits"), dynamic_batch=True)
    os.replace(tmp, path)


def quantize_onnx(src: Path, dst: Path) -> None:
    """Write `src`'s dynamic int8 quantisation to `dst` (atomically): ONNX Runtime's `quantize_dynamic` of the
    MatMul and Gemm nodes with a constant weight (the linear layers; not attention's activation products), int8
    weights, activations quantised per call."""
    check_quantize(True, "dynamic")
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    tmp = dst.with_name(f".{dst.name}.tmp")
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its advice to pre-process (shape inference) the graph: ours has static shapes
    try:
        quantize_dynamic(
            str(src),
            str(tmp),
            op_types_to_quantize=["MatMul", "Gemm"],
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.disable(previous)
    os.replace(tmp, dst)


def _compare(path: Path, inputs: dict[int, torch.Tensor], refs: dict[int, Any]) -> dict[str, Any]:
    """ONNX Runtime's output of the model at `path` on each batch of `inputs` against torch's `refs` (numpy):
    max |diff| over all and per batch, and max |diff| / max |torch| (inf where a shape differs)."""
    import numpy as np  # noqa: PLC0415

    ort = _onnxruntime()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs, rel = {}, {}
    for b, x in inputs.items():
        out = sess.run(None, {"image": x.numpy()})[0]
        same = out.shape == refs[b].shape
        diffs[b] = float(np.abs(out - refs[b]).max()) if same else float("inf")
        rel[b] = diffs[b] / max(float(np.abs(refs[b]).max()), 1e-12)
    return {
        "file": path.name,
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_by_batch": {str(b): d for b, d in diffs.items()},
        "max_rel_diff": max(rel.values()),
    }


def check_onnx(
    model: Any,
    path: Path,
    resolution: tuple[int, int],
    seed: int = 0,
    batches: tuple[int, ...] = (1, 3),
    quantize: str | None = None,
) -> dict[str, Any]:
    """Export `model` to ONNX (`export_onnx_file`: plain ops, TopK selection, a dynamic batch axis) and compare
    ONNX Runtime's output with torch's (the model as it runs in torch, on its own kernel backend) at each of
    `batches` (the kept-window count is per image, so any batch size runs). With `quantize` ("dynamic") also write
    the int8 model beside it (`model.int8.onnx` for `model.onnx`; `quantize_onnx`) and compare it the same way.

    Returns the report: the file, max |onnxruntime - torch| over all batches and per batch, opset, versions, ok
    (fp32 within 1e-3); with `quantize` an "int8" entry of the same figures, ok within `INT8_TOLERANCE` of the
    output's range.
    """
    ort = _onnxruntime()
    check_quantize(True, quantize)
    g = torch.Generator().manual_seed(seed)
    inputs = {b: torch.randn(b, 3, *resolution, generator=g) for b in batches}
    with torch.inference_mode():
        refs = {b: model(x).numpy() for b, x in inputs.items()}
    export_onnx_file(model, path, inputs[batches[0]])
    report = _compare(path, inputs, refs)
    report.update(
        input=["batch", 3, *resolution],
        dynamic_batch=True,
        opset=18,
        onnxruntime=ort.__version__,
        ok=report["max_abs_diff"] < 1e-3,
    )
    if quantize is not None:
        int8 = path.with_name(path.name.removesuffix(".onnx") + ".int8.onnx")
        quantize_onnx(path, int8)
        q = _compare(int8, inputs, refs)
        report["int8"] = {
            **q,
            "quantize": quantize,
            "tolerance": INT8_TOLERANCE,
            "ok": q["max_rel_diff"] <= INT8_TOLERANCE,
        }
    return report


class OrtModule(nn.Module):
    """An ONNX model in an ONNX Runtime session (`latency.runtime.ort_session`: CPU, all optimisations, no
    spinning) as a module: forward((B, 3, H, W) CPU float32) -> the model's first output as a tensor. Carries
    `head_type` and `num_classes` for the evaluators."""

    def __init__(self, path: Path, threads: int, head_type: str | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        from .latency.runtime import OrtCall, ort_session  # noqa: PLC0415

        self.call = OrtCall(ort_session(path.read_bytes(), threads))
        self.head_type = head_type
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the ONNX model's output, e.g. (B, classes, H, W) logits."""
        return torch.from_numpy(self.call(x.detach().float().cpu())[0])


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
        onnx: also write model.onnx, checked with ONNX Runtime. device: where it runs. measure: time it here (with
            onnx also in ONNX Runtime).
        quantize: with onnx, "dynamic" also writes model.int8.onnx (ONNX Runtime's dynamic int8 quantisation of
            the linear layers); None: no int8 model.
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
    quantize: str | None = None
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
    check_quantize(onnx, s.quantize)
    if onnx:
        _onnxruntime()
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
    statistic = checked[0].statistic if checked else "mean"
    if measure:
        say("measuring latency on this machine")
        _measure(report, net, cfg, dense_cfg, resolution, device, statistic)
    evaluate = data is not None or val_samples is not None
    if evaluate:
        say("evaluating accuracy")
        fidelity = accuracy == "fidelity"
        _evaluate(report, net, meta, cfg, dense_cfg, resolution, data, val_samples, device, fidelity)
    _write_model(out, net, the_space, meta, cfg, resolution)
    if onnx:
        say("exporting ONNX and checking it with ONNX Runtime" + (" (and its int8 model)" if s.quantize else ""))
        report.onnx = check_onnx(net.cpu(), out / "model.onnx", resolution, quantize=s.quantize)
        if measure:
            say("measuring the ONNX model's latency in ONNX Runtime")
            _measure_onnx(report, net, dense_cfg, out, statistic)
        if s.quantize and evaluate and accuracy == "labels":
            say("evaluating the int8 model's accuracy")
            _evaluate_int8(report, net, meta, out / "model.int8.onnx", (data, val_samples))
        net.to(device)
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


def _time_onnx(path: Path, resolution: tuple[int, int], statistic: str) -> float:
    """Milliseconds per call of the ONNX model at `path` in ONNX Runtime (`ort_session`: CPU, all optimisations,
    torch's thread count, no spinning), batch 1, timed as `measure_latency` times torch."""
    from .latency import make_timer  # noqa: PLC0415
    from .latency.runtime import OrtCall, ort_session  # noqa: PLC0415

    call = OrtCall(ort_session(path.read_bytes(), torch.get_num_threads()))
    x = torch.randn(1, 3, *resolution).numpy()
    timer = make_timer("cpu", statistic=statistic)
    return float(timer.measure(lambda: call(x), warmup=3, repeats=10).ms)


def _measure_onnx(report: ExportReport, model: Any, dense_cfg: SparsityConfig, out: Path, statistic: str) -> None:
    """ONNX Runtime latency of the exported files (fp32, and int8 when written) and of the dense config exported
    and quantised the same way (in a temporary folder), into `report.onnx_ms`, beside torch's `measured_ms`."""
    import tempfile  # noqa: PLC0415

    resolution = (int(report.resolution[0]), int(report.resolution[1]))
    onnx = report.onnx or {}
    files = {"fp32": out / "model.onnx"}
    if "int8" in onnx:
        files["int8"] = out / "model.int8.onnx"
    cfg = model.config
    ms: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sparsesearch-export-") as tmp:
        model.set_config(dense_cfg)
        try:
            export_onnx_file(model, Path(tmp) / "dense.onnx", torch.randn(1, 3, *resolution))
        finally:
            model.set_config(cfg)
        dense = {"fp32": Path(tmp) / "dense.onnx"}
        if "int8" in files:
            dense["int8"] = Path(tmp) / "dense.int8.onnx"
            quantize_onnx(dense["fp32"], dense["int8"])
        for kind, path in files.items():
            ms[kind] = _time_onnx(path, resolution, statistic)
            ms[f"{kind}_dense"] = _time_onnx(dense[kind], resolution, statistic)
    from .latency import device_name  # noqa: PLC0415

    ms.update(
        onnxruntime=onnx.get("onnxruntime"),
        measured_on=f"{device_name('cpu')}, ONNX Runtime CPU, {torch.get_num_threads()} threads, batch 1",
        torch_ms=report.measured_ms,
        torch_dense_ms=report.measured_dense_ms,
    )
    report.onnx_ms = ms


def _evaluate_int8(
    report: ExportReport, model: Any, meta: Any, path: Path, what: tuple[str | None, int | None]
) -> None:
    """The labelled accuracy of the int8 ONNX model at `path` in ONNX Runtime, on the data (`what`: data, number of
    items) the fp32 figures came from, into `report.accuracy_int8`."""
    from .evaluate import Evaluator  # noqa: PLC0415
    from .supernet import build_eval_dataset  # noqa: PLC0415

    data, val_samples = what
    dataset = build_eval_dataset(meta, data, labelled=True)
    ort_model = OrtModule(path, torch.get_num_threads(), getattr(model, "head_type", None), meta.num_classes or None)
    res = tuple(report.resolution)
    ev = Evaluator(ort_model, dataset, val_samples, device="cpu")
    report.accuracy_int8 = ev(None, None if res == tuple(meta.image_size) else res).to_dict()


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
