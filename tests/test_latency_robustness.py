"""Resuming a profile (unusable partial results are reported in one line and kept aside), profiling leaves the
process's global RNG alone, and `predict` picks its path explicitly. Nothing here times anything: a fake timer
returns fixed figures."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.config import SparsityConfig
from sparsesearch.errors import LatencyTableError
from sparsesearch.latency import LatencyTable, Profiler, ProfileSettings, Stat, Timer, partial_path
from sparsesearch.latency.resume import PartialProfileWarning

SPACE_YAML = """
name: resume
architecture: swin_nano
resolutions: [[32, 32]]
sparsity_choices: [0.0, 0.5]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s3, blocks: ["2.0", "2.1"], choices: [0.0]}
  - {name: s4, blocks: ["3.0", "3.1"], choices: [0.0]}
"""
FAST = dict(threads=1, warmup=0, repeats=1, rounds=1, calibration=0, flush_mb=0, quiet=False, malloc=False)


class _FixedTimer(Timer):
    """Returns 1 ms for everything without running it, and counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def measure(self, fn: Callable[[], Any], warmup: int, repeats: int, setup: Callable[[], Any] | None = None) -> Stat:
        self.calls += 1
        return Stat(1.0, 0.0, 1.0, 1.0, repeats)

    def measure_parts(
        self, run: Callable[[], Any], parts: Sequence[tuple[str, torch.nn.Module]], warmup: int, repeats: int
    ) -> dict[str, Stat]:
        self.calls += 1
        stat = Stat(1.0, 0.0, 1.0, 1.0, repeats)
        return {"total": Stat(len(parts) + 0.5, 0.0, len(parts) + 0.5, len(parts), repeats), "plain": stat} | {
            name: stat for name, _ in parts
        }


@pytest.fixture
def space(tmp_path: Path) -> ss.SearchSpace:
    path = tmp_path / "resume.yaml"
    path.write_text(SPACE_YAML)
    return ss.SearchSpace.load(path)


def _profile(space: ss.SearchSpace, out: Path, **settings: Any) -> tuple[Profiler, _FixedTimer]:
    timer = _FixedTimer()
    profiler = Profiler(space, ProfileSettings(**{**FAST, **settings}), timer=timer)
    profiler.run(out)
    return profiler, timer


@pytest.mark.parametrize(
    "content",
    [
        b'{"settings_hash": "abc", "entries": {"x": [{"ms": 1.0',  # cut off mid-write (not by us: atomic)
        b"\xff\xfe not text",
        b"[1, 2, 3]",
        "HASH",  # the right settings, but an entry that is not a timing
    ],
)
def test_corrupt_partial_profile_is_reported_kept_aside_and_measured_again(tmp_path, space, content):
    out = tmp_path / "t.json"
    partial = partial_path(out)
    if content == "HASH":
        settings_hash = Profiler(space, ProfileSettings(**FAST)).settings_hash()
        content = json.dumps({"settings_hash": settings_hash, "entries": {"32x32/fixed/norm": [{"ms": "?"}]}}).encode()
    partial.write_bytes(content)
    with pytest.warns(PartialProfileWarning) as caught:
        profiler, timer = _profile(space, out)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and str(partial) in message and "corrupt" in message and "starts over" in message
    kept = partial.with_name(partial.name + ".corrupt")
    assert kept.read_bytes() == content  # nothing lost: the file is kept for inspection
    assert timer.calls == len(profiler.plan())  # every entry measured again
    assert out.is_file() and not partial.exists()


def test_partial_profile_of_other_settings_is_reported_and_not_kept(tmp_path, space):
    out = tmp_path / "t.json"
    first = Profiler(space, ProfileSettings(**{**FAST, "repeats": 2}))
    partial_path(out).write_text(json.dumps({"settings_hash": first.settings_hash(), "entries": {}}))
    with pytest.warns(PartialProfileWarning, match="other settings") as caught:
        _profile(space, out)
    assert len(caught) == 1
    assert not partial_path(out).with_name(partial_path(out).name + ".corrupt").exists()


def test_resumable_partial_profile_gives_no_warning(tmp_path, space):
    out = tmp_path / "t.json"
    profiler = Profiler(space, ProfileSettings(**FAST), timer=_FixedTimer())
    entry = profiler.plan()[0]
    partial = {
        "settings_hash": profiler.settings_hash(),
        "entries": {entry.key: [Stat(2.0, 0.0, 2.0, 2.0, 1).to_dict()]},
    }
    partial_path(out).write_text(json.dumps(partial))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, timer = _profile(space, out)
    assert timer.calls == len(profiler.plan()) - 1  # the saved entry was reused


def test_cli_reports_a_corrupt_partial_profile_in_one_line(tmp_path, space, capsys, monkeypatch):
    out = tmp_path / "cli.json"
    partial_path(out).write_text("{")
    original_init = Profiler.__init__

    def with_fixed_timer(self: Profiler, space: ss.SearchSpace, settings: ProfileSettings, timer: Any = None) -> None:
        original_init(self, space, settings, _FixedTimer())

    monkeypatch.setattr(Profiler, "__init__", with_fixed_timer)
    args = ["profile", "--space", space.source, "--threads", "1", "--warmup", "0", "--repeats", "1", "--rounds", "1"]
    args += ["--calibration", "0", "--flush-mb", "0", "--default-malloc", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1
    assert lines[0].startswith("sparsesearch profile: warning: the partial profile") and "cli.json.partial" in lines[0]
    assert partial_path(out).with_name("cli.json.partial.corrupt").read_text() == "{"


def test_profiling_leaves_the_global_rng_alone_and_is_reproducible(tmp_path, space):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    first, _ = _profile(space, tmp_path / "a.json", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)
    # the weights still come from the profile's seed: two profilers build the same model
    second = Profiler(space, ProfileSettings(**{**FAST, "seed": 7}), timer=_FixedTimer())
    other = Profiler(space, ProfileSettings(**{**FAST, "seed": 8}), timer=_FixedTimer())
    a, b, c = (p.model().state_dict() for p in (first, second, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_predict_uses_the_lookup_for_points_of_the_space_and_the_parts_otherwise(tmp_path, space, monkeypatch):
    _profile(space, tmp_path / "t.json")
    table = LatencyTable.load(tmp_path / "t.json")
    point = space.sample(0)
    # every sparsity measured, but gene s1's two blocks differ: not a point of the space
    rows = [[0.0] * d for d in space.depths]
    rows[0][1] = 0.5
    off_space = SparsityConfig(rows, list(space.default_window), (32, 32))
    assert space.genome_of(point) is not None and space.genome_of(off_space) is None
    by_lookup = float(table.predict_many(space.encode(point)[None, :])[0])
    by_parts = float(sum(table.parts(off_space).values()))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("predict took the wrong path")

    monkeypatch.setattr(table, "parts", refuse)
    assert table.predict(point) == by_lookup
    monkeypatch.undo()
    monkeypatch.setattr(table, "predict_many", refuse)
    assert table.predict(off_space) == by_parts
    with pytest.raises(LatencyTableError, match="does not fit the table's space"):
        table.predict(SparsityConfig([[0.0]], [4], (32, 32)))
