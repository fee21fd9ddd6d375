"""ONNX Runtime as a runtime of latency tables: `sparsesearch profile --runtime onnxruntime` on a tiny space, the
table's runtime in its metadata and compatibility checks, parts and whole models exported and run in ONNX Runtime
against torch, and `latency validate` / `latency check` timing in the table's runtime. No test asserts a timing."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.errors import LatencyTableError
from sparsesearch.latency import (
    LatencyTable,
    Profiler,
    ProfileSettings,
    check_table,
    default_table_path,
    ensure_table_speed,
)
from sparsesearch.latency.fit import CalibrationWarning
from sparsesearch.latency.runtime import EXPORT_FORM, ort_call, table_runtime
from sparsesearch.models.family import get_family, prunable
from sparsesearch.supernet import SupernetMeta, save_supernet

pytest.importorskip("onnxruntime")

FAST: dict[str, Any] = dict(
    threads=1, warmup=0, repeats=1, rounds=1, calibration=2, flush_mb=0, quiet=False, malloc=False
)
#: the tiny space's model with a segmentation head (its part in ONNX Runtime takes the other levels as constants)
ORT: dict[str, Any] = dict(**FAST, head="seg", num_classes=3, runtime="onnxruntime")


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> ss.SearchSpace:
    path = tmp_path_factory.mktemp("space") / "quick.yaml"
    path.write_text(get_family("swin_nano").quick_space_yaml)
    return ss.SearchSpace.load(path)


@pytest.fixture(scope="module")
def ort_table(space: ss.SearchSpace, tmp_path_factory: pytest.TempPathFactory) -> tuple[LatencyTable, Path]:
    out = tmp_path_factory.mktemp("table") / "quick_ort.json"
    with warnings.catch_warnings():  # one-sample figures may miss their calibration configs: noise, not a failure
        warnings.simplefilter("ignore", CalibrationWarning)
        table = Profiler(space, ProfileSettings(**ORT)).run(out)
    return table, out


def _torch_copy(path: Path, out: Path) -> Path:
    """The same table relabelled as a torch table (as one profiled without --runtime would be)."""
    data = json.loads(path.read_text())
    data["meta"]["runtime"] = "torch"
    data["meta"]["runtime_version"] = torch.__version__
    out.write_text(json.dumps(data))
    return out


def test_an_onnxruntime_table_records_its_runtime_round_trips_and_predicts(ort_table, space):
    import onnxruntime as ort

    table, path = ort_table
    m = table.meta
    assert (m["runtime"], m["runtime_version"], m["in_model"]) == ("onnxruntime", ort.__version__, False)
    assert table.runtime == "onnxruntime"
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    # no in-model pass: every figure is the isolated one; the correction comes from the calibration configs
    rt = loaded.resolution_table()
    assert all(d["source"] == "isolated x 1.0000" for kt in rt.kinds.values() for d in kt.details)
    assert "calibration" in rt.correction and len(rt.correction["calibration"]) == 2
    # every kept count of the space's genes was measured, each block kind at each count
    for kt in rt.kinds.values():
        assert kt.ks[-1] == kt.num_windows and all(s.ms > 0 for s in kt.stats)
    genomes = np.stack([space.encode(space.densest()), *space.sample_genes(np.random.default_rng(0), 4)])
    preds = loaded.predict_many(genomes)
    assert preds.shape == (5,) and np.all(np.isfinite(preds))
    assert [loaded.predict(space.decode(g)) for g in genomes] == pytest.approx(preds.tolist())
    assert table_runtime({}) == "torch"


def test_a_part_and_a_whole_model_in_onnxruntime_give_torch_outputs(space):
    profiler = Profiler(space, ProfileSettings(**ORT))
    model = profiler.model()
    entries = [e for e in profiler.plan() if e.part in ("block", "fixed")]
    picked = [e for e in entries if e.part == "fixed"] + [e for e in entries if e.k is not None][:6]
    with torch.no_grad():
        for e in picked:
            plan = profiler._plan(e)
            x0 = profiler._randn(*plan.before_input)
            x = plan.before(x0) if plan.before is not None else x0
            got = ort_call(plan.run, x, model, threads=1)(x)[0]
            plan = profiler._plan(e)  # the torch part as the profile left it (backends restored)
            want = plan.run(x).numpy()
            assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, e.key
        config = space.decode(space.encode(space.sparsest()))
        prunable(model).set_config(config)
        image = profiler._randn(1, 3, 64, 64)
        call = ort_call(model, image, model, threads=1)
        got = call(image)[0]
        assert np.abs(got - model(image).numpy()).max() < 1e-4
    # every session takes its memory from the process's one shared arena (a profile holds one per entry)
    assert call.session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"


def test_a_table_of_one_runtime_is_refused_for_another_in_one_line(ort_table, tmp_path, capsys):
    table, path = ort_table
    torch_path = _torch_copy(path, tmp_path / "quick_torch.json")
    with pytest.raises(LatencyTableError, match=r"onnxruntime .* \(asked for torch\)"):
        table.check_compatible(runtime="torch")
    table.check_compatible()  # its own runtime
    table.check_compatible(runtime="onnxruntime")
    for table_path, asked in ((torch_path, "onnxruntime"), (path, "torch")):
        args = ["latency", "validate", "--table", str(table_path), "--n", "0", "--runtime", asked, "--no-progress"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"(asked for {asked})" in err and f"--runtime {asked}" in err
        assert main(["latency", "check", "--table", str(table_path), "--runtime", asked]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"(asked for {asked})" in err


def test_a_table_of_another_onnxruntime_version_or_none_installed_is_refused(ort_table, monkeypatch):
    table, _ = ort_table
    other = LatencyTable({**table.meta, "runtime_version": "0.0.1"}, table.space.to_dict(), table.resolution_tables)
    with pytest.raises(
        LatencyTableError, match=r"onnxruntime 0\.0\.1 \(running .*`sparsesearch profile --runtime onnx"
    ):
        other.check_compatible()
    # a table of an earlier export form timed other graphs than this version exports
    assert table.meta["export_form"] == EXPORT_FORM
    old = LatencyTable({**table.meta, "export_form": EXPORT_FORM - 1}, table.space.to_dict(), table.resolution_tables)
    with pytest.raises(LatencyTableError, match=rf"export form {EXPORT_FORM - 1} \(this version exports form"):
        old.check_compatible()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(LatencyTableError, match=r"pip install 'sparsesearch\[onnx\]'"):
        table.check_compatible()
    with pytest.raises(LatencyTableError, match=r"pip install 'sparsesearch\[onnx\]'"):
        ProfileSettings(runtime="onnxruntime").validate()


def test_onnxruntime_profiles_fp32_on_the_cpu_only(space):
    assert (
        default_table_path(space, ProfileSettings(runtime="onnxruntime")).name == "quick_64x64_fp32_b1_onnxruntime.json"
    )
    assert default_table_path(space, ProfileSettings()).name == "quick_64x64_fp32_b1.json"
    with pytest.raises(LatencyTableError, match="--device cpu --dtype fp32"):
        ProfileSettings(runtime="onnxruntime", dtype="bf16").validate()
    with pytest.raises(LatencyTableError, match="--runtime must be one of"):
        ProfileSettings(runtime="tvm").validate()


def test_validate_and_check_time_whole_models_in_the_tables_runtime(ort_table, tmp_path, capsys):
    table, path = ort_table
    report = tmp_path / "report.json"
    args = ["latency", "validate", "--table", str(path), "--n", "2", "--rounds", "1", "--repeats", "1"]
    assert main([*args, "--warmup", "0", "--report", str(report), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "MAPE" in out
    data = json.loads(report.read_text())
    assert data["settings"]["runtime"] == "onnxruntime" and len(data["rows"]) >= 3
    assert all(r["measured_ms"] > 0 for r in data["rows"])
    check = check_table(table, rounds=1, repeats=1)
    assert len(check.rows) == 2 and check.factor > 0
    assert all(row["measured_ms"] > 0 for row in check.rows)
    # what evolve and export run before trusting an absolute budget: the check, in the table's runtime
    rescaled, checked = ensure_table_speed(table, None, rescale=True, budget_s=0.2)
    assert checked is not None and rescaled.speed_factor == pytest.approx(checked.factor)
    assert rescaled.runtime == "onnxruntime"


def test_cli_profile_runtime_onnxruntime_writes_a_table_show_names_the_runtime(space, tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["profile", "--space", space.source, "--runtime", "onnxruntime", "--threads", "1", "--warmup", "0"]
    args += ["--repeats", "1", "--rounds", "1", "--calibration", "2", "--flush-mb", "0", "--default-malloc"]
    args += ["--head", "none"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        assert main([*args, "--no-progress", "--out", str(out)]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    table = LatencyTable.load(out)
    assert table.runtime == "onnxruntime" and table.meta["in_model"] is False
    assert main(["latency", "show", "--table", str(out)]) == 0
    assert f"runtime   onnxruntime {table.meta['runtime_version']}" in capsys.readouterr().out


def test_evolve_searches_against_an_onnxruntime_table(ort_table, space, tmp_path, capsys):
    _, path = ort_table
    kwargs = {"head": "seg", "num_classes": 3}
    model = space.create_model(**kwargs, seed=0)
    meta = SupernetMeta.create(space, kwargs, task="seg", num_classes=3, data="synthetic:4", image_size=(64, 64))
    save_supernet(tmp_path / "supernet.pt", model, meta)
    args = ["evolve", "--supernet", str(tmp_path / "supernet.pt"), "--table", str(path), "--latency", "1000ms"]
    args += ["--rescale-table", "--out", str(tmp_path / "run"), "--val-samples", "2", "--population", "4"]
    assert main([*args, "--generations", "1", "--no-refine"]) == 0
    assert "table speed check" in capsys.readouterr().out  # timed in ONNX Runtime, the table's runtime
    assert (tmp_path / "run" / "best.json").is_file()


_SPINNING = """
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from sparsesearch.errors import LatencyTableError
from sparsesearch.latency.runtime import OrtCall, ort_session

w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    initializer=[numpy_helper.from_array(w, "w")],
)
data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()
x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
a, b = (OrtCall(ort_session(data, 2, spinning=True)) for _ in range(2))
assert abs(a(x)[0] - x @ w).max() < 1e-5 and abs(b(x)[0] - x @ w).max() < 1e-5
try:
    ort_session(data, 1, spinning=True)
except LatencyTableError as e:
    print("refused:", e)
"""


def test_spinning_sessions_share_one_pool_of_one_thread_count():
    """`ort_session(spinning=True)` (bench_onnx --ort-spin): sessions of one process share one spinning pool and give
    the model's outputs; asking that process for another thread count is one clear error. In a subprocess: the pool
    belongs to ONNX Runtime's environment, one per process."""
    import subprocess  # noqa: PLC0415

    proc = subprocess.run([sys.executable, "-c", _SPINNING], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("refused:") and "2 threads, not 1" in line and "\n" not in line
