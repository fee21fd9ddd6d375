"""Library calls leave the process as they found it: torch's thread count, the random generators, loggers'
verbosity, and glibc's allocator (tuned only when a caller asks: the CLI commands that time, for their own
process)."""

from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path

import pytest
import sparsesearch as ss
import sparsesearch.latency.check as check_mod
import sparsesearch.latency.malloc as malloc_mod
import torch
from sparsesearch.cli import main
from sparsesearch.latency import LatencyTable, check_table, time_configs, validate
from sparsesearch.scoped import quiet_logger, torch_threads

from tests.test_latency_check import SPACE, FakeTimer, _profile


# ---- threads -----------------------------------------------------------------------------------------------
def test_torch_threads_restores_the_count_also_after_an_error():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other) as n:
        assert n == other == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:
        assert n == before
    with pytest.raises(ss.errors.SparseSearchError), torch_threads(0):
        pass


# ---- loggers -----------------------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_quiet_logger_drops_the_callers_info_lines_only_and_changes_no_level():
    parent = logging.getLogger("sidefx_lib")
    child = logging.getLogger("sidefx_lib.study")
    handler = _Collect()
    parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    try:
        with quiet_logger("sidefx_lib"):
            assert parent.level == logging.INFO and child.getEffectiveLevel() == logging.INFO
            child.info("trial finished")  # this thread, below WARNING: dropped
            child.warning("careful")
            other = threading.Thread(target=lambda: child.info("another thread"))
            other.start()
            other.join()
        child.info("after")
        assert handler.messages == ["careful", "another thread", "after"]
        assert not parent.filters and not handler.filters and not child.filters
    finally:
        parent.removeHandler(handler)
        parent.setLevel(logging.NOTSET)


# ---- random generators -------------------------------------------------------------------------------------
def test_create_model_with_a_seed_leaves_every_generator_alone(tmp_path, monkeypatch):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(tmp_path / "space.yaml")
    torch.manual_seed(7)
    reseeded: list[str] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append("cuda all"))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append("cuda"))
    cuda = torch.cuda.is_available()
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if cuda else None
    a = space.create_model(seed=3)
    assert torch.equal(torch.get_rng_state(), cpu_before)
    if cuda:
        assert all(torch.equal(x, y) for x, y in zip(torch.cuda.get_rng_state_all(), cuda_before))
    assert reseeded == []  # no GPU generator is re-seeded (torch.manual_seed would re-seed them all)
    b = space.create_model(seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- the allocator -----------------------------------------------------------------------------------------
@pytest.fixture
def mallopt_calls(monkeypatch) -> list[tuple[int, int]]:
    """A counting stub in place of glibc's mallopt, and a process that has not tuned it yet."""
    calls: list[tuple[int, int]] = []

    def fake(param: int, value: int) -> bool:
        calls.append((param, value))
        return True

    monkeypatch.setattr(malloc_mod, "_mallopt", fake)
    monkeypatch.setattr(malloc_mod, "_MALLOC_TUNED", None)
    return calls


@pytest.fixture(scope="module")
def tuned_table(tmp_path_factory) -> Path:
    """A (fake) profile of the tiny space, marked as profiled with the allocator tuned."""
    d = tmp_path_factory.mktemp("malloc")
    (d / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(d / "space.yaml")
    mp = pytest.MonkeyPatch()
    try:
        _profile(space, d / "table.json", mp)
    finally:
        mp.undo()
    data = json.loads((d / "table.json").read_text())
    data["meta"]["malloc"] = "glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2GiB"
    (d / "table.json").write_text(json.dumps(data))
    return d / "table.json"


def _load(path: Path) -> LatencyTable:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LatencyTable.load(path)


def test_library_timing_never_tunes_the_allocator(tuned_table, mallopt_calls):
    table = _load(tuned_table)
    threads = torch.get_num_threads()
    check_table(table, timer=FakeTimer(table, 1.0), rounds=1, repeats=1)
    report = validate(table, n=1, warmup=0, repeats=1, rounds=1, drift_check=False)
    time_configs(table, [table.space.sparsest()], rounds=1, repeats=1, warmup=0)
    assert mallopt_calls == []
    assert report.settings["malloc"] is None  # what the timing ran with, recorded
    assert torch.get_num_threads() == threads  # each ran at the table's thread count, then put it back


def test_tune_malloc_only_when_asked_and_once(mallopt_calls):
    assert ss.latency.malloc_tuned() is None
    done = ss.latency.tune_malloc()
    assert done is not None and ss.latency.malloc_tuned() == done
    assert len(mallopt_calls) == 2
    assert ss.latency.tune_malloc() == done and len(mallopt_calls) == 2  # idempotent


def test_the_cli_tunes_the_allocator_for_its_own_process(tuned_table, mallopt_calls, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(check_mod, "check_timer", lambda table: FakeTimer(table, 1.0))
    assert main(["latency", "check", "--table", str(tuned_table)]) == 0
    assert len(mallopt_calls) == 2
    capsys.readouterr()


def test_the_cli_leaves_the_allocator_alone_for_a_table_profiled_without(monkeypatch, mallopt_calls, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(tmp_path / "space.yaml")
    _profile(space, tmp_path / "table.json", monkeypatch)
    monkeypatch.setattr(check_mod, "check_timer", lambda table: FakeTimer(table, 1.0))
    assert main(["latency", "check", "--table", str(tmp_path / "table.json")]) == 0
    assert mallopt_calls == []


def test_a_profile_runs_at_its_thread_count_and_puts_the_callers_back(tmp_path, monkeypatch, mallopt_calls):
    (tmp_path / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(tmp_path / "space.yaml")
    with torch_threads(2):  # the caller's count; the fake profile runs at --threads 1
        table = _profile(space, tmp_path / "table.json", monkeypatch)
        assert torch.get_num_threads() == 2
    assert table.meta["threads"] == 1
    assert mallopt_calls == [] and table.meta["malloc"] is None  # ProfileSettings.malloc is off by default
