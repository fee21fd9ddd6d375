"""Latency tables: profiling (resumable), the table format, prediction, compatibility checks, validation, CLI.

Timings are never asserted: logic tests use a deterministic fake measurement, and the few tests that time real
modules (resume, validation, CLI) only check what was measured and written.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.errors import LatencyTableError
from sparsesearch.latency import (
    CpuTimer,
    KindTable,
    LatencyTable,
    Profiler,
    ProfileSettings,
    Stat,
    default_table_path,
    partial_path,
    report_paths,
    validate,
    write_report,
)
from sparsesearch.latency.env import slugify
from sparsesearch.latency.measure import combine_rounds, retry_preempted, summarize, time_interleaved, time_parts
from sparsesearch.latency.resume import PartialProfileWarning
from sparsesearch.latency.structure import kinds_and_counts, space_hash, sparsity_for_count
from sparsesearch.ops import keep_count
from sparsesearch.testing import quick_profile_args

ROOT = Path(__file__).resolve().parents[1]
# The tests use their own copy of a demo-like space (swin_nano, pairs of blocks per gene, two window choices),
# so that they do not depend on how search_spaces/demo.yaml is tuned for the demo.
DEMO_YAML = """
name: demo
architecture: swin_nano
resolutions: [[256, 256]]
sparsity_choices: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s3, blocks: ["2.0", "2.1"]}
  - {name: s4, blocks: ["3.0", "3.1"], choices: [0.0]}
window_sizes: [[7, 8], [7, 8], [7, 8], [7]]
"""
_TMP = tempfile.TemporaryDirectory(prefix="sparsesearch-test-latency-")  # removed when the module is unloaded
DEMO = Path(_TMP.name) / "demo.yaml"
DEMO.write_text(DEMO_YAML)

# fast, deterministic settings: no cache flush, no waiting for a quiet machine, one round, glibc left alone
FAST = dict(threads=1, warmup=0, repeats=1, rounds=1, calibration=0, flush_mb=0, quiet=False, malloc=False)


def _space(tmp_path: Path, text: str, name: str = "tiny.yaml") -> ss.SearchSpace:
    path = tmp_path / name
    path.write_text(text)
    return ss.SearchSpace.load(path)


TINY_RULE = """
name: tiny_rule
architecture: swin_nano
resolutions: [[64, 64], [96, 96]]
sparsity_choices: [0.0, 0.25, 0.5, 0.75]
genes:
  - {name: a, blocks: ["0.0"]}
  - {name: b, blocks: ["0.1"]}
  - {name: c, blocks: ["1.0", "1.1", "2.0"]}
  - {name: d, blocks: ["2.1", "3.0", "3.1"], choices: [0.0, 0.5]}
window_sizes: [[4, 8], [4], [4, 7], [4]]
rules:
  non_decreasing_within_stage: true
"""


def _stat(ms: float) -> Stat:
    return Stat(ms, ms / 50, ms, ms * 0.98, 1)


def _block_ms(stage: int, window: int, shifted: bool, k: int, num_windows: int) -> float:
    ms = 0.01 * (stage + 1) * (1 + k) + 0.003 * window + (0.002 if shifted else 0.0)
    return ms * 0.8 if k == num_windows else ms  # the dense path runs without scoring/gather/scatter


def _fixed_ms(name: str, resolution: tuple[int, int]) -> float:
    return 0.05 + 0.001 * len(name) + 1e-6 * resolution[0]


#: in the fake, a part inside the model takes this much longer than alone (blocks, fixed parts)
IN_MODEL = (1.1, 1.2)


def _fake_measure(profiler: Profiler, entry):
    """A deterministic 'measurement' of an entry, increasing in the kept count."""
    if entry.part == "block":
        kind = entry.kind
        return _stat(_block_ms(kind.stage, kind.window, kind.variant == "shifted", entry.k, kind.num_windows))
    if entry.part == "fixed":
        return _stat(_fixed_ms(entry.name, entry.resolution))
    if entry.part == "model":
        return _stat(1.0 + 0.05 * sum(entry.genome))
    config = profiler.space.decode(np.asarray(entry.genome))
    out = {}
    for name, _ in profiler.model_parts():
        if ".blocks." in name:
            s, j = int(name.split(".")[1]), int(name.split(".")[3])
            kind = next(
                k
                for k in profiler._counts
                if k.resolution == entry.resolution
                and k.stage == s
                and k.window == config.window_size[s]
                and (k.variant == "shifted") == (j % 2 == 1)
            )
            k = keep_count(config.sparsity[s][j], kind.num_windows)
            out[name] = _stat(IN_MODEL[0] * _block_ms(s, kind.window, kind.variant == "shifted", k, kind.num_windows))
        else:
            out[name] = _stat(IN_MODEL[1] * _fixed_ms(name, entry.resolution))
    out["total"] = _stat(sum(v.ms for v in out.values()) + 0.05)
    return out


def one_by_one(profiler: Profiler, entries) -> list:
    """`Profiler.measure_group` through `Profiler.measure`, entry by entry (for a faked `measure`)."""
    return [profiler.measure(e) for e in entries]


def _fake_table(space: ss.SearchSpace, tmp_path: Path, monkeypatch, **settings) -> LatencyTable:
    monkeypatch.setattr(Profiler, "measure", _fake_measure)
    monkeypatch.setattr(Profiler, "measure_group", one_by_one)
    profiler = Profiler(space, ProfileSettings(**{**FAST, **settings}))
    return profiler.run(tmp_path / "fake.json")


@pytest.fixture
def demo64(tmp_path, monkeypatch) -> LatencyTable:
    space = ss.SearchSpace.load(DEMO)
    return _fake_table(space, tmp_path, monkeypatch, resolutions=((64, 64),), calibration=4)


# ---------------------------------------------------------------------------------------------------------
# statistics and timers


def test_trimmed_mean_and_combined_rounds():
    s = summarize([5.0, 1.0, 2.0, 3.0, 4.0, 100.0, 2.5, 3.5, 2.0, 3.0], trim=0.2)
    assert s.n == 10 and s.min == 1.0 and s.median == 3.0
    assert s.ms == pytest.approx(np.mean([2.0, 2.5, 3.0, 3.0, 3.5, 4.0]))  # 2 dropped at each end
    both = combine_rounds([Stat(3.0, 0.3, 3.0, 2.9, 5, 1), Stat(2.0, 0.4, 2.2, 1.9, 5, 2), Stat(4.0, 0.0, 4.1, 3.8, 5)])
    assert (both.ms, both.median, both.n, both.rejected, both.min) == (3.0, 3.0, 15, 3, 1.9)
    assert both.spread == pytest.approx(np.sqrt((0.09 + 0.16 + 0.0) / 3 + 1.0))
    assert both.rounds == (3.0, 2.0, 4.0)
    again = Stat.from_dict(both.to_dict())  # figures are stored to 1 ns
    assert again.rounds == both.rounds and again.spread == pytest.approx(both.spread, abs=1e-6)


def test_fastest_sample_statistic():
    """statistic "min": the figure is the fastest sample, per round and over rounds; the rest is as for "mean"."""
    samples = [5.0, 1.5, 2.0, 3.0, 4.0, 100.0, 2.5, 3.5, 2.0, 3.0]
    mean, fastest = summarize(samples, trim=0.2), summarize(samples, trim=0.2, statistic="min")
    assert fastest.ms == 1.5 and mean.ms > 2.0
    assert (fastest.spread, fastest.median, fastest.min, fastest.n) == (mean.spread, mean.median, mean.min, mean.n)
    rounds = [Stat(3.0, 0.3, 3.1, 3.0, 5), Stat(2.0, 0.4, 2.2, 2.0, 5), Stat(4.0, 0.0, 4.1, 4.0, 5)]
    both = combine_rounds(rounds, "min")
    assert both.ms == 2.0 and both.rounds == (3.0, 2.0, 4.0) and combine_rounds(rounds).ms == 3.0
    with pytest.raises(LatencyTableError, match="statistic must be one of mean, min"):
        summarize(samples, statistic="median")
    with pytest.raises(LatencyTableError, match="statistic must be one of"):
        CpuTimer(statistic="p10")


def test_timers_and_parts_report_the_fastest_sample(monkeypatch):
    """A CpuTimer and `time_parts` with statistic "min" on a fake clock: the figure is the fastest call."""
    durations = iter([3_000_000, 1_000_000, 2_000_000] * 10)
    wall = [0]

    def fn():
        wall[0] += next(durations)

    monkeypatch.setattr("sparsesearch.latency.measure.time.perf_counter_ns", lambda: wall[0])
    monkeypatch.setattr("sparsesearch.latency.measure.time.thread_time_ns", lambda: wall[0])
    assert CpuTimer(statistic="min").measure(fn, warmup=0, repeats=3).ms == pytest.approx(1.0)
    assert CpuTimer().measure(fn, warmup=0, repeats=3).ms == pytest.approx(2.0)

    part = torch.nn.Identity()
    times = iter([5, 9, 7, 8, 6, 4] * 4)

    def run():
        part(None)

    def post(module, args, output):
        wall[0] += next(times) * 1_000_000

    part.register_forward_hook(post)
    out = time_parts(run, [("p", part)], warmup=0, repeats=3, statistic="min")
    assert out["p"].ms == pytest.approx(5.0) and out["plain"].ms == pytest.approx(4.0)
    assert out["p"].median == pytest.approx(7.0)


def test_retry_preempted_reruns_up_to_the_budget():
    flags = iter([True, False, True, True, True, False])
    made: list[int] = []

    def call() -> tuple[int, bool]:
        made.append(len(made))
        return made[-1], next(flags)

    # call 0 preempted: made again; 1 kept; 2 preempted: made again; 3 preempted but the budget (2) is spent: kept
    assert retry_preempted(call, 3, 2) == ([1, 3, 4], 2)


def test_parts_and_plain_forwards_rerun_preempted_ones(monkeypatch):
    """`time_parts` on CPU throws away a forward during which the thread was preempted, hooked or plain."""
    wall, cpu = [0], [0]
    calls = []
    part = torch.nn.Identity()

    def run():
        calls.append(1)
        wall[0] += 1_000_000
        cpu[0] += 400_000 if len(calls) in (2, 5) else 1_000_000  # a hooked and a plain forward preempted
        part(None)

    monkeypatch.setattr("sparsesearch.latency.measure.time.perf_counter_ns", lambda: wall[0])
    monkeypatch.setattr("sparsesearch.latency.measure.time.thread_time_ns", lambda: cpu[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = time_parts(run, [("p", part)], warmup=0, repeats=2)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2 + 1 + 2 + 1
    assert (out["total"].n, out["total"].rejected, out["plain"].n, out["plain"].rejected) == (2, 1, 2, 1)
    assert out["plain"].ms == pytest.approx(1.0)


def test_profile_statistic_default_and_record(tmp_path, monkeypatch):
    """Tables hold trimmed means by default, fastest samples on request, and say which; a table without the
    field reads as "mean"; the check times with the table's statistic."""
    space = ss.SearchSpace.load(DEMO)
    assert Profiler(space, ProfileSettings(**FAST)).statistic == "mean"
    table = _fake_table(space, tmp_path, monkeypatch, resolutions=((64, 64),), statistic="min")
    assert table.meta["statistic"] == "min" and table.statistic == "min" and "fastest" in table.meta["statistic_note"]
    assert ss.latency.check_timer(table).statistic == "min"
    old = dict(table.to_dict())
    old["meta"] = {**old["meta"], "statistic": "per round, the mean of the middle 60% of samples"}
    assert LatencyTable.from_dict(old).statistic == "mean"
    with pytest.raises(LatencyTableError, match="--statistic must be one of mean, min"):
        ProfileSettings(statistic="p90").validate()


def test_cpu_timer_rejects_preempted_samples(monkeypatch):
    """A call during which the thread got less than 95% of the wall time on the CPU is re-run."""
    wall, cpu = [0], [0]
    calls = []

    def fn():
        calls.append(1)
        wall[0] += 1_000_000
        cpu[0] += 500_000 if len(calls) in (2, 3) else 1_000_000  # 2nd and 3rd calls preempted

    monkeypatch.setattr("sparsesearch.latency.measure.time.perf_counter_ns", lambda: wall[0])
    monkeypatch.setattr("sparsesearch.latency.measure.time.thread_time_ns", lambda: cpu[0])
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stat = CpuTimer().measure(fn, warmup=1, repeats=4)
    finally:
        torch.set_num_threads(torch_threads)
    assert stat.n == 4 and stat.rejected == 2 and len(calls) == 1 + 4 + 2
    assert stat.ms == pytest.approx(1.0)


def test_slug_and_default_path():
    assert slugify("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "intel-xeon-platinum-8375c-cpu-2-90ghz"
    assert slugify("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    space = ss.SearchSpace.load(DEMO)
    path = default_table_path(space, ProfileSettings(dtype="bf16", batch=4))
    assert path.parts[0] == "latency_tables" and path.name == "demo_256x256_bf16_b4.json"
    folder = path.parts[1]  # <device slug>-<8 hex of the hardware fingerprint>
    assert folder.startswith(slugify(ss.latency.device_name("cpu")) + "-") and len(folder.rsplit("-", 1)[1]) == 8


# ---------------------------------------------------------------------------------------------------------
# what is measured


@pytest.mark.parametrize("name", ["demo", "swin_t", "swin_s", "swin_b"])
def test_plans_of_the_shipped_spaces(name):
    space = ss.SearchSpace.load(ROOT / "search_spaces" / f"{name}.yaml")
    profiler = Profiler(space, ProfileSettings(**FAST))
    plan = profiler.plan()
    assert {e.part for e in plan} == {"block", "fixed", "in_model"}
    levels = profiler.level_genomes(0)
    assert levels and all(space.is_valid(g) for _, g in levels)
    # the in-model configs run every (block kind, kept count) the genes produce
    covered = set()
    for _, g in levels:
        config = space.decode(g)
        for kind in profiler._counts:
            if config.window_size[kind.stage] != kind.window:
                continue
            for j, p in enumerate(config.sparsity[kind.stage]):
                if (j % 2 == 1) == (kind.variant == "shifted"):
                    covered.add((kind, keep_count(p, kind.num_windows)))
    wanted = {(kind, k) for kind, counts in profiler._counts.items() for k in counts if k < kind.num_windows}
    assert wanted <= covered


def test_kept_counts_come_from_the_gene_choices():
    space = ss.SearchSpace.load(DEMO)
    counts = kinds_and_counts(space, [(256, 256)])
    by_key = {k.key: v for k, v in counts.items()}
    # stage 0 at 64x64, window 7: 10x10 windows; the nine sparsities give nine counts (plus dense = 100)
    assert by_key["256x256/s0/w7/regular"] == {keep_count(p, 100) for p in space.genes[0].choices}
    # stage 3 (gene s4 allows only 0.0): dense only
    assert all(v == {k.num_windows} for k, v in counts.items() if k.stage == 3)
    for k in range(1, 101):
        assert keep_count(sparsity_for_count(k, 100), 100) == k


def test_grid_when_there_are_too_many_counts(tmp_path, monkeypatch):
    space = ss.SearchSpace.load(DEMO)
    profiler = Profiler(space, ProfileSettings(**FAST, max_k_points=4))
    kind = next(k for k in profiler._counts if k.stage == 0 and k.window == 7 and k.variant != "shifted")
    ks = profiler.measured_counts(kind)
    pruned = sorted(k for k in profiler._counts[kind] if k < kind.num_windows)
    assert ks[-1] == kind.num_windows and ks[0] == pruned[0] and ks[-2] == pruned[-1] and len(ks) <= 5
    # a table measured on the grid still predicts every config of the space (by interpolation)
    table = _fake_table(space, tmp_path, monkeypatch, max_k_points=4)
    genomes = space.sample_genes(0, 50)
    assert np.all(np.isfinite(table.predict_many(genomes)))


def test_interpolation_exact_at_grid_points_and_monotone_between():
    stats = tuple(Stat(v, 0.0, v, v, 1) for v in (1.0, 1.4, 2.6, 3.0, 2.0))
    kt = KindTable(0, 7, "regular", 64, 64, 32, 1, 100, (10, 30, 60, 90, 100), stats)
    for k, s in zip(kt.ks, stats):
        assert kt.latency(k) == s.ms  # exact at the measured counts (the dense one included)
    values = [kt.latency(k) for k in range(10, 91)]
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone between increasing points
    assert kt.latency(20) == pytest.approx(1.2)
    with pytest.raises(LatencyTableError, match="outside the measured counts"):
        kt.latency(95)  # between the last pruned count and the dense one: never interpolated
    with pytest.raises(LatencyTableError):
        kt.latency(5)


# ---------------------------------------------------------------------------------------------------------
# the table


def test_table_round_trip(demo64, tmp_path):
    path = tmp_path / "t.json"
    demo64.save(path)
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.to_dict() == demo64.to_dict()
    assert loaded.meta["space"]["hash"] == space_hash(ss.SearchSpace.load(DEMO))
    for key in ("device", "torch", "triton", "threads", "dtype", "batch", "resolutions", "warmup", "repeats", "date"):
        assert key in loaded.meta
    genomes = loaded.space.sample_genes(1, 20)
    np.testing.assert_array_equal(loaded.predict_many(genomes), demo64.predict_many(genomes))


def test_prediction_is_the_sum_of_parts_by_hand(demo64):
    raw = demo64.to_dict()
    (res_table,) = raw["tables"]
    entries = {(b["stage"], b["window"], b["variant"] == "shifted"): b for b in res_table["blocks"]}
    space = demo64.space
    for seed in range(5):
        config = space.sample(seed)
        total = sum(s["ms"] for s in res_table["fixed"].values())
        for stage, (row, window) in enumerate(zip(config.sparsity, config.window_size)):
            for j, p in enumerate(row):
                b = entries[(stage, window, j % 2 == 1)]
                k = keep_count(p, b["num_windows"])
                (point,) = [q for q in b["points"] if q["k"] == k]
                total += point["ms"]
        corr = res_table["correction"]
        expected = corr["offset_ms"] + corr["scale"] * total
        assert demo64.predict(config) == pytest.approx(expected, rel=1e-12)
        parts = demo64.parts(config)
        assert sum(parts.values()) == pytest.approx(expected, rel=1e-12)
        assert len([k for k in parts if ".blocks." in k]) == sum(space.depths)


def test_correction_fitted_on_calibration_runs(demo64):
    corr = demo64.resolution_table().correction
    assert set(corr) >= {"offset_ms", "scale", "calibration"}
    assert len(corr["calibration"]) == 4
    # the dense and the sparsest corners are always among the calibration configs
    genomes = [c["genome"] for c in corr["calibration"]]
    space = demo64.space
    assert space.encode(space.densest()).tolist() in genomes and space.encode(space.sparsest()).tolist() in genomes


def test_predict_many_equals_predict(tmp_path, monkeypatch):
    space = _space(tmp_path, TINY_RULE)
    table = _fake_table(space, tmp_path, monkeypatch, calibration=3)
    genomes = space.sample_genes(3, 300)
    configs = [space.decode(g) for g in genomes]
    one_by_one = np.array([table.predict(c) for c in configs])
    np.testing.assert_allclose(table.predict_many(genomes), one_by_one, rtol=1e-12)
    np.testing.assert_allclose(table.predict_many(configs), one_by_one, rtol=1e-12)
    # genomes of the same space listing its resolutions in another order are remapped
    data = space.to_dict()
    data["resolutions"] = [[96, 96], [64, 64]]
    flipped = ss.SearchSpace(data, "flipped")
    g2 = genomes.copy()
    g2[:, -1] = 1 - g2[:, -1]
    np.testing.assert_allclose(table.predict_many(g2, space=flipped), one_by_one, rtol=1e-12)
    assert table.predict_many(np.zeros((0, space.n_var), dtype=np.int64)).shape == (0,)


def test_min_max_and_dense_latency_over_the_space(tmp_path, monkeypatch):
    space = _space(tmp_path, TINY_RULE)
    table = _fake_table(space, tmp_path, monkeypatch)
    grids = np.stack(np.meshgrid(*[np.arange(u + 1) for u in space.upper_bounds], indexing="ij"), -1)
    every = grids.reshape(-1, space.n_var)
    valid = every[[space.is_valid(g) for g in every]]
    lat = table.predict_many(valid)
    assert table.min_latency() == pytest.approx(lat.min(), rel=1e-12)
    assert table.max_latency() == pytest.approx(lat.max(), rel=1e-12)
    assert table.predict(table.min_config()) == table.min_latency()  # exactly: the same sum
    assert table.predict(table.max_config((96, 96))) == table.max_latency((96, 96))
    assert space.is_valid(space.encode(table.max_config()))
    at96 = valid[:, -1] == space.resolutions.index((96, 96))
    assert table.min_latency((96, 96)) == pytest.approx(lat[at96].min(), rel=1e-12)
    assert table.max_latency([(64, 64), (96, 96)]) == pytest.approx(lat.max(), rel=1e-12)
    assert table.max_latency([(64, 64)]) == pytest.approx(lat[~at96].max(), rel=1e-12)
    with pytest.raises(LatencyTableError, match="no entries for resolution"):
        table.min_latency((128, 128))
    dense = ss.SparsityConfig.dense(space.depths, [4, 4, 7, 4], (96, 96))  # the default 7 where it is a choice
    assert table.dense_latency((96, 96)) == pytest.approx(table.predict(dense), rel=1e-12)


def test_foreign_table_is_refused(demo64):
    demo64.check_compatible(device="cpu", dtype="fp32", batch=1, threads=1)  # its own setup
    cases = [
        ({"device": "AMD EPYC 7763 64-Core Processor"}, {}, "device 'AMD EPYC"),
        ({}, {"dtype": "bf16"}, "dtype fp32"),
        ({}, {"batch": 4}, "batch 1"),
        ({"torch": "2.0.1+cpu"}, {}, "torch 2.0.1"),
        (
            {"device_type": "cuda", "device": "NVIDIA H100"},
            {},
            "CUDA device" if not torch.cuda.is_available() else "H100",
        ),
        ({}, {"device": "cuda"}, "device cpu"),
    ]
    for meta_change, kwargs, message in cases:
        table = LatencyTable.from_dict({**demo64.to_dict(), "meta": {**demo64.meta, **meta_change}}, "foreign.json")
        with pytest.raises(LatencyTableError, match=message) as err:
            table.check_compatible(**kwargs)
        assert "\n" not in str(err.value) and "--allow-foreign-table" in str(err.value)
    with pytest.raises(LatencyTableError, match="torch"):
        demo64.check_compatible(torch_version="9.9.9")


def test_table_checks_its_space(demo64, tmp_path):
    demo64.check_space(demo64.space)
    other = ss.SearchSpace.load(ROOT / "search_spaces" / "swin_t.yaml")
    with pytest.raises(LatencyTableError, match="measured for space 'demo'"):
        demo64.check_space(other)
    with pytest.raises(LatencyTableError, match="lacks resolution"):
        demo64.check_space(ss.SearchSpace.load(DEMO))  # demo is 256x256; the fixture measured 64x64
    with pytest.raises(LatencyTableError, match="no entries for resolution"):
        demo64.predict(demo64.space.uniform(0.0, None).__class__.dense(demo64.space.depths, 7, (128, 128)))


def test_malformed_tables(demo64, tmp_path):
    good = demo64.to_dict()
    bad_docs = {
        "is not a sparsesearch latency table": {"hello": 1},
        "version": {**good, "version": 99},
        "meta lacks": {**good, "meta": {k: v for k, v in good["meta"].items() if k != "dtype"}},
        "does not cover its own space": {
            **good,
            "tables": [{**good["tables"][0], "blocks": good["tables"][0]["blocks"][:3]}],
        },
    }
    for message, doc in bad_docs.items():
        with pytest.raises(LatencyTableError, match=message):
            LatencyTable.from_dict(doc, "x.json")
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(LatencyTableError, match="not valid JSON"):
        LatencyTable.load(path)
    with pytest.raises(LatencyTableError, match="does not exist"):
        LatencyTable.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------------
# real measurements (tiny)


class _CountingTimer(CpuTimer):
    """Counts measurements and raises KeyboardInterrupt on the one numbered `fail_at` (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__(min_cpu_fraction=0.0)
        self.calls = 0
        self.fail_at = fail_at

    def _count(self) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt

    def measure(self, fn, warmup, repeats, setup=None):
        self._count()
        return super().measure(fn, warmup, repeats, setup)

    def measure_parts(self, run, parts, warmup, repeats):
        self._count()
        return super().measure_parts(run, parts, warmup, repeats)


def test_killed_profile_resumes(tmp_path):
    space = ss.SearchSpace.load(DEMO)
    settings = ProfileSettings(**{**FAST, "rounds": 2, "calibration": 2}, resolutions=((32, 32),))
    out = tmp_path / "t.json"
    plan = Profiler(space, settings).plan()
    finished = len(plan) + sum(e.part == "fixed" for e in plan)  # round 1, then round 2's fixed parts
    first = _CountingTimer(fail_at=finished + 1)  # killed in round 2's first block entry
    with pytest.raises(KeyboardInterrupt):
        Profiler(space, settings, timer=first).run(out)
    assert not out.exists()
    saved = json.loads(partial_path(out).read_text())["entries"]
    assert sum(len(v) for k, v in saved.items() if "|" not in k) == finished  # every finished measurement was saved

    second = _CountingTimer()
    profiler = Profiler(space, settings, timer=second)
    starts = []
    table = profiler.run(out, on_start=lambda done, total: starts.append((done, total)))
    total = 2 * len(profiler.plan())
    assert starts == [(finished, total)]
    assert second.calls == total - finished  # only the rest was measured
    assert out.exists() and not partial_path(out).exists()
    for stats in saved.values():  # the kept measurements made it into the table
        assert len(stats) >= 1

    # an uninterrupted run gives a table of the same structure
    fresh = Profiler(space, settings, timer=_CountingTimer()).run(tmp_path / "u.json")

    def shape(t):
        return [
            (r.resolution, sorted(r.fixed), sorted((k, kt.ks) for k, kt in r.kinds.items()))
            for r in t.resolution_tables
        ]

    assert shape(fresh) == shape(table)
    assert set(fresh.meta) == set(table.meta)


def test_partial_results_of_other_settings_are_ignored(tmp_path):
    space = ss.SearchSpace.load(DEMO)
    out = tmp_path / "t.json"
    settings = ProfileSettings(**FAST, resolutions=((32, 32),))
    with pytest.raises(KeyboardInterrupt):
        Profiler(space, settings, timer=_CountingTimer(fail_at=6)).run(out)
    other = ProfileSettings(**{**FAST, "repeats": 2}, resolutions=((32, 32),))
    timer = _CountingTimer()
    profiler = Profiler(space, other, timer=timer)
    with pytest.warns(PartialProfileWarning, match="other settings"):
        profiler.run(out)
    # every entry measured once; whole forwards (in-model, calibration) one call per forward, interleaved
    assert timer.calls == sum(2 if e.part in ("in_model", "model") else 1 for e in profiler.plan())


def test_profile_times_the_real_block(tmp_path):
    """Block entries run the model's own SwinBlock with the sparsity that keeps k windows."""
    space = ss.SearchSpace.load(DEMO)
    profiler = Profiler(space, ProfileSettings(**FAST, resolutions=((64, 64),)))
    entry = next(e for e in profiler.plan() if e.part == "block" and e.kind.stage == 0 and e.k < e.kind.num_windows)
    fn, setup = profiler.entry_fn(entry)
    block = profiler.model().layers[0].blocks[1 if (entry.kind.variant == "shifted") else 0]
    calls = []
    handle = block.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    with torch.inference_mode():
        setup()
        fn()
    handle.remove()
    assert calls == [(1, 16, 16, 32)]
    geom = block.geometry(16, 16)
    assert keep_count(block.sparsity, geom.num_windows) == entry.k and block.window_size == entry.kind.window
    assert not block.training


def test_validate_writes_report_and_plot(tmp_path):
    space = ss.SearchSpace.load(DEMO)
    out = tmp_path / "t.json"
    table = Profiler(space, ProfileSettings(**{**FAST, "calibration": 2}, resolutions=((32, 32),))).run(out)
    report = validate(table, n=3, seed=0, quiet=False)
    labels = [r.label for r in report.rows]
    assert labels[0] == "dense" and "uniform 0.8" in labels and sum(lbl.startswith("random") for lbl in labels) == 3
    assert all(not lbl.startswith("profile check") for lbl in labels)
    assert len(report.drift) == 2 and report.speed_vs_profile > 0  # the two calibration configs timed again
    s = report.summary()
    assert set(s) >= {"mape_pct", "within_10_pct", "kendall_tau", "worst_error_pct"}
    json_path, png_path = report_paths(out)
    assert json_path.name == "t.validation.json" and png_path.name == "t.validation.png"
    write_report(report, json_path, png_path)
    data = json.loads(json_path.read_text())
    assert data["summary"]["n"] == len(report.rows) and png_path.read_bytes()[:4] == b"\x89PNG"


class _SequenceTimer(CpuTimer):
    """Runs nothing; the i-th timed call (warm-up calls excluded) measures i ms, and the configs it saw are kept."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(trim=0.0)
        self.model = model
        self.timed: list[tuple] = []
        self.events: list[tuple[str, tuple]] = []  # ("untimed" | "timed", config) in call order

    def measure(self, fn, warmup, repeats, setup=None):
        cfg = ss.models.family.prunable(self.model).config
        key = tuple(map(tuple, cfg.sparsity)) + (cfg.resolution,)
        self.events += [("untimed", key)] * warmup
        samples = []
        for _ in range(repeats):
            self.timed.append(key)
            self.events.append(("timed", key))
            samples.append(float(len(self.timed) - 1))
        return summarize(samples, self.trim)


def test_validation_interleaves_configs_forward_by_forward(tmp_path, monkeypatch):
    """Each pass times every config once, in turn, in order of predicted time (every other pass reversed); a
    round is `repeats` passes; a config's round figure is the mean of its samples of that round."""
    space = ss.SearchSpace.load(DEMO)
    table = _fake_table(space, tmp_path, monkeypatch, resolutions=((32, 32),), calibration=0)
    module = importlib.import_module("sparsesearch.latency.validate")
    model, _ = module.table_model(table)
    timer = _SequenceTimer(model)
    monkeypatch.setattr(module, "table_model", lambda t: (model, {(32, 32): torch.zeros(1)}))
    settings = ss.latency.ValidationSettings(n=2, seed=0, warmup=1, repeats=3, rounds=2, drift_check=False)
    report = validate(table, settings, timer=timer)
    again = validate(table, settings, timer=_SequenceTimer(model), n=1)  # a field by name overrides the settings
    assert len(again.rows) < len(report.rows) and again.settings["n_random"] == 1
    with pytest.raises(LatencyTableError, match="unknown setting.*repeat"):
        validate(table, settings, repeat=3)
    n = len(report.rows)
    assert len(timer.timed) == n + 2 * 3 * n  # one warm-up call each (warmup=1), then 2 rounds x 3 passes
    passes = [timer.timed[j : j + n] for j in range(n, len(timer.timed), n)]
    assert len(set(passes[0])) == n  # every config once per pass
    assert all(p == (passes[0] if i % 2 == 0 else passes[0][::-1]) for i, p in enumerate(passes))
    keys = [tuple(map(tuple, table.space.decode(np.array(r.genome)).sparsity)) for r in report.rows]
    by_prediction = [keys[i] for i in np.argsort([r.predicted for r in report.rows], kind="stable")]
    assert [key[:-1] for key in passes[0]] == by_prediction != keys  # (the fake table reorders them)
    # every timed forward follows an untimed forward of its own config (a forward right after another config is
    # slower: the dense ones more)
    timed_at = [i for i, (kind, _) in enumerate(timer.events) if kind == "timed"][n:]  # after the warm-up calls
    assert len(timed_at) == 2 * 3 * n and all(timer.events[i - 1] == ("untimed", timer.events[i][1]) for i in timed_at)
    for key, row in zip(keys, report.rows):
        at = [n + p * n + passes[p].index(next(k for k in passes[p] if k[:-1] == key)) for p in range(6)]
        round0, round1 = np.mean(at[:3]), np.mean(at[3:])
        assert row.measured.rounds == pytest.approx((round0, round1))
        assert row.measured.ms == pytest.approx((round0 + round1) / 2) and row.measured.n == 6


# ---------------------------------------------------------------------------------------------------------
# CLI


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_profile_and_validate(tmp_path, capsys):
    out = tmp_path / "cli.json"
    args = quick_profile_args(str(DEMO), "32x32", str(out))
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out and out.exists()
    assert main(["latency", "validate", "--table", str(out), "--n", "2", "--no-progress", "--space", str(DEMO)]) == 2
    assert "lacks resolution" in _one_line_error(capsys)  # demo.yaml is 256x256, the table 32x32
    assert main(["latency", "validate", "--table", str(out), "--n", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "MAPE" in text and "Kendall tau" in text and report_paths(out)[1].exists()
    first = report_paths(out)[0].read_bytes()
    assert main(["latency", "validate", "--table", str(out), "--n", "1", "--no-progress"]) == 0  # a second run
    assert report_paths(out)[0].read_bytes() == first  # keeps the first report
    assert (tmp_path / f"{out.stem}.validation2.json").exists() and (tmp_path / f"{out.stem}.validation2.png").exists()
    assert report_paths(out, keep_existing=True)[0].name == f"{out.stem}.validation3.json"
    second = tmp_path / "run2.json"  # --report: the PNG takes the report's name
    assert main(["latency", "validate", "--table", str(out), "--n", "1", "--no-progress", "--report", str(second)]) == 0
    assert second.exists() and (tmp_path / "run2.png").exists()
    capsys.readouterr()
    assert main(["latency", "show", "--table", str(out)]) == 0
    cfg = tmp_path / "c.json"
    LatencyTable.load(out).space.uniform(0.0).save(cfg)
    assert main(["latency", "predict", "--table", str(out), str(cfg)]) == 0
    assert " ms" in capsys.readouterr().out


def test_cli_bad_input(tmp_path, capsys, demo64):
    missing = tmp_path / "nope.json"
    assert main(["latency", "validate", "--table", str(missing)]) == 2
    assert "does not exist" in _one_line_error(capsys)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    assert main(["latency", "validate", "--table", str(broken)]) == 2
    assert "not valid JSON" in _one_line_error(capsys)
    good = tmp_path / "good.json"
    demo64.save(good)
    swin_t = str(ROOT / "search_spaces" / "swin_t.yaml")
    assert main(["latency", "validate", "--table", str(good), "--space", swin_t]) == 2
    assert "not for 'swin_t'" in _one_line_error(capsys)
    foreign = tmp_path / "foreign.json"
    LatencyTable.from_dict({**demo64.to_dict(), "meta": {**demo64.meta, "batch": 8}}, "f").save(foreign)
    assert (
        main(["latency", "predict", "--table", str(foreign), str(good), "--allow-foreign-table"]) == 2
    )  # not a config
    _one_line_error(capsys)
    foreign_torch = tmp_path / "foreign_torch.json"
    LatencyTable.from_dict({**demo64.to_dict(), "meta": {**demo64.meta, "torch": "1.0"}}, "f").save(foreign_torch)
    assert main(["latency", "validate", "--table", str(foreign_torch)]) == 2
    assert "torch 1.0" in _one_line_error(capsys)
    assert main(["profile", "--space", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert main(["profile", "--space", str(DEMO), "--batch", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--batch" in _one_line_error(capsys)


def test_predict_many_is_fast_enough_to_search(demo64):
    """Not a timing assertion: just exercises 100k genomes in one call (the benchmark reports the rate)."""
    genomes = demo64.space.sample_genes(0, 100_000)
    t0 = time.perf_counter()
    lat = demo64.predict_many(genomes)
    assert lat.shape == (100_000,) and np.all(lat > 0)
    assert time.perf_counter() - t0 >= 0.0


def test_in_model_figures_replace_isolated_ones(tmp_path, monkeypatch):
    """Parts timed inside whole forwards are what the table predicts with; counts the in-model pass did not
    run get their isolated time scaled by the kind's in-model/isolated ratio."""
    space = ss.SearchSpace.load(DEMO)
    table = _fake_table(space, tmp_path, monkeypatch, max_k_points=4)
    rt = table.resolution_table()
    for name, stat in rt.fixed.items():
        assert stat.ms == pytest.approx(IN_MODEL[1] * rt.fixed_details[name]["isolated"]["ms"], rel=1e-5)
        assert rt.fixed_details[name]["source"] == "in-model"
    sources = set()
    for kt in rt.kinds.values():
        for stat, detail in zip(kt.stats, kt.details):
            assert stat.ms == pytest.approx(IN_MODEL[0] * detail["isolated"]["ms"], rel=1e-4)
            sources.add(detail["source"].split(" x ")[0])
    assert sources == {"in-model", "isolated"}  # the grid has counts no gene choice produces
    profiler = Profiler(space, ProfileSettings(**FAST, resolutions=((64, 64),)))
    levels = profiler.level_genomes(0)
    assert len(levels) == 2 * 9 and all(space.is_valid(g) for _, g in levels)


def test_tune_malloc_in_a_subprocess():
    """mallopt is process-wide, so it is exercised in a child process (glibc: it reports what it set)."""
    import subprocess
    import sys

    code = "from sparsesearch.latency import tune_malloc; a = tune_malloc(); print(a == tune_malloc(), a)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("True")


def test_time_interleaved_order_alternates_and_is_checked():
    """`order` sets the even passes' order, the odd ones run it reversed; anything but a permutation is refused."""
    seen: list[int] = []
    runs = [(lambda i=i: seen.append(i), lambda: None) for i in range(3)]
    stats = time_interleaved(runs, CpuTimer(trim=0.0), 0, 2, 2, order=[2, 0, 1])
    assert seen[3:] == [2, 0, 1, 1, 0, 2, 2, 0, 1, 1, 0, 2] and [len(s) for s in stats] == [2, 2, 2]
    with pytest.raises(LatencyTableError, match="permutation"):
        time_interleaved(runs, CpuTimer(), 0, 1, 1, order=[0, 0, 1])


def test_profile_whole_forwards_run_in_order_of_expected_time():
    """The in-model and calibration forwards of a round: each pass from the most to the least work expected
    (pixels x kept fraction), every other pass reversed."""
    space = ss.SearchSpace.load(DEMO)
    profiler = Profiler(space, ProfileSettings(**{**FAST, "resolutions": ((64, 64), (32, 32)), "calibration": 4}))
    net = ss.models.family.prunable(profiler.model())
    seen: list[tuple] = []

    class Recorder(CpuTimer):
        def measure(self, fn, warmup, repeats, setup=None):
            cfg = net.config
            seen.append((cfg.resolution, tuple(map(tuple, cfg.sparsity))))
            return Stat(1.0, 0.0, 1.0, 1.0, 1)

        def measure_parts(self, run, parts, warmup, repeats):
            return {"total": self.measure(run, warmup, repeats)}

    profiler._plain_timer = Recorder()
    profiler.settings = dataclasses.replace(profiler.settings, repeats=2)
    entries = [e for e in profiler.plan() if e.part in ("in_model", "model")]
    profiler.measure_group(entries)
    n = len(entries)
    assert len(seen) == 2 * n
    work = [r[0] * r[1] * np.mean([1 - p for stage in s for p in stage]) for r, s in seen[:n]]
    assert work == sorted(work, reverse=True) and len(set(seen[:n])) > 2
    assert seen[n:] == seen[:n][::-1]
