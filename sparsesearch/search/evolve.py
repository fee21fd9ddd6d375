"""`evolve` end to end: supernet (or pretrained model) + latency table + budget -> searched configs, baselines and
outputs.

A thin layer over :func:`sparsesearch.search.search`: it loads and checks the model and the table, picks the
accuracy (the built-in evaluator: mIoU/top-1 on labels, or fidelity to the dense model without labels; or the
user's `--accuracy module:function`) and calls `search`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SparsityConfig
from ..errors import SparseSearchError
from ..options import option
from .accuracy import EvaluatorAccuracy, import_callable
from .api import search
from .budget import Budget, parse_budget
from .records import Candidate
from .report import Baselines
from .settings import SearchSettings

__all__ = [
    "BUILTIN_ACCURACIES",
    "EvolveOptions",
    "EvolveSummary",
    "SupernetAccuracy",
    "evolve",
    "make_supernet_evaluator",
]

#: the built-in accuracies of `--accuracy`: "labels" (mIoU or top-1, the default) and "fidelity" (no labels)
BUILTIN_ACCURACIES = ("labels", "fidelity")


@dataclass(kw_only=True)
class EvolveOptions(SearchSettings):
    """Everything `sparsesearch evolve` takes: the search's own settings (`SearchSettings`) and what evolve loads.
    Its flags are built from these fields (`cli._base.add_options`); the model source (`--supernet`, or
    `--model`, `--checkpoint`, `--head`, `--space`) and the table check's flags are shared with other commands
    and added by their helpers."""

    table: str = option(help="latency table written by `sparsesearch profile`", required=True)
    latency: str = option(help="budget: 30ms, '30 ms', 0.03s, 30000us, or 0.6x of dense", required=True)
    out: str = option(help="output folder", required=True)
    supernet: str | None = option(None, help="a supernet from `adapt` (flag: cli._base.add_model_source)", cli=False)
    model: str | None = option(None, help="a pretrained model's name (with checkpoint and space)", cli=False)
    checkpoint: str | None = option(None, help="the pretrained model's weights", cli=False)
    head: str = option("auto", help="a pretrained model's head: auto (the checkpoint's) or none", cli=False)
    space: str | None = option(None, help="search space (needed with model; default: the supernet's)", cli=False)
    accuracy: str | None = option(
        None,
        help="labels (default): mIoU or top-1 on labelled --data; fidelity: how closely each config reproduces "
        "the dense model on the same images (no labels needed: a folder of images will do; any head or none); "
        "or your own importable function fn(model, config) -> float, higher is better (the working directory "
        "is importable)",
        metavar="labels|fidelity|MODULE:FUNCTION",
    )
    data: str | None = option(
        None,
        help="validation data: a data folder (for fidelity, images alone will do) or synthetic[:N] (default: the "
        "supernet's training data; needed with --model)",
    )
    batch: int = option(16, help="evaluation batch size")
    allow_foreign_table: bool = option(
        False, help="use a table measured on another device/dtype/torch (what-if studies)"
    )
    table_check: bool = option(
        True, help="an absolute budget first runs the table's speed check (flag: --no-table-check)", cli=False
    )
    rescale_table: bool = option(
        False, help="scale the table's predictions by the check's measured/predicted factor", cli=False
    )


@dataclass
class EvolveSummary:
    """What evolve found, for printing."""

    budget_ms: float
    dense: Candidate
    best: Candidate
    front: list[Candidate]
    baselines: Baselines
    metric: str
    evaluated: int
    new_evaluations: int
    out: Path
    extra: dict[str, Any] = field(default_factory=dict)


class SupernetAccuracy(EvaluatorAccuracy):
    """The built-in accuracy, `fn(model, config) -> percent`, on the first `val_samples` items of the supernet's
    validation data (or `data`): mIoU ("seg") or top-1 ("cls"); with `fidelity`, how closely the config reproduces
    the model's densest config (`sparsesearch.fidelity`; no labels needed, any model head or none).

    A config with a resolution other than the data's runs on resized inputs (predictions scored at the labels' or
    the dense run's size). Built from plain data, so it pickles to Ray workers; the data subset is loaded at the
    first call.
    """

    def __init__(
        self, meta: Any, data: str | None, val_samples: int, batch: int, device: str, fidelity: bool = False
    ) -> None:
        super().__init__()
        self.meta, self.data, self.val_samples, self.batch, self.device = meta, data, val_samples, batch, device
        self.fidelity = fidelity
        self.metric = "fidelity" if fidelity else "mIoU" if meta.task == "seg" else "top1"
        self.native_size = (int(meta.image_size[0]), int(meta.image_size[1]))

    def _make(self, model: Any) -> Any:
        from ..evaluate import Evaluator  # noqa: PLC0415
        from ..supernet import build_eval_dataset  # noqa: PLC0415

        dataset = build_eval_dataset(self.meta, self.data, labelled=not self.fidelity)
        if not self.fidelity:
            return Evaluator(model, dataset, self.val_samples, batch=self.batch, device=self.device)
        from ..fidelity import FidelityEvaluator, dense_reference  # noqa: PLC0415

        reference = dense_reference(self.meta.space)
        return FidelityEvaluator(
            model, dataset, self.val_samples, reference=reference, batch=self.batch, device=self.device
        )


def make_supernet_evaluator(
    supernet: str, data: str | None, val_samples: int, batch: int, device: str
) -> Callable[[SparsityConfig], float]:
    """Load a supernet and its validation subset once; return `fn(config) -> accuracy` (percent), with `.metric`."""
    from ..supernet import load_supernet  # noqa: PLC0415

    model, _, meta = load_supernet(supernet, device=device)
    acc = SupernetAccuracy(meta, data, val_samples, batch, device)

    def fn(config: SparsityConfig) -> float:
        return acc(model, config)

    fn.metric = acc.metric  # type: ignore[attr-defined]
    return fn


def _fingerprint(opts: EvolveOptions, table_meta: dict[str, Any]) -> dict[str, Any]:
    """What the cached accuracies depend on beyond `search`'s own settings: a resumed search must match it."""
    weights = Path(opts.supernet if opts.supernet is not None else str(opts.checkpoint))
    if weights.is_dir():
        weights = weights / "model.safetensors"
    st = os.stat(weights)
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        h.update(f.read(1 << 20))
    return {
        "supernet": os.path.abspath(weights),
        "supernet_size": st.st_size,
        "supernet_head_sha256": h.hexdigest()[:16],
        **({"model": opts.model, "head": opts.head} if opts.model is not None else {}),
        "data": opts.data,
        "val_samples": opts.val_samples,
        "table": os.path.abspath(opts.table),
        "table_date": table_meta.get("date"),
        "latency": opts.latency,
    }


def _load_inputs(opts: EvolveOptions, budget: Budget) -> tuple[Any, Any, tuple[Any, Any, Any]]:
    """The table (checked against this machine and the space; its speed check or None) and the supernet, loaded
    once: (table, speed check, (model, space, meta))."""
    from ..latency import LatencyTable, ensure_table_speed  # noqa: PLC0415
    from ..supernet import load_model_source  # noqa: PLC0415

    table = LatencyTable.load(opts.table)
    if not opts.allow_foreign_table:
        table.check_compatible()
    model, space, meta = load_model_source(
        supernet=opts.supernet,
        model=opts.model,
        checkpoint=opts.checkpoint,
        space=opts.space,
        head=opts.head,
        device=opts.device,
    )
    table.check_space(space)
    res = space.resolutions  # the table may hold more resolutions (for the resize baseline) than the space
    if not opts.rescale_table:  # a budget no config can meet is bad input: say so before timing anything
        budget.resolve(table.dense_latency(res[0]), table.min_latency(res), table.max_latency(res))
    table, speed = ensure_table_speed(
        table,
        None if budget.relative else budget.value,
        check=opts.table_check,
        rescale=opts.rescale_table,
        resolutions=res,
    )
    return table, speed, (model, space, meta)


def evolve(
    opts: EvolveOptions,
    on_generation: Callable[[dict[str, Any]], None] | None = None,
    on_evaluated: Callable[[int], None] | None = None,
) -> EvolveSummary:
    """Run the whole search; raises SparseSearchError subclasses for every input problem."""
    budget = parse_budget(opts.latency)
    builtin = opts.accuracy in (None, *BUILTIN_ACCURACIES)
    accuracy: Any = None if builtin else import_callable(str(opts.accuracy))  # a bad reference fails before any work
    table, speed, (model, space, meta) = _load_inputs(opts, budget)
    if builtin:
        fidelity = opts.accuracy == "fidelity"
        accuracy = SupernetAccuracy(meta, opts.data, opts.val_samples, opts.batch, opts.device, fidelity=fidelity)
        accuracy.prepare(model)  # data problems (no labels, no images) come out before the search starts
    if opts.resume and not opts.overwrite and not Path(opts.out, "search_meta.json").is_file():
        raise SparseSearchError(f"--resume: {opts.out} holds no search (no search_meta.json); start without --resume")
    settings = dataclasses.replace(
        opts,
        workers=max(1, opts.workers),
        progress=on_generation if on_generation is not None else False,
        fingerprint=_fingerprint(opts, table.meta),
        on_evaluated=on_evaluated,
        finalists=max(0, opts.finalists),
        meta={
            "supernet": opts.supernet,
            **({"model": opts.model, "checkpoint": opts.checkpoint} if opts.model is not None else {}),
            "table": opts.table,
            "device": table.meta.get("device"),
            "val_samples": opts.val_samples,
            "table_check": speed.record(opts.rescale_table) if speed else None,
            **({"accuracy_function": opts.accuracy} if not builtin else {}),
        },
    )
    result = search(
        space, latency=table, accuracy=accuracy, budget=budget, model=model, out=opts.out, settings=settings
    )
    return EvolveSummary(
        result.budget_ms,
        result.dense,
        result.best,
        result.pareto,
        result.baselines(),
        result.metric,
        result.evaluated,
        result.new_evaluations,
        Path(opts.out),
        extra={"result": result, **({"table_check": speed} if speed else {})},
    )
