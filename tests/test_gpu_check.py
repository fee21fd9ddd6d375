"""The GPU check (benchmarks/gpu): its CPU dry run passes end to end, and its summary judges the goals right.

The dry run runs every step of the device command on CPU with tiny shapes and interpreted kernels, so an import,
typo or argument error is found here and not in a device minute. Here it leaves out two steps to stay within
about 45 s of CPU: "tests" (the suite runs tests/test_kernels.py itself) and "compile" (bench_model.py again, with
--compile; 20 s of dynamo tracing). `bash benchmarks/gpu/run.sh --cpu-dry-run` runs all seven; README.md beside
run.sh records that it passes under torch 2.13 and under the GPU image's torch 2.11.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import summary  # noqa: E402

STEPS = ["kernels", "model", "profile", "validate", "adapt"]


@pytest.mark.slow
def test_cpu_dry_run_passes_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_SITE": str(tmp_path / "site")}
    cmd = ["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--cpu-dry-run", "--only", *STEPS]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = (out / "gpu_run.log").read_text() if (out / "gpu_run.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]
    fig = json.loads((out / "figures.json").read_text())
    skipped = {"tests": "skipped (--only)", "compile": "skipped (--only)"}
    assert {k: v["status"] for k, v in fig["steps"].items()} == {**{s: "passed" for s in STEPS}, **skipped}
    assert set(fig["kernels"]["goals"]) == {"sg", "scatter", "inplace"}
    assert {r["op"] for r in fig["kernels"]["ops"]} == {"sg", "scatter", "inplace"}
    assert {(r["sparsity"], r["path"]) for r in fig["model"]["rows"]} == {
        (0.0, "dense"),
        (0.5, "triton"),
        (0.5, "torch"),
    }
    assert fig["validation"]["n"] >= 3 and fig["validation"]["mape_pct"] >= 0
    adapt = fig["adapt"]
    assert adapt["finished"] and adapt["steps"] == 2 and adapt["process_group"] == "gloo" and adapt["world_size"] == 1
    md = (out / "gpu_results.md").read_text()
    assert "CPU DRY RUN" in md and all(f"| {s} | passed |" in md for s in STEPS)
    assert len([p for p in out.rglob("*") if p.is_file()]) <= 8  # what the device tool brings back


def _rec(op: str, nbytes: int, speedup: float, frac: float) -> dict:
    return {"op": op, "bytes": nbytes, "speedup": speedup, "copy_fraction": frac}


def test_kernel_goals_judge_only_the_large_shapes():
    big, small = 64 * 2**20, 2**20
    goals = summary.kernel_goals({"ops": [
        _rec("sg", big, 2.5, 0.85), _rec("sg", big, 2.1, 0.81), _rec("sg", small, 1.1, 0.2),  # small: not judged
        _rec("scatter", big, 1.9, 0.9), _rec("scatter", big, 3.0, 0.95),  # one large shape below 2x: missed
        _rec("inplace", big, 4.0, 0.5),  # fast but far from the copy bandwidth: missed
        {"op": "sg", "bytes": big, "torch_ms": 1.0},  # torch only (no GPU): ignored
    ]})  # fmt: skip
    assert goals["sg"]["speedup_met"] and goals["sg"]["bandwidth_met"]
    assert goals["sg"]["speedup_min_large"] == 2.1 and goals["sg"]["speedup_min_all"] == 1.1
    assert goals["sg"]["shapes"] == 3 and goals["sg"]["large_shapes"] == 2
    assert not goals["scatter"]["speedup_met"] and goals["scatter"]["bandwidth_met"]
    assert goals["inplace"]["speedup_met"] and not goals["inplace"]["bandwidth_met"]
    only_small = summary.kernel_goals({"ops": [_rec("sg", small, 3.0, 0.9)]})
    assert "speedup_met" not in only_small["sg"]  # no large shape: no verdict


def test_pytest_counts_and_backbone_verdicts():
    tail = "FAILED tests/test_kernels.py::test_x - assert 1 == 2\n3 failed, 120 passed, 2 skipped, 4 warnings in 80.1s"
    assert summary.pytest_counts(tail) == {"failed": 3, "passed": 120, "skipped": 2}
    assert summary.pytest_counts("no summary") == {}
    model = {"model": "m", "resolution": [1024, 1024], "dtype": "fp16", "batch": 4, "clock": "CUDA events", "rows": [
        {"sparsity": 0.0, "path": "dense", "ms": 10.0, "x_dense": 1.0},
        {"sparsity": 0.5, "path": "triton", "ms": 4.9, "x_dense": 0.49},
        {"sparsity": 0.7, "path": "triton", "ms": 4.0, "x_dense": 0.40},
        {"sparsity": 0.7, "path": "torch", "ms": 3.0, "x_dense": 0.30},  # the goal is the Triton path's
    ]}  # fmt: skip
    lines = summary._render_model(model, None)
    assert any(ln.startswith("| 0.5 | triton |") and "**met**" in ln for ln in lines)
    assert any(ln.startswith("| 0.7 | triton |") and "**missed**" in ln for ln in lines)
    assert any(ln.startswith("| 0.7 | torch |") and "met" not in ln for ln in lines)
