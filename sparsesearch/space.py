"""Search spaces: which blocks share a sparsity gene, the choices of each gene, window sizes, resolutions."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import SparsityConfig, read_structured
from .errors import SpaceError, SparseSearchError
from .fileio import to_plain

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Gene", "SearchSpace"]

_TOP_KEYS = {
    "name",
    "architecture",
    "model_kwargs",
    "resolutions",
    "sparsity_choices",
    "genes",
    "window_sizes",
    "rules",
    "description",
}
_GENE_KEYS = {"name", "blocks", "choices"}
_RULES = {"non_decreasing_within_stage"}


@dataclass(frozen=True)
class Gene:
    """One sparsity variable: the blocks (stage, block) that share it and its allowed values."""

    name: str
    blocks: tuple[tuple[int, int], ...]
    choices: tuple[float, ...]

    @property
    def stage(self) -> int:
        return self.blocks[0][0]


def _parse_block(ref: Any, gene: str) -> tuple[int, int]:
    """'2.3' or [2, 3] -> (2, 3)."""
    if isinstance(ref, str) and "." in ref:
        a, _, b = ref.partition(".")
        if a.strip().isdigit() and b.strip().isdigit():
            return int(a), int(b)
    if isinstance(ref, (list, tuple)) and len(ref) == 2 and all(isinstance(v, int) for v in ref):
        return int(ref[0]), int(ref[1])
    raise SpaceError(f"gene {gene!r}: block {ref!r} must be written 'stage.block' (e.g. '2.0') or [stage, block]")


def _parse_choices(values: Any, where: str) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise SpaceError(f"{where} must be a non-empty list of sparsities in [0, 1)")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise SpaceError(f"{where}: {v!r} is not a sparsity in [0, 1)")
        out.append(float(v))
    if len(set(out)) != len(out):
        raise SpaceError(f"{where} lists a value twice")
    return tuple(sorted(out))


class SearchSpace:
    """A search space read from YAML (see `search_spaces/swin_t.yaml` for the format).

    Configs are encoded as integer vectors: one choice index per sparsity gene, then one window-choice index per
    stage, then one resolution index — the variables the searches optimise.
    """

    def __init__(self, data: dict[str, Any], source: str = "<dict>") -> None:
        self.source = source
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: a search space must be a YAML mapping")
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise SpaceError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(_TOP_KEYS))}"
            )
        if "architecture" not in data:
            raise SpaceError(f"{source}: missing 'architecture' (a name from sparsesearch.list_models())")
        from .models import list_models  # noqa: PLC0415  (models import config, not space)
        from .models.family import get_family  # noqa: PLC0415

        self.architecture = str(data["architecture"])
        if self.architecture not in list_models():
            raise SpaceError(f"{source}: unknown architecture {self.architecture!r}; known: {', '.join(list_models())}")
        self.name = str(data.get("name", Path(source).stem))
        self.model_kwargs = dict(data.get("model_kwargs") or {})
        self.family = get_family(self.architecture)
        arch = self.family.arch(self.architecture, self.model_kwargs)
        self._arch = arch
        try:
            self.depths: tuple[int, ...] = self.family.depths(arch)
            self.default_window: tuple[int, ...] = self.family.default_window(arch)
        except (KeyError, TypeError, ValueError) as e:
            raise SpaceError(f"{source}: model_kwargs do not describe a {self.architecture} ({e})") from None
        if len(self.default_window) != len(self.depths):
            raise SpaceError(f"{source}: window_size in model_kwargs needs one value per stage ({len(self.depths)})")
        self.resolutions = self._parse_resolutions(data.get("resolutions", [arch.get("img_size", 224)]))
        self.window_choices = self._parse_windows(data.get("window_sizes"))
        try:
            self.family.check_window_choices(arch, self.window_choices)
        except SparseSearchError as e:
            raise SpaceError(f"{source}: {e}") from None
        default_choices = data.get("sparsity_choices")
        self.genes = self._parse_genes(data.get("genes"), default_choices)
        rules = data.get("rules") or {}
        if not isinstance(rules, dict) or set(rules) - _RULES:
            raise SpaceError(f"{source}: rules must be a mapping with keys from {sorted(_RULES)}, got {rules!r}")
        self.non_decreasing = bool(rules.get("non_decreasing_within_stage", False))
        if self.non_decreasing:
            for stage_genes in self.stage_groups():
                if len({self.genes[g].choices for g in stage_genes}) > 1:
                    raise SpaceError(
                        f"{source}: non_decreasing_within_stage needs the genes of one stage to share their choices "
                        "(genes with a single choice excepted)"
                    )
        self._block_gene = {b: gi for gi, g in enumerate(self.genes) for b in g.blocks}

    # ---- parsing -----------------------------------------------------------------------------------------
    def _parse_resolutions(self, value: Any) -> tuple[tuple[int, int], ...]:
        if isinstance(value, int) or (
            isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value)
        ):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise SpaceError(f"{self.source}: resolutions must be a list of sizes, e.g. [[512, 512]]")
        out = []
        for r in value:
            if isinstance(r, int) and not isinstance(r, bool) and r > 0:
                out.append((r, r))
            elif isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) and v > 0 for v in r):
                out.append((int(r[0]), int(r[1])))
            else:
                raise SpaceError(f"{self.source}: resolution {r!r} must be a positive int or [height, width]")
        return tuple(out)

    def _parse_windows(self, value: Any) -> tuple[tuple[int, ...], ...]:
        n = len(self.depths)
        if value is None:
            return tuple((w,) for w in self.default_window)
        if not isinstance(value, (list, tuple)) or len(value) != n:
            got = len(value) if isinstance(value, (list, tuple)) else repr(value)
            raise SpaceError(
                f"{self.source}: window_sizes must list the choices of each of the {n} stages of {self.architecture} "
                f"(stages = block groups for a plain ViT), got {got}"
            )
        out = []
        for i, ch in enumerate(value):
            ch = [ch] if isinstance(ch, int) else ch
            if (
                not isinstance(ch, (list, tuple))
                or not ch
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in ch)
            ):
                raise SpaceError(
                    f"{self.source}: window_sizes[{i}] must be a non-empty list of positive ints, got {ch!r}"
                )
            out.append(tuple(dict.fromkeys(int(w) for w in ch)))
        return tuple(out)

    def _parse_genes(self, value: Any, default_choices: Any) -> tuple[Gene, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise SpaceError(f"{self.source}: genes must be a non-empty list of {{name, blocks, choices}}")
        defaults = (
            _parse_choices(default_choices, f"{self.source}: sparsity_choices") if default_choices is not None else None
        )
        genes: list[Gene] = []
        seen: dict[tuple[int, int], str] = {}
        for i, g in enumerate(value):
            if not isinstance(g, dict):
                raise SpaceError(f"{self.source}: genes[{i}] must be a mapping with 'blocks'")
            name = str(g.get("name", f"g{i}"))
            bad = sorted(set(g) - _GENE_KEYS)
            if bad:
                raise SpaceError(f"{self.source}: gene {name!r} has unknown key(s) {', '.join(map(repr, bad))}")
            blocks = g.get("blocks")
            if not isinstance(blocks, (list, tuple)) or not blocks:
                raise SpaceError(f"{self.source}: gene {name!r} needs a non-empty 'blocks' list")
            parsed = tuple(_parse_block(b, name) for b in blocks)
            for s, b in parsed:
                if s >= len(self.depths) or b >= self.depths[s]:
                    raise SpaceError(
                        f"{self.source}: gene {name!r} names block {s}.{b}, which {self.architecture} does not have"
                    )
                if (s, b) in seen:
                    raise SpaceError(f"{self.source}: block {s}.{b} is in genes {seen[(s, b)]!r} and {name!r}")
                seen[(s, b)] = name
            if "choices" in g:
                choices = _parse_choices(g["choices"], f"{self.source}: gene {name!r} choices")
            elif defaults is not None:
                choices = defaults
            else:
                raise SpaceError(
                    f"{self.source}: gene {name!r} has no choices and there is no sparsity_choices default"
                )
            self._check_prunable(name, parsed, choices)
            genes.append(Gene(name, parsed, choices))
        missing = [f"{s}.{b}" for s, d in enumerate(self.depths) for b in range(d) if (s, b) not in seen]
        if missing:
            raise SpaceError(f"{self.source}: block(s) {', '.join(missing)} are in no gene; every block needs one")
        return tuple(genes)

    def _check_prunable(self, name: str, blocks: Sequence[tuple[int, int]], choices: Sequence[float]) -> None:
        """A gene that holds a block the family never prunes may only choose 0."""
        fixed = [f"{s}.{b}" for s, b in blocks if not self.family.block_prunable(self._arch, s, b)]
        if fixed and any(c > 0.0 for c in choices):
            raise SpaceError(
                f"{self.source}: gene {name!r} holds block(s) {', '.join(fixed)}, which {self.architecture} never "
                "prunes (they reshape the map): give them a gene of their own with choices [0.0]"
            )

    def stage_groups(self) -> list[list[int]]:
        """The genes the ordering rule ties together: per stage, its genes with more than one choice, ordered by
        first block (a gene with a single choice, e.g. of blocks a family never prunes, is in no group)."""
        groups: dict[int, list[int]] = {}
        for gi, g in enumerate(self.genes):
            if len(g.choices) > 1:
                groups.setdefault(g.stage, []).append(gi)
        return [sorted(v, key=lambda gi: self.genes[gi].blocks[0]) for _, v in sorted(groups.items())]

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"search space {path} does not exist (the shipped ones are in search_spaces/)")
        return cls(read_structured(path, SpaceError), str(path))

    def to_dict(self) -> dict[str, Any]:
        """The canonical plain mapping of this space (lists, not tuples; YAML- and JSON-able): what a supernet
        checkpoint and a latency table store, and what ``SearchSpace(space.to_dict())`` parses back into an
        equal space. Sparsity choices are written per gene, so the mapping never depends on defaults."""
        data: dict[str, Any] = {"name": self.name, "architecture": self.architecture}
        if self.model_kwargs:
            data["model_kwargs"] = to_plain(self.model_kwargs)
        data["resolutions"] = [list(r) for r in self.resolutions]
        data["genes"] = [
            {"name": g.name, "blocks": [f"{s}.{b}" for s, b in g.blocks], "choices": list(g.choices)}
            for g in self.genes
        ]
        data["window_sizes"] = [list(c) for c in self.window_choices]
        if self.non_decreasing:
            data["rules"] = {"non_decreasing_within_stage": True}
        return data

    def same_as(self, other: SearchSpace) -> bool:
        """True if both spaces define the same architecture, model arguments, genes, windows, resolutions and
        rules; the names may differ."""
        a, b = self.to_dict(), other.to_dict()
        a.pop("name")
        b.pop("name")
        return a == b

    @property
    def max_window_size(self) -> tuple[int, ...]:
        return tuple(max(max(ch), d) for ch, d in zip(self.window_choices, self.default_window))

    def model_args(self) -> dict[str, Any]:
        """The architecture kwargs `create_model` builds with: the family's for these resolutions, the space's
        `model_kwargs`, and what the family needs to run every window choice (e.g. large enough position tables)."""
        return {
            **self.family.space_model_kwargs(self.resolutions),
            **self.model_kwargs,
            **self.family.window_model_kwargs(self.max_window_size),
        }

    def create_model(self, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
        """Build this space's architecture with position tables large enough for every window choice.

        With `seed`, the random weights are drawn from the CPU generator seeded with it (the model is built on the
        CPU), and every generator of the process is left as it was: the CPU one is forked and restored, no
        other device's is touched (the same seed gives the same weights).
        """
        import torch  # noqa: PLC0415

        from .models import create_model  # noqa: PLC0415

        if seed is None:
            return create_model(self.architecture, **{**self.model_args(), **kwargs})
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: it re-seeds every GPU too
            return create_model(self.architecture, **{**self.model_args(), **kwargs})

    # ---- encoding ----------------------------------------------------------------------------------------
    @property
    def n_var(self) -> int:
        return len(self.genes) + len(self.depths) + 1

    @property
    def upper_bounds(self) -> np.ndarray:
        """(n_var,) inclusive upper bound of each integer variable (lower bounds are 0)."""
        ub = (
            [len(g.choices) - 1 for g in self.genes]
            + [len(c) - 1 for c in self.window_choices]
            + [len(self.resolutions) - 1]
        )
        return np.asarray(ub, dtype=np.int64)

    @property
    def size(self) -> int:
        """Number of distinct configs (ignoring the ordering rule)."""
        return math.prod(int(u) + 1 for u in self.upper_bounds)

    def repair(self, genes: np.ndarray) -> np.ndarray:
        """(..., n_var) int: clip to bounds and, under the ordering rule, sort each stage's sparsity genes."""
        x = np.clip(np.rint(np.asarray(genes)).astype(np.int64), 0, self.upper_bounds)
        if self.non_decreasing:
            for group in self.stage_groups():
                if len(group) > 1:
                    x[..., group] = np.sort(x[..., group], axis=-1)
        return x

    def is_valid(self, genes: np.ndarray) -> bool:
        x = np.asarray(genes)
        return bool(np.all(x >= 0) and np.all(x <= self.upper_bounds) and np.array_equal(self.repair(x), x))

    def decode(self, genes: Sequence[int] | np.ndarray) -> SparsityConfig:
        """Integer vector -> SparsityConfig."""
        x = np.asarray(genes)
        if x.shape != (self.n_var,):
            raise SpaceError(f"a genome of {self.name} has {self.n_var} integers, got shape {x.shape}")
        if np.any(x < 0) or np.any(x > self.upper_bounds):
            raise SpaceError(f"genome {x.tolist()} is out of bounds {self.upper_bounds.tolist()}")
        sparsity = [[0.0] * d for d in self.depths]
        for gi, g in enumerate(self.genes):
            for s, b in g.blocks:
                sparsity[s][b] = g.choices[int(x[gi])]
        off = len(self.genes)
        windows = [self.window_choices[i][int(x[off + i])] for i in range(len(self.depths))]
        return SparsityConfig(sparsity, windows, self.resolutions[int(x[-1])])

    def encode(self, config: SparsityConfig) -> np.ndarray:
        """SparsityConfig -> integer vector; raises SpaceError if the config is not a point of this space."""
        config.validate(self.depths, self.max_window_size)
        located = self._locate(config)
        if isinstance(located, str):
            raise SpaceError(located)
        return located

    def genome_of(self, config: SparsityConfig) -> np.ndarray | None:
        """The integer vector of `config` if it is a point of this space, else None (e.g. a sparsity no gene
        offers). Raises ConfigError if the config does not fit the space's model at all."""
        config.validate(self.depths, self.max_window_size)
        located = self._locate(config)
        return None if isinstance(located, str) else located

    def _locate(self, config: SparsityConfig) -> np.ndarray | str:
        """(n_var,) int genome of a config that fits the model, or why it is not a point of this space."""
        x = np.zeros(self.n_var, dtype=np.int64)
        for gi, g in enumerate(self.genes):
            values = {config.sparsity[s][b] for s, b in g.blocks}
            if len(values) != 1:
                return f"config gives the blocks of gene {g.name!r} different sparsities {sorted(values)}"
            value = values.pop()
            index = next((i for i, c in enumerate(g.choices) if abs(c - value) < 1e-9), None)
            if index is None:
                return f"sparsity {value} of gene {g.name!r} is not one of its choices {list(g.choices)}"
            x[gi] = index
        off = len(self.genes)
        for i, w in enumerate(config.window_size):
            if w not in self.window_choices[i]:
                return f"window size {w} of stage {i} is not a choice of {self.name} ({list(self.window_choices[i])})"
            x[off + i] = self.window_choices[i].index(w)
        res = config.resolution or self.resolutions[0]
        if res not in self.resolutions:
            return f"resolution {res} is not a choice of {self.name} ({list(self.resolutions)})"
        x[-1] = self.resolutions.index(res)
        return x

    # ---- configs -----------------------------------------------------------------------------------------
    def sample_genes(self, rng: np.random.Generator | int | None, n: int | None = None) -> np.ndarray:
        """Uniform random choice per variable, then `repair` (so the ordering rule holds): (n_var,) or (n, n_var)."""
        rng = np.random.default_rng(rng)
        shape = (self.n_var,) if n is None else (n, self.n_var)
        return self.repair(rng.integers(0, self.upper_bounds + 1, size=shape))

    def sample(self, rng: np.random.Generator | int | None = None) -> SparsityConfig:
        """A random config of this space."""
        return self.decode(self.sample_genes(rng))

    def _with(self, pick: str, resolution: int | Sequence[int] | None = None) -> np.ndarray:
        x = np.zeros(self.n_var, dtype=np.int64)
        if pick == "max":
            x[: len(self.genes)] = self.upper_bounds[: len(self.genes)]
        off = len(self.genes)
        for i, (ch, d) in enumerate(zip(self.window_choices, self.default_window)):
            x[off + i] = ch.index(d) if d in ch else 0
        if resolution is not None:
            res = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
            if res not in self.resolutions:
                raise SpaceError(f"resolution {res} is not a choice of {self.name} ({list(self.resolutions)})")
            x[-1] = self.resolutions.index(res)
        return x

    def densest(self, resolution: int | Sequence[int] | None = None) -> SparsityConfig:
        """The lowest sparsity of every gene, default windows."""
        return self.decode(self._with("min", resolution))

    def sparsest(self, resolution: int | Sequence[int] | None = None) -> SparsityConfig:
        """The highest sparsity of every gene, default windows."""
        return self.decode(self._with("max", resolution))

    def uniform(self, p: float, resolution: int | Sequence[int] | None = None) -> SparsityConfig:
        """Sparsity p in every block the family prunes (p need not be a gene choice; 0 in blocks it never prunes),
        default windows."""
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise SpaceError(f"uniform sparsity must be in [0, 1), got {p!r}")
        cfg = self.decode(self._with("min", resolution))
        rows = [
            [float(p) if self.family.block_prunable(self._arch, s, b) else 0.0 for b in range(d)]
            for s, d in enumerate(self.depths)
        ]
        return SparsityConfig(rows, cfg.window_size, cfg.resolution)

    def describe(self) -> str:
        """A short human-readable summary."""
        lines = [f"space {self.name}: {self.architecture}, depths {list(self.depths)}, {self.size:,} configs"]
        for g in self.genes:
            lines.append(
                f"  gene {g.name:<10} blocks {' '.join(f'{s}.{b}' for s, b in g.blocks):<20} choices {list(g.choices)}"
            )
        lines.append(
            f"  windows {[list(c) for c in self.window_choices]}  resolutions {[list(r) for r in self.resolutions]}"
        )
        if self.non_decreasing:
            lines.append("  rule: sparsity non-decreasing within each stage")
        return "\n".join(lines)
