"""Tables that stay true on the machine that uses them: the hardware fingerprint and its load warning, the speed
check (on a fake timer), rescaled tables, and the check in `evolve`, `export` and `latency predict`.

Nothing here times anything: tables come from a fake profile (deterministic figures) and the check's timer is
a fake that answers `factor x the table's prediction` for the config it is handed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import sparsesearch.flops
import sparsesearch.latency.check as check_mod
import torch
from sparsesearch.cli import main
from sparsesearch.errors import LatencyTableError
from sparsesearch.latency import (
    LatencyTable,
    Profiler,
    ProfileSettings,
    Stat,
    TableMachineWarning,
    TableSpeedError,
    check_table,
    ensure_table_speed,
    fingerprint,
    machine_slug,
)
from sparsesearch.latency.env import fingerprint_diff, fingerprint_hash
from sparsesearch.latency.measure import Timer
from sparsesearch.testing import tiny_supernet

from tests.test_latency import one_by_one

SPACE = """
name: tiny_check
architecture: swin_nano
model_kwargs: {embed_dim: 16, num_heads: [1, 1, 2, 2]}
resolutions: [[64, 64]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: a, blocks: ["0.0", "0.1"]}
  - {name: b, blocks: ["1.0", "1.1"]}
  - {name: c, blocks: ["2.0", "2.1", "3.0", "3.1"]}
window_sizes: [[4], [4, 2], [4], [4]]
"""


def _fake_measure(profiler: Profiler, entry) -> Stat:
    """Deterministic figures: blocks grow with their kept count, whole forwards with their genome."""
    if entry.part == "block":
        ms = 0.02 * (entry.kind.stage + 1) * (1 + entry.k) + 0.01 * (entry.kind.variant == "shifted")
    elif entry.part == "fixed":
        ms = 0.1
    else:  # "model": calibration forwards, a little slower than the sum of parts
        ms = 1.1 * float(profiler._fake_sum(entry.genome))
    return Stat(ms, ms / 50, ms, ms * 0.98, 3)


def _profile(space: ss.SearchSpace, out: Path, monkeypatch, calibration: int = 4) -> LatencyTable:
    """A table of `space` from the fake profile (no in-model pass), with `calibration` check configs."""
    monkeypatch.setattr(Profiler, "measure", _fake_measure)
    monkeypatch.setattr(Profiler, "measure_group", one_by_one)

    def fake_sum(self, genome):  # the plain sum of the fake parts of a config
        config = self.space.decode(np.asarray(genome))
        total = 0.1 * (2 + len(self.space.depths))
        for s, row in enumerate(config.sparsity):
            for j, p in enumerate(row):
                nw = next(k for k in self._counts if k.stage == s and k.window == config.window_size[s]).num_windows
                total += 0.02 * (s + 1) * (1 + ss.ops.keep_count(p, nw)) + 0.01 * (j % 2)
        return total

    monkeypatch.setattr(Profiler, "_fake_sum", fake_sum, raising=False)
    settings = ProfileSettings(
        threads=1,
        warmup=0,
        repeats=1,
        rounds=1,
        calibration=calibration,
        flush_mb=0,
        in_model=False,
        head="seg",
        num_classes=3,
    )
    return Profiler(space, settings).run(out)


class FakeTimer(Timer):
    """Answers `factor` x the table's prediction of the config it is handed; counts the forwards it 'timed'."""

    def __init__(self, table: LatencyTable, factor: float) -> None:
        super().__init__()
        self.table, self.factor, self.calls = table, factor, 0

    def samples(self, fn, warmup, repeats, setup=None):
        self.calls += repeats
        return [self.factor * float(self.table.predict_many(fn.genome[None])[0])] * repeats


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A supernet of the tiny space and a (fake) table of it: (folder, space, table path)."""
    d = tmp_path_factory.mktemp("check")
    space, _ = tiny_supernet(d, SPACE)
    mp = pytest.MonkeyPatch()
    try:
        _profile(space, d / "table.json", mp)
    finally:
        mp.undo()
    return d, space, d / "table.json"


def _load(path: Path) -> LatencyTable:
    with warnings.catch_warnings():
        warnings.simplefilter("error", TableMachineWarning)  # this machine's table: no warning
        return LatencyTable.load(path)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------------------------------------
# the fingerprint


def test_fingerprint_names_the_hardware():
    fp = fingerprint("cpu")
    for key in (
        "cpu",
        "family",
        "model",
        "stepping",
        "physical_cores",
        "threads",
        "caches",
        "vector",
        "torch_capability",
        "memory_gib",
        "torch_threads",
    ):
        assert key in fp, key
    assert fp["threads"] == __import__("os").cpu_count()
    slug = machine_slug("cpu", fp)
    name, digest = slug.rsplit("-", 1)
    assert len(digest) == 8 and int(digest, 16) >= 0 and name == ss.latency.device_slug("cpu")
    # the hash follows the hardware, not the thread setting
    assert fingerprint_hash({**fp, "torch_threads": 99}) == fingerprint_hash(fp)
    assert fingerprint_hash({**fp, "stepping": "x"}) != fingerprint_hash(fp)
    assert fingerprint_diff(fp, fp) == []


def test_gpu_fingerprint_and_its_guard(monkeypatch):
    """Without a GPU, a CUDA fingerprint is the host's; with one (faked here), it names the GPU and the folder."""
    import types

    import sparsesearch.latency.env as env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "gpu" not in fingerprint("cuda")
    props = types.SimpleNamespace(
        name="NVIDIA H200", major=9, minor=0, multi_processor_count=132, total_memory=141 * 2**30
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(env, "_gpu_query", lambda index: {"driver_version": "570.1", "clocks.max.sm": "1980"})
    fp = fingerprint("cuda")
    assert fp["gpu"] == {
        "gpu": "NVIDIA H200",
        "capability": "9.0",
        "sm_count": 132,
        "gpu_memory_gib": 141,
        "max_sm_clock_mhz": "1980",
        "max_mem_clock_mhz": None,
        "driver": "570.1",
    }
    assert machine_slug("cuda", fp).startswith("nvidia-h200-")
    other = {**fp, "gpu": {**fp["gpu"], "sm_count": 114, "driver": "580.2"}}
    assert fingerprint_hash({**fp, "gpu": {**fp["gpu"], "driver": "580.2"}}) == fingerprint_hash(fp)  # not hardware
    assert fingerprint_diff(other, fp) == ["gpu.sm_count: 114 -> 132", "gpu.driver: 580.2 -> 570.1"]
    assert fingerprint_diff(fp, {k: v for k, v in fp.items() if k != "gpu"}) == ["gpu: NVIDIA H200 -> none"]


def test_the_profile_records_the_fingerprint(setup):
    _, _, path = setup
    table = _load(path)
    assert table.meta["fingerprint"]["cpu"] == fingerprint("cpu")["cpu"]
    assert table.meta["machine"] == machine_slug("cpu")
    assert ss.latency.default_table_path(table.space, ProfileSettings()).parts[1] == machine_slug("cpu")


def test_a_table_from_other_hardware_warns_in_one_line(setup, tmp_path, capsys):
    _, _, path = setup
    doc = json.loads(path.read_text())
    fp = doc["meta"]["fingerprint"]
    doc["meta"]["fingerprint"] = {**fp, "stepping": "99", "caches": {**fp["caches"], "L2": "1K"}}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    with pytest.warns(TableMachineWarning) as record:
        LatencyTable.load(other)
    assert len(record) == 1
    message = str(record[0].message)
    assert "\n" not in message and "stepping: 99 -> " in message and "L2: 1K -> " in message
    assert f"sparsesearch latency check --table {other}" in message
    capsys.readouterr()
    assert main(["latency", "show", "--table", str(other)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsesearch latency: warning: ") and "stepping" in err[0]


def test_an_old_table_without_fingerprint_gets_a_note(setup, tmp_path):
    _, _, path = setup
    doc = json.loads(path.read_text())
    del doc["meta"]["fingerprint"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    with pytest.warns(TableMachineWarning, match="records no hardware fingerprint"):
        LatencyTable.load(old)


# ---------------------------------------------------------------------------------------------------------
# the check and rescaled tables


@pytest.mark.parametrize("factor", [0.6, 1.0 / 0.6, 1.05])
def test_check_factor_on_a_fake_timer(setup, factor):
    _, _, path = setup
    table = _load(path)
    timer = FakeTimer(table, factor)
    result = check_table(table, timer=timer, rounds=3, repeats=2)
    assert result.factor == pytest.approx(factor, rel=1e-9)
    assert result.ok == (abs(factor - 1) <= 0.10)
    calibration = table.resolution_table().correction["calibration"]
    assert [r["genome"] for r in result.rows] == [c["genome"] for c in calibration]
    assert all(r["profile_ms"] == c["measured_ms"] for r, c in zip(result.rows, calibration))
    # one warm-up forward per config, then 3 interleaved rounds of 2
    assert timer.calls == len(calibration) * (1 + 3 * 2)
    assert "measured/predicted" in result.line() and "\n" not in result.line()


def test_check_without_calibration_configs_times_corners_and_random_ones(setup, tmp_path, monkeypatch):
    _, space, _ = setup
    table = _profile(space, tmp_path / "nocal.json", monkeypatch, calibration=0)
    result = check_table(table, timer=FakeTimer(table, 1.3), rounds=2, repeats=1)
    labels = [r["label"] for r in result.rows]
    assert labels[:2] == ["dense 64x64", "sparsest 64x64"] and len(labels) == 6
    assert result.factor == pytest.approx(1.3) and result.vs_profile is None


def test_rescaled_table_scales_every_prediction_and_round_trips(setup, tmp_path):
    _, space, path = setup
    table = _load(path)
    genomes = space.sample_genes(0, 50)
    scaled = table.rescaled(1.5, {"factor": 1.5})
    assert np.allclose(scaled.predict_many(genomes), 1.5 * table.predict_many(genomes), rtol=1e-12)
    cfg = space.decode(genomes[3])
    assert sum(scaled.parts(cfg).values()) == pytest.approx(scaled.predict(cfg), rel=1e-12)
    assert scaled.max_latency() == pytest.approx(1.5 * table.max_latency(), rel=1e-12)
    scaled.save(tmp_path / "scaled.json")
    again = _load(tmp_path / "scaled.json")
    assert again.meta["rescaled"]["factor"] == 1.5
    assert np.allclose(again.predict_many(genomes), scaled.predict_many(genomes))
    assert table.rescaled(2.0).rescaled(0.5).speed_factor == pytest.approx(1.0)
    with pytest.raises(LatencyTableError, match="positive"):
        table.rescaled(0.0)


def test_ensure_table_speed_rules(setup):
    _, _, path = setup
    table = _load(path)
    slow = FakeTimer(table, 1.0 / 0.6)
    assert ensure_table_speed(table, None, timer=slow) == (table, None)  # relative budget: nothing timed
    assert ensure_table_speed(table, 1.0, check=False, timer=slow) == (table, None)
    assert slow.calls == 0
    with pytest.raises(TableSpeedError) as err:
        ensure_table_speed(table, table.dense_latency(), timer=slow)
    text = str(err.value)
    assert "\n" not in text and "--rescale-table" in text and "0.8x" in text and "--no-table-check" in text
    assert f"sparsesearch profile --space {table.meta['space']['source']}" in text and f"--out {path}" in text
    # a budget every config meets even at the measured speed needs nothing
    big = 2.0 * table.max_latency()
    assert ensure_table_speed(table, big, timer=slow)[0] is table
    scaled, result = ensure_table_speed(table, table.dense_latency(), rescale=True, timer=slow)
    assert scaled.speed_factor == pytest.approx(result.factor) and scaled.meta["rescaled"]["check"]["factor"] > 1.6
    with pytest.raises(LatencyTableError, match="--no-table-check"):
        ensure_table_speed(table, 1.0, check=False, rescale=True)


def test_cli_latency_check(setup, monkeypatch, capsys, tmp_path):
    _, _, path = setup
    monkeypatch.setattr(check_mod, "check_timer", lambda table: FakeTimer(table, 1.0))
    assert main(["latency", "check", "--table", str(path), "--json", str(tmp_path / "c.json")]) == 0
    assert "measured/predicted 1.000" in capsys.readouterr().out
    assert json.loads((tmp_path / "c.json").read_text())["factor"] == 1.0
    monkeypatch.setattr(check_mod, "check_timer", lambda table: FakeTimer(table, 0.6))
    assert main(["latency", "check", "--table", str(path)]) == 1
    assert "OUTSIDE" in capsys.readouterr().out


def test_cli_predict_with_an_absolute_budget_checks(setup, monkeypatch, capsys, tmp_path):
    _, space, path = setup
    cfg = tmp_path / "c.json"
    space.uniform(0.5).save(cfg)
    monkeypatch.setattr(check_mod, "check_timer", lambda table: FakeTimer(table, 0.6))
    budget = f"{0.8 * _load(path).dense_latency():.4f}ms"
    assert main(["latency", "predict", "--table", str(path), str(cfg), "--latency", budget]) == 2
    assert "--rescale-table" in _one_line_error(capsys)
    assert main(["latency", "predict", "--table", str(path), str(cfg), "--latency", "0.8x"]) == 0
    assert main(["latency", "predict", "--table", str(path), str(cfg), "--latency", budget, "--rescale-table"]) == 0
    out = capsys.readouterr().out
    scaled = 0.6 * _load(path).predict(space.uniform(0.5))
    assert f"{cfg}: {scaled:.3f} ms" in out and "predictions rescaled" in out


# ---------------------------------------------------------------------------------------------------------
# evolve and export


def _cheap_flops(monkeypatch) -> None:
    """FLOPs are not what these tests are about, and fvcore traces each config for seconds on a busy 2-core VM."""
    monkeypatch.setattr(
        ss.flops,
        "count_flops",
        lambda model, res, cfg=None, batch=1: ss.flops.FlopReport(
            int(1e6 * (1 - cfg.mean_sparsity())), {"layers.0": int(1e6 * (1 - cfg.mean_sparsity()))}
        ),
    )


def _evolve(d: Path, out: Path, budget: str, *extra: str) -> list[str]:
    return [
        "evolve",
        "--supernet",
        str(d / "supernet.pt"),
        "--table",
        str(d / "table.json"),
        "--latency",
        budget,
        "--out",
        str(out),
        "--val-samples",
        "4",
        "--population",
        "4",
        "--generations",
        "1",
        "--no-refine",
        *extra,
    ]


def test_evolve_stops_rescales_or_goes_on(setup, monkeypatch, capsys, tmp_path):
    d, space, path = setup
    table = _load(path)
    timers: list[FakeTimer] = []

    def slow(t):  # the check says: this machine runs at 0.6x the table's speed
        timers.append(FakeTimer(t, 1.0 / 0.6))
        return timers[-1]

    monkeypatch.setattr(check_mod, "check_timer", slow)
    _cheap_flops(monkeypatch)
    budget = f"{0.5 * (table.min_latency() + table.max_latency()) / 0.6:.4f}ms"  # mid-range at the measured speed
    assert main(_evolve(d, tmp_path / "stop", budget)) == 2
    err = _one_line_error(capsys)
    assert "1.67x the time the table predicts" in err and "--rescale-table" in err and "0.8x" in err
    assert "sparsesearch profile" in err and not (tmp_path / "stop" / "best.json").exists()

    assert main(_evolve(d, tmp_path / "rescaled", budget, "--rescale-table")) == 0
    assert "predictions rescaled" in capsys.readouterr().out
    best = json.loads((tmp_path / "rescaled" / "best.json").read_text())
    assert best["table_check"]["factor"] == pytest.approx(1.0 / 0.6, rel=1e-4) and best["table_check"]["rescaled"]
    cfg = ss.SparsityConfig.from_dict(best["config"])
    assert best["latency_ms"] == pytest.approx(table.predict(cfg) / 0.6, rel=1e-9)
    assert best["latency_ms"] <= float(budget[:-2])
    pareto = json.loads((tmp_path / "rescaled" / "pareto.json").read_text())
    assert pareto["table_check"]["factor"] == best["table_check"]["factor"]

    n = len(timers)
    assert main(_evolve(d, tmp_path / "relative", "0.9x")) == 0
    assert len(timers) == n  # a relative budget does not time anything
    assert json.loads((tmp_path / "relative" / "best.json").read_text())["table_check"] is None
    assert main(_evolve(d, tmp_path / "unchecked", budget, "--no-table-check")) == 0
    assert len(timers) == n
    best = json.loads((tmp_path / "unchecked" / "best.json").read_text())
    assert best["table_check"] is None and best["latency_ms"] == pytest.approx(
        table.predict(ss.SparsityConfig.from_dict(best["config"])), rel=1e-9
    )
    capsys.readouterr()
    assert main(_evolve(d, tmp_path / "bad", budget, "--no-table-check", "--rescale-table")) == 2
    assert "--no-table-check" in _one_line_error(capsys)


def test_export_checks_a_best_json_with_an_absolute_budget(setup, monkeypatch, tmp_path):
    from sparsesearch.export import export_model

    d, space, path = setup
    table = _load(path)
    cfg = space.uniform(0.5)
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"config": cfg.to_dict(), "budget": "1.5ms", "budget_ms": 1.5}))
    monkeypatch.setattr(check_mod, "check_timer", lambda t: FakeTimer(t, 0.6))
    _cheap_flops(monkeypatch)
    with pytest.raises(TableSpeedError, match="rescale-table"):
        export_model(d / "supernet.pt", best, tmp_path / "x", table=path, measure=False)
    report = export_model(d / "supernet.pt", best, tmp_path / "y", table=path, measure=False, rescale_table=True)
    assert report.table_check["factor"] == pytest.approx(0.6) and report.table_check["rescaled"]
    assert report.predicted_ms == pytest.approx(0.6 * table.predict(cfg), rel=1e-9)
    card = json.loads((tmp_path / "y" / "card.json").read_text())
    assert card["table_check"]["factor"] == pytest.approx(0.6)
    plain = export_model(d / "supernet.pt", cfg, tmp_path / "z", table=path, measure=False)  # no budget: no check
    assert plain.table_check is None and plain.predicted_ms == pytest.approx(table.predict(cfg))


# ---------------------------------------------------------------------------------------------------------
# the correction: sum of the parts timed with hooks -> plain whole forward


@pytest.mark.parametrize("scale, offset, expect_scale", [(0.93, 0.3, 0.93), (0.5, 0.3, 1.0)])
def test_correction_maps_hooked_parts_onto_plain_forwards(tmp_path, monkeypatch, scale, offset, expect_scale):
    """In-model entries also time the plain forward; the table's correction is fitted so that the prediction of
    each in-model config is its plain forward (a scale outside [0.8, 1.25] falls back to the median offset)."""
    from tests.test_latency import DEMO, FAST, _fake_measure, _stat

    def with_plain(profiler, entry):
        out = _fake_measure(profiler, entry)
        if entry.part == "in_model":
            parts = sum(v.ms for k, v in out.items() if k != "total")
            out["plain"] = _stat(scale * parts + offset)
        return out

    monkeypatch.setattr(Profiler, "measure", with_plain)
    monkeypatch.setattr(Profiler, "measure_group", one_by_one)
    space = ss.SearchSpace.load(DEMO)
    profiler = Profiler(space, ProfileSettings(**{**FAST, "calibration": 2}, resolutions=((64, 64),)))
    table = profiler.run(tmp_path / "t.json")
    corr = table.resolution_table().correction
    assert corr["scale"] == pytest.approx(expect_scale, rel=1e-6) and "plain whole forward" in corr["method"]
    entries = [e for e in profiler.plan() if e.part == "in_model"]
    plain = np.array([with_plain(profiler, e)["plain"].ms for e in entries])
    predicted = table.predict_many(np.array([e.genome for e in entries]))
    if expect_scale != 1.0:
        assert np.allclose(predicted, plain, rtol=1e-5, atol=1e-5)
    else:  # offset only: the median in-model config is predicted exactly
        assert float(np.median(plain - predicted)) == pytest.approx(0.0, abs=1e-5)
