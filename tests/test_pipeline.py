"""The end-to-end pipeline in its reduced mode, and the evolve command's handling of users' input."""

from __future__ import annotations

import json

import pytest
from sparsesearch.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, main(["demo", "--quick", "--out", str(out)])


def test_quick_demo_runs_every_stage(demo, capsys):
    out, rc = demo
    assert rc == 0
    for f in (
        "table/table.json",
        "pretrain/supernet.pt",
        "adapt/supernet.pt",
        "search/best.json",
        "search/pareto.json",
        "search/pareto.png",
        "search_pretrained/best.json",
        "export/model.safetensors",
        "export/card.json",
        "export/model.onnx",
        "summary.json",
    ):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    roles = [r["role"] for r in rows]
    assert roles[:2] == ["dense", "unadapted"] and roles[-2:] == ["training_free", "searched"]
    assert "uniform_sparsity" in roles
    assert rows[-1]["name"].startswith("searched")
    assert all(r["measured_ms"] > 0 and r["gflops"] > 0 and 0 <= r["accuracy"] <= 100 for r in rows)
    assert rows[0]["measured_x"] == rows[0]["predicted_x"] == 1.0
    unadapted = next(r for r in rows if r["role"] == "unadapted")
    assert {s for stage in unadapted["config"]["sparsity"] for s in stage} <= {0.0, 0.75}  # the quick space's 0.7
    assert summary["split"] == "test" and summary["samples"] == 4
    assert len(summary["verdict"]) == 3 and summary["verdict"][0].startswith("speed: ")
    free = summary["outcome"]["training_free"]  # the pretrained weights searched, against their uniform sparsity
    tf_row = rows[-2]
    assert free["gain"] == pytest.approx(tf_row["accuracy"] - free["accuracy"])
    assert tf_row["pretrained_accuracy"] == tf_row["accuracy"]
    pretrained_uniform = [r["pretrained_accuracy"] for r in rows if r["role"].startswith("uniform_sparsity")]
    assert pretrained_uniform and all(0 <= a <= 100 for a in pretrained_uniform)
    assert free["accuracy"] == max(
        r["pretrained_accuracy"] for r in rows if r["admitted"] and r["role"].startswith(("uniform_sparsity", "unad"))
    )
    measured = json.loads((out / "search" / "best.json").read_text())["pick"]["measured"]  # finalists re-timed
    assert 1 <= measured["finalists"] <= 3 and all(r["measured_ms"] > 0 for r in measured["rows"])


def test_second_demo_run_reuses_the_first(demo, capsys):
    out, _ = demo
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "reused from an earlier run: latency table, dense pretraining, supernet, search, training-free search, export"
        in text
    )
    assert "searched" in text and "unadapted @0.7" in text and "meas. x dense" in text
    assert "training-free searched (pretrained weights, no adaptation)" in text
    assert "\nspeed: " in text and "\naccuracy: " in text  # the verdict under the table
    assert "\nsearch gain over uniform sparsity: " in text


def test_a_demo_never_writes_into_another_spaces_run(demo, capsys, tmp_path):
    """The folder of one space's demo refuses another space's run (one line, exit 2) and is left as it was; each
    space has its own default folder."""
    from sparsesearch.pipeline import DemoOptions, demo_folder

    out, _ = demo
    before = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    for extra in (["--space", "search_spaces/sam_demo.yaml"], ["--space", "search_spaces/sam_demo.yaml", "--fresh"]):
        assert main(["demo", "--quick", "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds the quick demo of space 'demo'" in err, err
        assert "runs/demo_sam_demo_quick" in err
    assert main(["demo", "--out", str(out)]) == 2  # the full demo of the same space is another run too
    assert "holds the quick demo" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
    assert DemoOptions().effective().out == demo_folder("search_spaces/demo.yaml") == "runs/demo"
    assert DemoOptions(space="search_spaces/sam_demo.yaml").effective().out == "runs/demo_sam_demo"
    assert DemoOptions(quick=True).effective().out == "runs/demo_quick"
    assert main(["demo", "--algorithm", "sa", "--out", str(tmp_path / "never")]) == 2  # before any stage runs
    assert "unknown algorithm 'sa'" in capsys.readouterr().err and not (tmp_path / "never").exists()


def _evolve(out, *extra):
    return [
        "evolve",
        "--supernet",
        str(out / "adapt" / "supernet.pt"),
        "--table",
        str(out / "table" / "table.json"),
        "--val-samples",
        "4",
        "--population",
        "4",
        "--generations",
        "2",
        *extra,
    ]


@pytest.mark.parametrize(
    "budget, message",
    [
        ("fast", "cannot read latency budget 'fast'"),
        ("0.001ms", "below the fastest config of the space"),
        ("-1ms", "cannot read latency budget"),
    ],
)
def test_evolve_refuses_bad_budgets_in_one_line(demo, tmp_path, capsys, budget, message):
    out, _ = demo
    assert main(_evolve(out, f"--latency={budget}", "--out", str(tmp_path / "s"))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evolve_resume_and_never_clobber(demo, tmp_path, capsys):
    out, _ = demo
    argv = _evolve(out, "--latency", "100000ms", "--out", str(tmp_path / "s"))
    assert main(argv) == 0
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["latency_ms"] <= best["budget_ms"]
    capsys.readouterr()
    assert main(argv) == 2  # the folder holds a search: neither --resume nor --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0  # finished: resuming re-reads and rewrites the outputs
    assert json.loads((tmp_path / "s" / "best.json").read_text())["config"] == best["config"]
    assert main(_evolve(out, "--latency", "100000ms", "--out", str(tmp_path / "s"), "--seed", "3", "--resume")) == 2
    assert "other settings (seed)" in capsys.readouterr().err


def test_evolve_missing_inputs(tmp_path, capsys):
    assert (
        main(["evolve", "--supernet", "nope.pt", "--table", "t.json", "--latency", "30ms", "--out", str(tmp_path)]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_table_range_restricted_to_the_space_resolutions(demo):
    """The demo's table also holds smaller resolutions (for the resize baseline): the search range must not."""
    import sparsesearch as ss

    out, _ = demo
    table = ss.LatencyTable.load(out / "table" / "table.json")
    space = ss.SearchSpace.load(out / "quick.yaml")
    assert set(space.resolutions) < set(table.resolutions)
    cfg = table.min_config(space.resolutions)
    assert tuple(cfg.resolution) == space.resolutions[0]
    assert table.min_latency(space.resolutions) == pytest.approx(table.predict(cfg), rel=1e-12)
    assert table.min_latency(space.resolutions) >= table.min_latency()
    assert table.max_latency(space.resolutions) >= table.dense_latency(space.resolutions[0]) * 0.5


def test_run_demo_restores_the_thread_count(monkeypatch):
    """The library's demo runs its stages at `threads` and puts the caller's count back, also when a stage fails."""
    import torch
    from sparsesearch import pipeline

    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    seen = []

    def stages(options, say, progress):
        seen.append(torch.get_num_threads())
        raise RuntimeError("a stage failed")

    monkeypatch.setattr(pipeline, "_run_demo", stages)
    with pytest.raises(RuntimeError):
        pipeline.run_demo(pipeline.DemoOptions(quick=True, threads=wanted))
    assert seen == [wanted] and torch.get_num_threads() == before


def test_the_demo_profiles_with_the_allocator_the_process_has(monkeypatch):
    """run_demo asks for no allocator tuning of its own: its table records what the process runs with."""
    from sparsesearch import pipeline
    from sparsesearch.latency import malloc

    monkeypatch.setattr(malloc, "_MALLOC_TUNED", None)
    assert pipeline._malloc_tuned() is False
    monkeypatch.setattr(malloc, "_MALLOC_TUNED", "tuned")
    assert pipeline._malloc_tuned() is True
