"""`search`: a whole latency-constrained search in one call, scored by the caller's own accuracy function.

    import sparsesearch as ss
    result = ss.search(space, latency=table, accuracy=my_map, budget="0.7x", model=supernet, out="runs/s")
    model.set_config(result.best.config)

Without training or labels (a pretrained checkpoint, a folder of images):

    result = ss.search("search_spaces/sam_b.yaml", model="sam_vit_b.pth", accuracy="fidelity", data="images/",
                       latency=table, budget="0.7x", out="runs/s")

`sparsesearch evolve` is a thin layer over this function (it adds the supernet file, the table checks and the
built-in evaluator).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..config import SparsityConfig
from ..errors import BudgetError, LatencyTableError, SparseSearchError
from ..fileio import atomic_write_text
from ..latency.structure import GenomeCanon
from ..options import with_overrides
from ..space import SearchSpace
from .accuracy import AccuracyCache, AccuracyFn, ConfigScorer, KeyedCache, SerialEvaluator, callable_name, read_jsonl
from .backends import SearchCallback, SearchContext
from .budget import Budget, parse_budget
from .engine import SearchRun, run_search
from .finalists import Finalists
from .records import Candidate
from .report import (
    Baselines,
    _plot,
    best_and_front,
    uniform_resize_baseline,
    uniform_sparsity_baseline,
    write_outputs,
)
from .selection import pick_best
from .settings import SearchSettings

if TYPE_CHECKING:
    from ..latency import LatencyTable

__all__ = ["Candidate", "SearchResult", "search"]

LatencySource = Union["LatencyTable", str, os.PathLike, Callable[[SparsityConfig], float]]

_OUTPUT_FILES = (
    "accuracy_cache.jsonl",
    "resize_cache.jsonl",
    "history.jsonl",
    "search_state.pkl",
    "optuna.journal",
    "search_meta.json",
)


@dataclass
class SearchResult:
    """What `search` found.

    Attributes:
        best: the most accurate config within the budget. pareto: the accuracy/latency front within the budget
            (by latency). uniform_sparsity / uniform_resize: SparseViT's baselines (one sparsity everywhere; the
            dense model at a lower resolution), every level evaluated. dense: the densest config of the space.
        history: one record per generation (best so far, evaluations, seconds), resumed runs included.
        run: every evaluated config (genomes, accuracies, latencies). evaluated / new_evaluations: configs in
            the cache / evaluated by this call.
    """

    best: Candidate
    pareto: list[Candidate]
    uniform_sparsity: list[Candidate]
    uniform_resize: list[Candidate]
    dense: Candidate
    history: list[dict[str, Any]]
    budget_ms: float
    metric: str
    algorithm: str
    space: SearchSpace
    run: SearchRun
    evaluated: int
    new_evaluations: int
    out: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tie: float = 0.0  # accuracies this close counted as equal when `best` was picked

    def _best_of(self, points: list[Candidate]) -> Candidate | None:
        pick = pick_best([p.latency_ms for p in points], [p.accuracy for p in points], self.budget_ms, self.tie)
        return points[pick.index] if pick is not None else None

    @property
    def best_uniform_sparsity(self) -> Candidate | None:
        """The most accurate uniform-sparsity config within the budget (None if none fits)."""
        return self._best_of(self.uniform_sparsity)

    @property
    def best_uniform_resize(self) -> Candidate | None:
        """The most accurate dense model at a lower resolution within the budget (None if none fits)."""
        return self._best_of(self.uniform_resize)

    def baselines(self) -> Baselines:
        return Baselines(list(self.uniform_sparsity), list(self.uniform_resize), self.budget_ms, self.tie)

    def plot(self, path: str | os.PathLike) -> Path:
        """Accuracy against predicted latency: every evaluated config, the front, the baselines, the best (PNG)."""
        path = Path(path)
        _plot(path, self.run, self.pareto, self.best, self.baselines(), self.metric, self.space.name)
        return path


# ---- latency ------------------------------------------------------------------------------------------------------
class _Latency:
    """Predicted latency of genomes, and the range a budget is resolved against, from a table or a function."""

    def __init__(self, source: Any, space: SearchSpace) -> None:
        self.space = space
        self.table = None
        if isinstance(source, (str, os.PathLike)):
            from ..latency import LatencyTable  # noqa: PLC0415

            source = LatencyTable.load(source)
        res = list(space.resolutions)
        if hasattr(source, "predict_many"):  # a LatencyTable
            source.check_space(space)
            self.table = source
            self.dense_ms = float(source.dense_latency(res[0]))
            self.min_ms, self.max_ms = float(source.min_latency(res)), float(source.max_latency(res))
            self.seed_genes = space.encode(source.min_config(res))[None]
            self.resize_resolutions = list(source.resolutions)
            self.dense_at: Callable[[tuple[int, int]], float] = source.dense_latency
            self.name = f"table {source.meta.get('device')} {source.meta.get('date')}"
            return
        if not callable(source):
            raise LatencyTableError(
                f"latency must be a LatencyTable, a table file or a function config -> ms, got {type(source).__name__}"
            )
        self.fn = source
        self.name = callable_name(source)
        self._memo: dict[bytes, float] = {}
        extremes = [space.densest(r) for r in res] + [space.sparsest(r) for r in res]
        X = np.concatenate([np.stack([space.encode(c) for c in extremes]), space.sample_genes(0, n=64)])
        lat = self(X)
        self.dense_ms = float(lat[0])
        self.min_ms, self.max_ms = float(lat.min()), float(lat.max())  # an estimate: the function is a black box
        self.seed_genes = X[int(np.argmin(lat))][None]
        self.resize_resolutions = res
        self.dense_at = lambda r: self._one(space.encode(space.densest(r)))

    def _one(self, genes: np.ndarray) -> float:
        key = np.asarray(genes, dtype=np.int64).tobytes()
        if key not in self._memo:
            cfg = self.space.decode(genes)
            try:
                value = self.fn(cfg)
            except SparseSearchError:
                raise
            except Exception as e:
                raise LatencyTableError(
                    f"the latency function {self.name} raised {type(e).__name__}: {e} "
                    f"(config {json.dumps(cfg.to_dict())})"
                ) from e
            try:
                ms = float(value)
            except (TypeError, ValueError):
                ms = float("nan")
            if not np.isfinite(ms) or ms <= 0 or isinstance(value, bool):
                raise LatencyTableError(
                    f"the latency function {self.name} returned {value!r} for a config: it must "
                    "return positive milliseconds"
                )
            self._memo[key] = ms
        return self._memo[key]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """(n, n_var) genomes -> (n,) ms."""
        X = np.atleast_2d(np.asarray(X, dtype=np.int64))
        if self.table is not None:
            return self.table.predict_many(X, self.space)
        return np.array([self._one(x) for x in X], dtype=np.float64)


def _budget_ms(budget: str | float | Budget, lat: _Latency) -> tuple[Budget, float]:
    if isinstance(budget, Budget):
        b = budget
    elif isinstance(budget, str):
        b = parse_budget(budget)
    elif isinstance(budget, (int, float)) and not isinstance(budget, bool):
        if not budget > 0:
            raise BudgetError(f"latency budget {budget!r} must be positive milliseconds")
        b = Budget(float(budget), relative=False, text=f"{float(budget):g}ms")
    else:
        raise BudgetError(
            f"budget must be milliseconds (a number), '30ms' or a fraction of dense like '0.7x', got {budget!r}"
        )
    return b, b.resolve(lat.dense_ms, lat.min_ms, lat.max_ms)


# ---- model, outputs -----------------------------------------------------------------------------------------------
def _resolve_model_and_space(
    space: SearchSpace | str | os.PathLike | None, model: Any, device: str
) -> tuple[Any, SearchSpace]:
    """The model and space a search runs on: a module as it is, a supernet file (its own space), or pretrained
    weights (any other checkpoint: built for `space`, with the head the weights hold, see `load_pretrained`)."""
    if isinstance(model, (str, os.PathLike)):
        from ..supernet import FORMAT, load_pretrained, load_supernet, same_space  # noqa: PLC0415

        if not _is_supernet_file(model, FORMAT):
            if space is None:
                raise SparseSearchError(f"search: pretrained weights {model} need the space of their model (space=...)")
            user = space if isinstance(space, SearchSpace) else SearchSpace.load(space)
            return load_pretrained(user.architecture, model, user, device=device)[:2]
        model, sn_space, _ = load_supernet(model, device=device)
        if space is None:
            return model, sn_space
        user = space if isinstance(space, SearchSpace) else SearchSpace.load(space)
        if not same_space(user, sn_space):
            raise SparseSearchError(f"space {user.name} is not the space the supernet was trained on ({sn_space.name})")
        return model, user
    if space is None:
        raise SparseSearchError("search needs a space (a SearchSpace or its YAML file), or a supernet file as model")
    return model, space if isinstance(space, SearchSpace) else SearchSpace.load(space)


def _is_supernet_file(path: str | os.PathLike, fmt: str) -> bool:
    """Whether `path` is a supernet checkpoint of `sparsesearch adapt` (not plain weights); False when unreadable
    (loading it as weights then says what is wrong)."""
    import torch  # noqa: PLC0415

    p = Path(path)
    if not p.is_file() or p.suffix == ".safetensors":
        return False
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file: plain weights of another kind, or damaged
        return False
    return isinstance(obj, dict) and obj.get("format") == fmt


def _builtin_accuracy(accuracy: Any, data: Any, space: SearchSpace, val_samples: int, device: str) -> Any:
    """`accuracy="fidelity"` -> a FidelityAccuracy on `data` (needed); a function as it is."""
    if not isinstance(accuracy, str):
        return accuracy
    if accuracy != "fidelity":
        raise SparseSearchError(
            f"accuracy {accuracy!r}: give a function accuracy(model, config) -> float or 'fidelity'"
        )
    if data is None:
        raise SparseSearchError("accuracy='fidelity' needs data=...: a folder of images (labels not needed)")
    from .accuracy import FidelityAccuracy  # noqa: PLC0415

    return FidelityAccuracy(data, space, val_samples, device=device)


def _prepare_out(out: Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool) -> None:
    """Refuse to clobber or to resume a search run with other settings; record the settings."""
    meta_path = out / "search_meta.json"
    if resume:
        if not meta_path.is_file():
            raise SparseSearchError(f"resume: {out} holds no search (no search_meta.json); start without resume")
        old = json.loads(meta_path.read_text())
        diff = [k for k in fingerprint if k not in ("supernet_size",) and old.get(k) != fingerprint[k]]
        if diff:
            raise SparseSearchError(
                f"resume: the search in {out} was run with other settings ({', '.join(diff)}); "
                "use another out or overwrite"
            )
    elif meta_path.exists() and not overwrite:
        raise SparseSearchError(f"{out} already holds a search: resume it (--resume) or start over (--overwrite)")
    elif overwrite:
        for name in _OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(meta_path, json.dumps(fingerprint, indent=1) + "\n")


def _engine_state_exists(out: Path) -> bool:
    """Whether the search checkpointed anything (a search stopped in its first generation has not)."""
    return (out / "search_state.pkl").is_file()


class _Progress(SearchCallback):
    """Collects the generation history and drives a progress bar (`progress=True`) or the caller's function."""

    def __init__(self, progress: bool | Callable[[dict[str, Any]], None], generations: int, algorithm: str) -> None:
        self.progress, self.generations, self.algorithm = progress, generations, algorithm
        self.history: list[dict[str, Any]] = []
        self.bar: Any = None

    def generation(self, ctx: SearchContext, record: dict[str, Any]) -> None:
        self.history.append(dict(record))
        if callable(self.progress):
            self.progress(record)
            return
        if not self.progress:
            return
        if self.bar is None:  # created at the first generation: input errors come out before any bar
            from ..progress import progress_bar  # noqa: PLC0415

            self.bar = progress_bar(self.generations, desc=f"search ({self.algorithm})", unit="gen")
        if record.get("refined"):
            self.bar.set_postfix_str("refined around the best")
            return
        self.bar.n = min(int(record.get("generation", 0)), self.generations)
        post: dict[str, Any] = {"evaluated": record.get("evaluated", 0)}
        if "best_accuracy" in record:
            post.update(best=f"{record['best_accuracy']:.4g}", ms=f"{record['best_latency_ms']:.2f}")
        self.bar.set_postfix(post)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _scorer_factory(model: Any, accuracy: AccuracyFn) -> Callable[[SparsityConfig], float]:
    """Runs in each Ray worker: the model and function arrive pickled."""
    if hasattr(model, "eval"):
        model.eval()
    return ConfigScorer(model, accuracy)


# ---- the call -----------------------------------------------------------------------------------------------------
def search(
    space: SearchSpace | str | os.PathLike | None = None,
    *,
    latency: LatencySource,
    accuracy: AccuracyFn | str,
    budget: str | float | Budget,
    model: Any = None,
    data: Any = None,
    out: str | os.PathLike | None = None,
    settings: SearchSettings | None = None,
    **overrides: Any,
) -> SearchResult:
    """Search `space` for the most accurate config whose predicted latency meets `budget`.

    Args:
        space: a SearchSpace or its YAML file (None: the space stored in a supernet file given as `model`).
        latency: a LatencyTable (or its file) of this space, or a function `config -> ms`.
        accuracy: `accuracy(model, config) -> float`, higher is better; `model` has `config` applied (and is in
            eval mode). Called once per config: results are cached (in `out` when given). An exception stops the
            search with an AccuracyFunctionError naming the config; what was evaluated stays cached for `resume`.
            "fidelity": no labels, fidelity to the dense model on `val_samples` images of `data` (FidelityAccuracy).
        budget: milliseconds (a number or "30ms") or a fraction of the dense latency ("0.7x").
        model: the supernet (a module with `set_config`, or a supernet file of `adapt`), or pretrained weights of the
            space's architecture (`load_pretrained`: no training); None: `accuracy` gets None and applies the config.
        data: the images of `accuracy="fidelity"`.
        out: folder for the cache, checkpoint, history.jsonl, best.json, pareto.json and pareto.png (None: all in
            memory).
        settings: how the search runs (`SearchSettings`; default `SearchSettings()`): algorithm (one of
            ALGORITHMS), population, generations, seed, resume (continue the search in `out`), overwrite (discard
            a previous search in `out`), workers / ray_address (evaluate on N local Ray workers or an existing
            cluster: model and function pickled), progress (a bar, none, or a function called with each
            generation's record), refine, warm_start, flops, metric, val_samples, device, fingerprint (extra
            settings a resumed search must match), meta, on_evaluated, options (the algorithm's own), and:
            tie: accuracies within this margin count as equal and the faster config wins (None: `accuracy`'s own
                noise for a difference, `noise_between(model, densest, sparsest)` (paired: the same images), else
                one figure's `noise(model, densest)`, else 0); the best is picked among everything evaluated
                within the budget, the baselines included, by `selection.pick_best`.
            finalists: when > 0 (needs a LatencyTable), `finalists` of the configs the pick weighs
                (`search.finalists`: the tied, then the rest of the accuracy/latency front, predicted within the
                budget + 10%) are timed on this machine interleaved with the dense config, and the rule is applied
                to their measured latency on the table's scale (recorded in best.json's "pick").
        **overrides: any field of `SearchSettings` by name (``population=12``), replacing the settings' value; an
            unknown name raises SparseSearchError.
    Raises SparseSearchError subclasses: BudgetError, LatencyTableError, AccuracyFunctionError, SpaceError, ...
    """
    s = with_overrides(settings if settings is not None else SearchSettings(), overrides, "search")
    model, space = _resolve_model_and_space(space, model, s.device)
    acc_fn: AccuracyFn = _builtin_accuracy(accuracy, data, space, s.val_samples, s.device)
    lat = _Latency(latency, space)
    b, budget_ms = _budget_ms(budget, lat)
    job = _new_job(space, lat, budget_ms, model, acc_fn, s)
    job.out_dir = Path(out) if out is not None else None
    fp = {"space": space.name, "budget": str(b), "algorithm": s.algorithm, "seed": s.seed, "accuracy": job.scorer.name}
    builtin = (
        {"accuracy": accuracy, "data": str(data), "val_samples": s.val_samples} if isinstance(accuracy, str) else {}
    )
    _prepare(job, {**fp, **builtin, "latency_source": lat.name, **(s.fingerprint or {})}, s.overwrite)
    final = _finalists(lat, space, s.finalists)  # before the search: a function latency source fails at once
    outcome = _execute(job, [final] if final is not None else [])
    metric = s.metric or getattr(acc_fn, "metric", None) or "accuracy"
    report_meta = {"budget": str(b), **(s.meta or {})}
    return _result(job, outcome, metric, report_meta)


def _new_job(
    space: SearchSpace, lat: _Latency, budget_ms: float, model: Any, accuracy: AccuracyFn, settings: SearchSettings
) -> _Job:
    """The job of a search: the model in eval mode, the checked scorer, the tie margin."""
    if hasattr(model, "eval"):
        model.eval()
    scorer = ConfigScorer(model, accuracy)
    tie = _tie_margin(settings.tie, accuracy, model, space)
    return _Job(space, lat, budget_ms, model, accuracy, scorer, tie, settings)


def _prepare(job: _Job, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Set up the out folder (a resumed search must match `fingerprint`); resume needs one."""
    if job.out_dir is not None:
        _prepare_out(job.out_dir, fingerprint, job.settings.resume, overwrite)
    elif job.settings.resume:
        raise SparseSearchError("resume needs the out folder of the search to continue")


def _finalists(lat: _Latency, space: SearchSpace, n: int) -> Finalists | None:
    """How the pick's finalists are re-timed (None for n = 0): the table's model on this machine."""
    if n <= 0:
        return None
    if lat.table is None:
        raise SparseSearchError("finalists: re-timing the pick's finalists needs a latency table, not a function")
    from ..latency import time_configs  # noqa: PLC0415

    # 8 rounds (not the validation's 3): the rounds' spread is what the finalists' guard is made of
    measure = functools.partial(time_configs, lat.table, rounds=8, repeats=4)
    return Finalists(measure, space.densest(), lat.dense_ms, n)


@dataclass
class _Outcome:
    """What `_execute` gives back: the run (its baselines and pick made), the cache, the densest config's
    accuracy, the history."""

    run: SearchRun
    cache: AccuracyCache
    base: Baselines
    dense_acc: float
    history: list[dict[str, Any]]


def _result(job: _Job, o: _Outcome, metric: str, meta: dict[str, Any]) -> SearchResult:
    """The outputs (written to the out folder when there is one) and the SearchResult."""
    model, space, run, base = job.model, job.space, o.run, o.base
    flops = job.settings.flops
    flops_fn = _flops_fn(model, space) if flops and model is not None and hasattr(model, "set_config") else None
    if job.out_dir is not None:
        best_p, front_p = write_outputs(job.out_dir, space, run, base, metric=metric, flops_fn=flops_fn, meta=meta)
    else:
        best_p, front_p, _ = best_and_front(space, run, base, flops_fn)
    dense_cfg = space.densest()
    gflops = flops_fn(dense_cfg) / 1e9 if flops_fn else None
    dense = Candidate(dense_cfg, job.lat.dense_ms, o.dense_acc, gflops, "dense")
    return SearchResult(
        best=best_p,
        pareto=front_p,
        uniform_sparsity=list(base.uniform_sparsity),
        uniform_resize=list(base.uniform_resize),
        dense=dense,
        history=o.history,
        budget_ms=job.budget_ms,
        metric=metric,
        algorithm=job.settings.algorithm,
        space=space,
        run=run,
        evaluated=len(o.cache),
        new_evaluations=o.cache.n_new,
        out=job.out_dir,
        tie=job.tie,
    )


@dataclass
class _Job:
    """A search's settings, resolved: what `_execute` runs."""

    space: SearchSpace
    lat: _Latency
    budget_ms: float
    model: Any
    accuracy: AccuracyFn
    scorer: ConfigScorer
    tie: float
    settings: SearchSettings
    out_dir: Path | None = None


class _BaselineStep(SearchCallback):
    """After the search (and its refinement): SparseViT's baselines at the budget and the densest config's
    accuracy (`_baselines`), put on the run for the pick to weigh."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.base = Baselines()
        self.dense_acc = float("nan")

    def after(self, ctx: SearchContext, run: SearchRun, generations: int) -> bool:
        job = self.job
        self.base, self.dense_acc = _baselines(
            job.space, job.lat, ctx.cache, job.scorer, job.budget_ms, job.tie, job.out_dir
        )
        run.baselines = self.base
        return False  # the run's record stays the search's own: the baselines are reported beside it


def _execute(job: _Job, callbacks: list[SearchCallback]) -> _Outcome:
    """Run the engine (on Ray workers when asked) with the progress, the baselines and `callbacks` (the
    finalists) after the caller's own: the run, the cache, the baselines, the densest config's accuracy and the
    generation history (a resumed search's earlier records included)."""
    out_dir, s = job.out_dir, job.settings
    ray_eval = _ray_evaluator(functools.partial(_scorer_factory, job.model, job.accuracy), s.workers, s.ray_address)
    cache = AccuracyCache(
        job.space,
        ray_eval if ray_eval is not None else SerialEvaluator(job.scorer),
        out_dir / "accuracy_cache.jsonl" if out_dir else None,
        on_evaluated=s.on_evaluated,
        # a table predicts by kept-window counts, so genomes of one model are one config to it; a latency function
        # may tell them apart (the toy problems of the tests do)
        canon=GenomeCanon(job.space) if job.lat.table is not None else None,
    )
    progress = _Progress(s.progress, s.generations, s.algorithm)
    baselines = _BaselineStep(job)
    resume = s.resume and out_dir is not None and _engine_state_exists(out_dir)
    steps = [*s.callbacks, progress, baselines, *callbacks]
    engine = dataclasses.replace(s, resume=resume, tie=job.tie, callbacks=steps)
    try:
        run = run_search(job.space, job.lat, cache, job.budget_ms, engine, out_dir=out_dir, seeds=job.lat.seed_genes)
    finally:
        if ray_eval is not None:
            ray_eval.close()
    history = progress.history
    if out_dir is not None and (out_dir / "history.jsonl").is_file():
        history = read_jsonl(out_dir / "history.jsonl")
    return _Outcome(run, cache, baselines.base, baselines.dense_acc, history)


def _ray_evaluator(factory: Callable[[], Any], workers: int, ray_address: str | None) -> Any:
    """A RayEvaluator over `workers` local workers or a cluster at `ray_address`; None for a serial search."""
    if workers <= 1 and not ray_address:
        return None
    from .parallel import RayEvaluator  # noqa: PLC0415

    return RayEvaluator(factory, workers=max(1, workers), address=ray_address)


def _baselines(
    space: SearchSpace,
    lat: Any,
    cache: AccuracyCache,
    scorer: ConfigScorer,
    budget_ms: float,
    tie: float,
    out_dir: Path | None,
) -> tuple[Baselines, float]:
    """SparseViT's baselines at the budget (uniform sparsity from the cache, uniform resize from its own cache in
    `out_dir`) and the densest config's accuracy."""
    base = Baselines(uniform_sparsity_baseline(space, lat, cache, budget_ms), budget_ms=budget_ms, tie=tie)
    dense_cfg = space.densest()
    resize_acc = KeyedCache(scorer, out_dir / "resize_cache.jsonl" if out_dir else None)

    def accuracy_at(r: tuple[int, int]) -> float:
        """The dense model at resolution r: through the search's cache when r is a resolution of the space (that
        config is a genome the search may have evaluated: each config is evaluated once), else its own cache."""
        if tuple(r) in space.resolutions:
            return float(cache.evaluate(space.encode(space.densest(r))[None])[0])
        return resize_acc(SparsityConfig(dense_cfg.sparsity, dense_cfg.window_size, r))

    base.uniform_resize = uniform_resize_baseline(
        lat.resize_resolutions, lat.dense_at, accuracy_at, dense_cfg, budget_ms
    )
    return base, float(cache.evaluate(space.encode(dense_cfg)[None])[0])


def _flops_fn(model: Any, space: SearchSpace) -> Callable[[SparsityConfig], float]:
    from ..flops import count_flops  # noqa: PLC0415

    res = space.resolutions[0]

    @functools.cache
    def flops_of(key: str) -> float:
        cfg = SparsityConfig.from_dict(json.loads(key))
        return float(count_flops(model, cfg.resolution or res, cfg).total)

    return lambda cfg: flops_of(cfg.key())


def _tie_margin(tie: float | None, accuracy: Any, model: Any, space: SearchSpace) -> float:
    """The margin below which two accuracies count as equal: `tie` if given; else the accuracy function's own
    noise for a *difference* between two configs, `accuracy.noise_between(model, densest, sparsest)` (paired:
    both scored on the same images; the space's two extremes, so configs closer together differ with less noise);
    else the noise of one figure, `accuracy.noise(model, densest)` (unpaired, larger); else 0."""
    if tie is not None:
        if not tie >= 0:
            raise SparseSearchError(f"tie must be a margin >= 0, got {tie!r}")
        return float(tie)
    between = getattr(accuracy, "noise_between", None)
    noise = getattr(accuracy, "noise", None)
    if callable(between):
        value = float(between(model, space.densest(), space.sparsest()))
    elif callable(noise):
        value = float(noise(model, space.densest()))
    else:
        return 0.0
    return value if value == value and value > 0 else 0.0
