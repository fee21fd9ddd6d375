"""LatencyTable: measured parts of a search space's model on one device, and fast latency prediction.

Prediction is the sum of the parts a config runs: the fixed parts at its resolution (patch embedding, patch
merging, final norm, head) and one entry per block at the block's stage, window size, variant (the model
family's key for blocks that cost alike: e.g. a shifted window block, a global block) and kept-window count;
then the table's back-to-back correction, `offset_ms + scale * sum` (fitted by the profiler on whole-model runs;
identity when absent); a table rescaled to another machine's speed (`rescaled`,
`meta["rescaled"]["factor"]`) multiplies all of it by that factor. Counts between two measured ones are
interpolated linearly (tables profiled on a grid); the dense count is never interpolated.

File format (JSON, written by `sparsesearch profile`)::

    {"format": "sparsesearch.latency_table", "version": 1,
     "meta": {device, device_type, device_slug, driver, cuda, torch, triton, numpy, python, host_cpu,
              platform, kernel_backend, code_hash, threads, dtype, batch, resolutions, head, num_classes,
              warmup, repeats, rounds, trim, statistic, timer, clock, flush_bytes, in_model, calibration,
              runtime ("torch" when absent, or "onnxruntime"), runtime_version,
              date, duration_s, waited_s, busy_measurements, space: {name, architecture, source, hash}, ...},
     "space": {the search space as YAML would hold it, with the table's resolutions},
     "tables": [{"resolution": [H, W],
                 "fixed": {"patch_embed": FIGURE, "layers.1.downsample": FIGURE, ..., "norm": FIGURE,
                           "head": FIGURE},
                 "blocks": [{"stage", "window", "variant", "H", "W", "dim", "heads", "num_windows",
                             "points": [{"k": kept windows, **FIGURE}, ...]}, ...],
                 "correction": {"offset_ms", "scale", "method", "calibration": [...]}}]}

A FIGURE is {"ms" (what predictions use), "spread", "median", "min", "n", "rejected", "source",
"isolated": {...}, "in_model": {...}}: ms/spread/median/min in milliseconds, n samples, `source` says whether
ms is the in-model time or the isolated time scaled by the kind's in-model/isolated ratio.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import SparsityConfig
from ..errors import LatencyTableError, SparseSearchError, SparseSearchWarning
from ..fileio import atomic_write_text
from ..ops import keep_count
from ..space import SearchSpace
from .env import DTYPES, device_name, fingerprint, fingerprint_diff
from .measure import Stat
from .runtime import EXPORT_FORM, INSTALL_HINT, check_runtime, installed_version, table_runtime
from .structure import BlockShape, res_key, space_family, space_hash

__all__ = ["LatencyTable", "KindTable", "FORMAT", "VERSION", "TableMachineWarning", "machine_note"]

FORMAT = "sparsesearch.latency_table"
VERSION = 1


class TableMachineWarning(SparseSearchWarning):
    """A latency table was measured on other hardware than this machine's (or does not say which)."""


def machine_note(meta: dict[str, Any], source: str) -> str | None:
    """One line saying how the machine a table was measured on differs from this one (None: the same hardware).

    Compares the table's `meta["fingerprint"]` with `fingerprint()` of this machine (its CUDA device for a CUDA
    table); a table without a fingerprint gets a note that its machine is unknown.
    """
    fp = meta.get("fingerprint")
    check = f"run `sparsesearch latency check --table {source}` before trusting its absolute times"
    if not isinstance(fp, dict):
        return f"{source} records no hardware fingerprint (profiled by an older sparsesearch): {check}"
    dev = "cuda" if meta.get("device_type") == "cuda" and torch.cuda.is_available() else "cpu"
    diff = fingerprint_diff(fp, fingerprint(dev))
    if not diff:
        return None
    return f"{source} was measured on other hardware ({'; '.join(diff)}): {check}, or profile this machine"


_REQUIRED_META = ("device", "device_type", "dtype", "batch", "threads", "torch", "resolutions", "space")


def _stored_variant(d: dict[str, Any]) -> str:
    """A block entry's variant; tables written before every entry recorded one stored only a `shifted` flag for
    the two variants of shifted-window models ("regular", "shifted")."""
    if d.get("variant"):
        return str(d["variant"])
    return "shifted" if bool(d["shifted"]) else "regular"


@dataclass(frozen=True)
class KindTable(BlockShape):
    """Measured latency of one block kind (its shape, `BlockShape`) as a function of its kept-window count.

    `ks` are ascending; `ks[-1] == num_windows` is the dense block. Counts strictly between two measured
    pruned counts are interpolated linearly; the dense count is never interpolated (it runs another path).
    `stats` are the figures predictions use; `details` keep, per point, how they were obtained (the isolated
    and in-model measurements, see `Profiler`).
    """

    num_windows: int
    ks: tuple[int, ...]
    stats: tuple[Stat, ...]
    details: tuple[dict[str, Any], ...] = ()

    @property
    def ms(self) -> np.ndarray:
        return np.array([s.ms for s in self.stats])

    def latency(self, k: int) -> float:
        """Milliseconds of this block keeping k windows per image."""
        ks = self.ks
        i = int(np.searchsorted(ks, k))
        if i < len(ks) and ks[i] == k:
            return self.stats[i].ms
        pruned = ks[:-1] if ks[-1] == self.num_windows else ks
        if not pruned or k < pruned[0] or k > pruned[-1]:
            raise LatencyTableError(
                f"block stage {self.stage}, window {self.window} {self.variant} at "
                f"{self.H}x{self.W}: {k} kept windows is outside the measured counts {list(ks)}; "
                "profile the space that produces it"
            )
        lo, hi = ks[i - 1], ks[i]
        t = (k - lo) / (hi - lo)
        return (1.0 - t) * self.stats[i - 1].ms + t * self.stats[i].ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "window": self.window,
            "variant": self.variant,
            "H": self.H,
            "W": self.W,
            "dim": self.dim,
            "heads": self.heads,
            "num_windows": self.num_windows,
            "points": [
                {"k": k, **s.to_dict(), **(self.details[i] if self.details else {})}
                for i, (k, s) in enumerate(zip(self.ks, self.stats))
            ],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> KindTable:
        if not isinstance(d, dict):
            raise LatencyTableError(f"{where}: a block entry must be a mapping")
        try:
            points = d["points"]
            if not isinstance(points, list) or not points:
                raise LatencyTableError(f"{where}: 'points' must be a non-empty list")
            pairs = sorted(((int(p["k"]), Stat.from_dict(p), _details(p)) for p in points), key=lambda t: t[0])
            kt = cls(
                int(d["stage"]),
                int(d["window"]),
                _stored_variant(d),
                int(d["H"]),
                int(d["W"]),
                int(d["dim"]),
                int(d["heads"]),
                int(d["num_windows"]),
                tuple(k for k, _, _ in pairs),
                tuple(s for _, s, _ in pairs),
                tuple(d for _, _, d in pairs) if any(d for _, _, d in pairs) else (),
            )
        except LatencyTableError as e:
            raise LatencyTableError(f"{where}: {e}" if where not in str(e) else str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise LatencyTableError(f"{where}: a block entry is missing or has a bad field ({e})") from None
        if len(set(kt.ks)) != len(kt.ks) or kt.ks[0] < 1 or kt.ks[-1] > kt.num_windows:
            raise LatencyTableError(f"{where}: kept counts {list(kt.ks)} must be distinct and in [1, {kt.num_windows}]")
        return kt


_STAT_KEYS = {"k", "ms", "spread", "median", "min", "n", "rejected", "rounds"}


def _details(point: dict[str, Any]) -> dict[str, Any]:
    """The keys of a point or fixed part beyond its figures (kept verbatim for a round trip)."""
    return {k: v for k, v in point.items() if k not in _STAT_KEYS}


@dataclass
class ResolutionTable:
    """Everything measured at one input resolution."""

    resolution: tuple[int, int]
    fixed: dict[str, Stat]
    kinds: dict[tuple[int, int, str], KindTable]  # (stage, window, variant) -> entries
    correction: dict[str, Any]
    fixed_details: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fixed_ms(self) -> float:
        return float(sum(s.ms for s in self.fixed.values()))

    @property
    def offset_ms(self) -> float:
        """Additive term of the back-to-back correction (ms)."""
        return float(self.correction.get("offset_ms", 0.0))

    @property
    def scale(self) -> float:
        """Multiplicative term of the back-to-back correction."""
        return float(self.correction.get("scale", 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": list(self.resolution),
            "fixed": {name: {**s.to_dict(), **self.fixed_details.get(name, {})} for name, s in self.fixed.items()},
            "blocks": [self.kinds[key].to_dict() for key in sorted(self.kinds)],
            "correction": dict(self.correction),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> ResolutionTable:
        if not isinstance(d, dict) or not {"resolution", "fixed", "blocks"} <= set(d):
            raise LatencyTableError(f"{where}: each entry of 'tables' needs resolution, fixed and blocks")
        res = d["resolution"]
        if not (isinstance(res, list) and len(res) == 2 and all(isinstance(v, int) and v > 0 for v in res)):
            raise LatencyTableError(f"{where}: resolution must be [height, width], got {res!r}")
        where = f"{where} {res_key(tuple(res))}"
        if not isinstance(d["fixed"], dict) or not isinstance(d["blocks"], list):
            raise LatencyTableError(f"{where}: 'fixed' must be a mapping and 'blocks' a list")
        try:
            fixed = {str(k): Stat.from_dict(v) for k, v in d["fixed"].items()}
        except LatencyTableError as e:
            raise LatencyTableError(f"{where} fixed parts: {e}") from None
        fixed_details = {str(k): _details(v) for k, v in d["fixed"].items() if _details(v)}
        kinds: dict[tuple[int, int, str], KindTable] = {}
        for i, b in enumerate(d["blocks"]):
            kt = KindTable.from_dict(b, f"{where} blocks[{i}]")
            kinds[(kt.stage, kt.window, kt.variant)] = kt
        correction = d.get("correction") or {}
        if not isinstance(correction, dict) or not all(
            isinstance(correction.get(k, 0.0), (int, float)) and not isinstance(correction.get(k, 0.0), bool)
            for k in ("offset_ms", "scale")
        ):
            raise LatencyTableError(f"{where}: 'correction' must be a mapping with numeric offset_ms and scale")
        return cls((int(res[0]), int(res[1])), fixed, kinds, correction, fixed_details)


class LatencyTable:
    """Latency lookup table of one search space on one device, dtype, batch size and thread count.

        >>> table = LatencyTable.load("latency_tables/amd-epyc-fb99fb63/demo_256x256-224x224-192x192_fp32_b1.json")
        >>> table.predict(table.space.uniform(0.5))           # milliseconds
        >>> table.predict_many(table.space.sample_genes(0, 100_000))

    Attributes:
        meta: how the table was measured (device, driver, versions, threads, dtype, batch, resolutions,
            warm-up and repeat counts, date, space name and hash).
        space: the search space it was measured for, with the table's resolutions.
    """

    def __init__(
        self, meta: dict[str, Any], space: dict[str, Any], tables: Sequence[ResolutionTable], source: str = "<table>"
    ) -> None:
        self.source = source
        self.meta = dict(meta)
        self._space_data = dict(space)
        try:
            self.space = SearchSpace(dict(space), f"{source} (space)")
        except SparseSearchError as e:
            raise LatencyTableError(f"{source}: its search space is invalid: {e}") from None
        self._tables = list(tables)
        self._by_res = {t.resolution: t for t in self._tables}
        if tuple(t.resolution for t in self._tables) != self.space.resolutions:
            raise LatencyTableError(f"{source}: the space's resolutions do not match the measured ones")
        self._lookup: tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]] | None = None
        rescaled = self.meta.get("rescaled")
        self.speed_factor = float(rescaled["factor"]) if isinstance(rescaled, dict) and "factor" in rescaled else 1.0
        if not (np.isfinite(self.speed_factor) and self.speed_factor > 0):
            raise LatencyTableError(f"{source}: meta.rescaled.factor must be a positive number, got {rescaled!r}")
        self._check_covers_space()

    # ---- io --------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<table>") -> LatencyTable:
        """Build from the parsed JSON of a table file; raises LatencyTableError naming `source` if malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyTableError(f"{source} is not a sparsesearch latency table (written by `sparsesearch profile`)")
        if data.get("version") != VERSION:
            raise LatencyTableError(
                f"{source}: table format version {data.get('version')!r} is not supported (expected {VERSION})"
            )
        meta, space, tables = data.get("meta"), data.get("space"), data.get("tables")
        if not isinstance(meta, dict) or not isinstance(space, dict) or not isinstance(tables, list) or not tables:
            raise LatencyTableError(f"{source}: a table needs 'meta', 'space' and a non-empty 'tables' list")
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing:
            raise LatencyTableError(f"{source}: meta lacks {', '.join(missing)}")
        if not isinstance(meta["space"], dict) or "hash" not in meta["space"]:
            raise LatencyTableError(f"{source}: meta.space must be a mapping with the space's name and hash")
        return cls(
            meta, space, [ResolutionTable.from_dict(t, f"{source} tables[{i}]") for i, t in enumerate(tables)], source
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by `sparsesearch profile`; warns (TableMachineWarning, one line) when it was
        measured on other hardware than this machine's, or does not record which."""
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table {path} does not exist (build one with `sparsesearch profile`)")
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise LatencyTableError(f"cannot read {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LatencyTableError(f"{path} is not valid JSON: {str(e).splitlines()[0]}") from None
        table = cls.from_dict(data, str(path))
        note = machine_note(table.meta, str(path))
        if note is not None:
            warnings.warn(note, TableMachineWarning, stacklevel=2)
        return table

    @property
    def resolution_tables(self) -> tuple[ResolutionTable, ...]:
        """The per-resolution tables, in the space's resolution order."""
        return tuple(self._tables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "meta": self.meta,
            "space": self._space_data,
            "tables": [t.to_dict() for t in self._tables],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def rescaled(self, factor: float, check: dict[str, Any] | None = None) -> LatencyTable:
        """A copy whose every prediction is `factor` times this table's (e.g. the measured/predicted factor of
        `check_table` on this machine); `meta["rescaled"]` records the factor (over the original figures) and
        the check that measured it, and survives a save and load."""
        if not (np.isfinite(factor) and factor > 0):
            raise LatencyTableError(f"a rescale factor must be a positive number, got {factor!r}")
        meta = dict(self.meta)
        meta["rescaled"] = {"factor": float(factor) * self.speed_factor, **({"check": check} if check else {})}
        return LatencyTable(meta, self._space_data, self._tables, self.source)

    # ---- views -----------------------------------------------------------------------------------------------
    @property
    def resolutions(self) -> tuple[tuple[int, int], ...]:
        return tuple(t.resolution for t in self._tables)

    @property
    def statistic(self) -> str:
        """What the table's figures are: "min" (fastest samples) or "mean" (trimmed means; also every table
        written before the choice existed). Whoever times the machine against the table uses the same."""
        return "min" if self.meta.get("statistic") == "min" else "mean"

    def resolution_table(self, resolution: Any = None) -> ResolutionTable:
        """The entries measured at `resolution` (default: the first one)."""
        if resolution is None:
            return self._tables[0]
        res = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        if res not in self._by_res:
            raise LatencyTableError(
                f"{self.source} has no entries for resolution {res_key(res)} (measured: "
                f"{', '.join(res_key(r) for r in self.resolutions)}); profile with --resolution {res_key(res)}"
            )
        return self._by_res[res]

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"LatencyTable(space={self.space.name!r}, device={m['device']!r}, dtype={m['dtype']}, batch={m['batch']}, "
            f"threads={m['threads']}, resolutions={[res_key(r) for r in self.resolutions]}"
            + (f", runtime={self.runtime!r}" if self.runtime != "torch" else "")
            + ")"
        )

    # ---- compatibility ---------------------------------------------------------------------------------------
    def check_compatible(
        self,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        batch: int | None = None,
        torch_version: str | None = None,
        threads: int | None = None,
        runtime: str | None = None,
    ) -> None:
        """Raise LatencyTableError unless this table was measured for the setup about to use it.

        Args:
            device: 'cpu' or 'cuda' of the running setup; the table's device kind by default. The running
                machine's device name must equal the table's.
            dtype, batch, threads: checked when given.
            torch_version: the running torch by default.
            runtime: "torch" or "onnxruntime" (`latency.runtime`); the table's runtime by default. A table of
                another runtime is refused, and one of ONNX Runtime needs the version it was measured with.
        """
        problems = []
        want_type = torch.device(device).type if device is not None else self.meta["device_type"]
        if want_type != self.meta["device_type"]:
            problems.append(f"device {self.meta['device_type']} (running on {want_type})")
        elif want_type == "cuda" and not torch.cuda.is_available():
            problems.append("a CUDA device (this machine has none)")
        else:
            here = device_name(device if device is not None and torch.device(device).type == want_type else want_type)
            if here != self.meta["device"]:
                problems.append(f"device {self.meta['device']!r} (this is {here!r})")
        if dtype is not None and dtype != self.meta["dtype"]:
            problems.append(f"dtype {self.meta['dtype']} (asked for {dtype})")
        if batch is not None and int(batch) != int(self.meta["batch"]):
            problems.append(f"batch {self.meta['batch']} (asked for {batch})")
        if threads is not None and int(threads) != int(self.meta["threads"]):
            problems.append(f"{self.meta['threads']} threads (asked for {threads})")
        running = torch_version or torch.__version__
        if running != self.meta["torch"]:
            problems.append(f"torch {self.meta['torch']} (running {running})")
        other_runtime = self.runtime_problem(runtime)
        if other_runtime:
            problems.insert(0, other_runtime)
        if problems:
            want = runtime or self.runtime
            profile = "sparsesearch profile" + (f" --runtime {want}" if runtime or want != "torch" else "")
            raise LatencyTableError(
                f"{self.source} was measured for {'; '.join(problems)}: profile this setup with "
                f"`{profile}`, or pass --allow-foreign-table for a what-if study"
            )

    @property
    def runtime(self) -> str:
        """Where the table's parts ran: "torch" (also every table that does not say) or "onnxruntime"."""
        return table_runtime(self.meta)

    def runtime_problem(self, runtime: str | None = None) -> str | None:
        """What keeps this table from `runtime` (default: its own), e.g. "onnxruntime 1.31.1 (asked for
        torch)", or None. Torch's version is `check_compatible`'s; ONNX Runtime's must be installed and equal."""
        mine = self.runtime
        version = self.meta.get("runtime_version") or (self.meta["torch"] if mine == "torch" else "?")
        if runtime is not None and check_runtime(runtime) != mine:
            return f"{mine} {version} (asked for {runtime})"
        if mine == "torch":
            return None
        here = installed_version(mine)
        if here is None:
            return f"{mine} {version} (not installed: {INSTALL_HINT})"
        if here != version:
            return f"{mine} {version} (running {here})"
        form = int(self.meta.get("export_form", 1))
        if form != EXPORT_FORM:
            return f"{mine} {version}, graphs of export form {form} (this version exports form {EXPORT_FORM})"
        return None

    def check_space(self, space: SearchSpace) -> None:
        """Raise LatencyTableError unless `space` is the table's space (same architecture content) and every
        resolution it can choose was measured."""
        want = self.meta["space"].get("hash")
        if space_hash(space) != want:
            raise LatencyTableError(
                f"{self.source} was measured for space {self.meta['space'].get('name')!r} ({want}), not for "
                f"{space.name!r} ({space_hash(space)}): profile {space.source}"
            )
        missing = [res_key(r) for r in space.resolutions if r not in self._by_res]
        if missing:
            raise LatencyTableError(
                f"{self.source} lacks resolution(s) {', '.join(missing)} of space {space.name!r}: "
                f"profile with --resolution {' '.join(missing)}"
            )

    def _check_covers_space(self) -> None:
        """Every config of the space must be predictable: build the lookup now and report what is missing."""
        try:
            self._build_lookup()
        except LatencyTableError as e:
            raise LatencyTableError(f"{self.source} does not cover its own space: {e}") from None

    # ---- prediction ------------------------------------------------------------------------------------------
    def _kind(self, rt: ResolutionTable, stage: int, window: int, variant: str) -> KindTable:
        kt = rt.kinds.get((stage, window, variant))
        if kt is None:
            raise LatencyTableError(
                f"no {variant} block of stage {stage} with window {window} at {res_key(rt.resolution)} was measured"
            )
        return kt

    def _variant(self, stage: int, block: int) -> str:
        """The family's variant of block `block` of row `stage` of the table's space."""
        fam = space_family(self.space)
        return fam.block_variant(fam.arch(self.space.architecture, self.space.model_kwargs), stage, block)

    def parts(self, config: SparsityConfig) -> dict[str, float]:
        """Milliseconds of every part `config` runs: fixed parts by name, blocks as 'layers.i.blocks.j',
        and 'correction'. Their sum is `predict(config)`."""
        rt = self.resolution_table(config.resolution)
        self._check_fits(config)
        out = {name: s.ms for name, s in rt.fixed.items()}
        fam = space_family(self.space)
        arch = fam.arch(self.space.architecture, self.space.model_kwargs)
        for s, row in enumerate(config.sparsity):
            for j, p in enumerate(row):
                w = config.window_size[fam.window_row(arch, s, j)]
                kt = self._kind(rt, s, w, fam.block_variant(arch, s, j))
                out[fam.block_name(arch, s, j)] = kt.latency(keep_count(p, kt.num_windows))
        raw = sum(out.values())
        out["correction"] = rt.offset_ms + (rt.scale - 1.0) * raw
        if self.speed_factor != 1.0:
            out = {name: self.speed_factor * ms for name, ms in out.items()}
        return out

    def predict(self, config: SparsityConfig) -> float:
        """Predicted milliseconds of one forward pass of the model under `config` (at its resolution, or the
        table's first one).

        A config of the table's space gives exactly `predict_many` of its genome (same additions in the same
        order); any other config that fits the model (e.g. a sparsity no gene offers) is the sum of `parts`,
        with counts between measured ones interpolated.
        """
        self._check_fits(config)
        genome = self.space.genome_of(config)  # no resolution: the table's first
        if genome is None:
            return float(sum(self.parts(config).values()))
        return float(self.predict_many(genome[None, :])[0])

    def _check_fits(self, config: SparsityConfig) -> None:
        """LatencyTableError unless `config` fits the model of the table's space (stage depths, windows)."""
        try:
            config.validate(self.space.depths, self.space.max_window_size)
        except SparseSearchError as e:
            raise LatencyTableError(f"config does not fit the table's space {self.space.name!r}: {e}") from None

    def _build_lookup(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int, int, int]]]:
        """Flattened per-(gene, window row) latency arrays indexed by (resolution, window choice, gene choice).

        Returns (values, base, pairs): values is one float array; for pair (gene, row, offset, n_windows,
        n_choices), with row the config row whose window those blocks of the gene run (`ModelFamily.window_row`),
        the entry of resolution r, window index w, choice c is ``values[offset + (r * n_windows + w) * n_choices +
        c]``; base[r] is the fixed time plus the correction at resolution r.
        """
        if self._lookup is not None:
            return self._lookup
        space = self.space
        pairs: list[tuple[int, int, int, int, int]] = []
        chunks: list[np.ndarray] = []
        offset = 0
        fam = space_family(space)
        arch = fam.arch(space.architecture, space.model_kwargs)
        for gi, g in enumerate(space.genes):
            by_row: dict[int, list[tuple[int, int]]] = {}  # the blocks of the gene that run each row's window
            for st, b in g.blocks:
                by_row.setdefault(fam.window_row(arch, st, b), []).append((st, b))
            for r, blocks in sorted(by_row.items()):
                wins = space.window_choices[r]
                arr = np.zeros((len(self._tables), len(wins), len(g.choices)))
                for ri, rt in enumerate(self._tables):
                    for wi, w in enumerate(wins):
                        for ci, p in enumerate(g.choices):
                            total = 0.0
                            for st, b in blocks:
                                kt = self._kind(rt, st, w, self._variant(st, b))
                                total += kt.latency(keep_count(p, kt.num_windows))
                            arr[ri, wi, ci] = self.speed_factor * rt.scale * total
                pairs.append((gi, r, offset, len(wins), len(g.choices)))
                chunks.append(arr.ravel())
                offset += arr.size
        base = np.array([self.speed_factor * (rt.scale * rt.fixed_ms + rt.offset_ms) for rt in self._tables])
        self._lookup = (np.concatenate(chunks), base, pairs)
        return self._lookup

    def genomes(self, configs: Iterable[SparsityConfig] | np.ndarray, space: SearchSpace | None = None) -> np.ndarray:
        """(n, n_var) integer genomes of the table's space from configs or from genomes of `space`."""
        if isinstance(configs, np.ndarray):
            x = np.asarray(configs)
            if x.ndim == 1:
                x = x[None, :]
            if x.ndim != 2 or x.shape[1] != self.space.n_var:
                raise LatencyTableError(
                    f"genomes of {self.space.name} have shape (n, {self.space.n_var}), got {x.shape}"
                )
            x = x.astype(np.int64, copy=False)
            if space is not None and space is not self.space:
                self.check_space(space)
            if space is not None and space.resolutions != self.space.resolutions:
                remap = np.array([self.space.resolutions.index(r) for r in space.resolutions])
                x = x.copy()
                x[:, -1] = remap[x[:, -1]]
            if x.size and (np.any(x < 0) or np.any(x > self.space.upper_bounds)):
                raise LatencyTableError(
                    f"genomes out of bounds {self.space.upper_bounds.tolist()} of space {self.space.name}"
                )
            return x
        rows = []
        for c in configs:
            try:
                rows.append(self.space.encode(c))
            except SparseSearchError as e:
                raise LatencyTableError(
                    f"config is not a point of the table's space {self.space.name!r}: {e}"
                ) from None
        return np.array(rows, dtype=np.int64).reshape(len(rows), self.space.n_var)

    def predict_many(
        self, configs: Iterable[SparsityConfig] | np.ndarray, space: SearchSpace | None = None
    ) -> np.ndarray:
        """Vectorised `predict`: (n,) milliseconds for configs of the space or an (n, n_var) genome array.

        Genomes are read in the table's space (`table.space`), or in `space` (same architecture content,
        its resolution indices are remapped) when given.
        """
        x = self.genomes(configs, space)
        values, base, pairs = self._build_lookup()
        if not pairs or len(x) == 0:
            return base[x[:, -1]] if len(x) else np.zeros(0)
        n_genes = len(self.space.genes)
        res = x[:, -1]
        idx = np.empty((len(x), len(pairs)), dtype=np.int64)
        for j, (gi, s, off, nw, nc) in enumerate(pairs):
            idx[:, j] = off + (res * nw + x[:, n_genes + s]) * nc + x[:, gi]
        return base[res] + values[idx].sum(axis=1)

    # ---- range -----------------------------------------------------------------------------------------------
    def dense_latency(self, resolution: Any = None) -> float:
        """Predicted milliseconds of the unpruned model with the default windows (first choice where the
        default is not a choice) at `resolution` (default: the table's first)."""
        rt = self.resolution_table(resolution)
        windows = [d if d in ch else ch[0] for ch, d in zip(self.space.window_choices, self.space.default_window)]
        return self.predict(SparsityConfig.dense(self.space.depths, windows, rt.resolution))

    def _resolution_indices(self, resolutions: Any) -> list[int]:
        """Indices of the table's resolutions among `resolutions` (None: all; one (H, W) or int, or a list of
        them); a resolution the table lacks raises LatencyTableError."""
        if resolutions is None:
            return list(range(len(self._tables)))
        if isinstance(resolutions, int) or (
            isinstance(resolutions, (tuple, list))
            and len(resolutions) == 2
            and all(isinstance(v, int) for v in resolutions)
        ):
            resolutions = [resolutions]
        return sorted({self.resolutions.index(self.resolution_table(r).resolution) for r in resolutions})

    def _extreme(self, sign: float, resolutions: Any = None) -> tuple[float, np.ndarray]:
        """Exact min (sign=1) or max (sign=-1) of the prediction over the space, honouring the ordering rule."""
        space = self.space
        values, base, pairs = self._build_lookup()
        n_genes = len(space.genes)
        if space.non_decreasing:  # the genes of each stage group, in block order, are non-decreasing
            groups = space.stage_groups()
            grouped = {gi for g in groups for gi in g}
            groups += [[gi] for gi in range(n_genes) if gi not in grouped]
        else:
            groups = [[gi] for gi in range(n_genes)]
        best: tuple[float, np.ndarray] | None = None
        window_ranges = [range(len(c)) for c in space.window_choices]
        for ri in self._resolution_indices(resolutions):
            for wins in itertools.product(*window_ranges):
                cost = [np.zeros(len(g.choices)) for g in space.genes]
                for gi, s, off, nw, nc in pairs:
                    start = off + (ri * nw + wins[s]) * nc
                    cost[gi] = cost[gi] + values[start : start + nc]
                genome = np.zeros(space.n_var, dtype=np.int64)
                genome[n_genes : n_genes + len(wins)] = wins
                genome[-1] = ri
                total = base[ri]
                for group in groups:
                    val, picks = _chain_optimum([sign * cost[gi] for gi in group])
                    total += sign * val
                    genome[group] = picks
                total = float(self.predict_many(genome[None, :])[0])  # the same sum as predict / predict_many
                if best is None or sign * total < sign * best[0]:
                    best = (float(total), genome)
        assert best is not None
        return best

    def min_latency(self, resolutions: Any = None) -> float:
        """The fastest prediction any config of the space reaches (at `resolutions`: one (H, W) or a list of
        them; None: any of the table's)."""
        return self._extreme(1.0, resolutions)[0]

    def max_latency(self, resolutions: Any = None) -> float:
        """The slowest prediction any config of the space reaches (at `resolutions`, as `min_latency`)."""
        return self._extreme(-1.0, resolutions)[0]

    def min_config(self, resolutions: Any = None) -> SparsityConfig:
        """A config with the smallest predicted latency (at `resolutions`, as `min_latency`)."""
        return self.space.decode(self._extreme(1.0, resolutions)[1])

    def max_config(self, resolutions: Any = None) -> SparsityConfig:
        """A config with the largest predicted latency (at `resolutions`, as `min_latency`)."""
        return self.space.decode(self._extreme(-1.0, resolutions)[1])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.meta["dtype"]]


def _chain_optimum(costs: list[np.ndarray]) -> tuple[float, list[int]]:
    """Minimise sum_i costs[i][x_i] subject to x_0 <= x_1 <= ... (all arrays the same length, or one gene)."""
    if len(costs) == 1:
        i = int(np.argmin(costs[0]))
        return float(costs[0][i]), [i]
    n = len(costs[0])
    acc = costs[0].copy()
    back = []
    for c in costs[1:]:
        # best previous with index <= current: running minimum and its argmin
        run_idx = np.zeros(n, dtype=np.int64)
        run_val = np.empty(n)
        cur, cur_i = np.inf, 0
        for j in range(n):
            if acc[j] < cur:
                cur, cur_i = acc[j], j
            run_val[j], run_idx[j] = cur, cur_i
        back.append(run_idx)
        acc = run_val + c
    j = int(np.argmin(acc))
    best = float(acc[j])
    picks = [j]
    for run_idx in reversed(back):
        j = int(run_idx[j])
        picks.append(j)
    return best, list(reversed(picks))
