"""The plain-ViT family through the pipeline: zoo and spaces, FLOPs, profile / latency tables / validate, the quick
demo (adapt, evolve with its baselines, export + ONNX), and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.flops import count_flops
from sparsesearch.latency import LatencyTable, Profiler, ProfileSettings
from sparsesearch.models.family import get_family
from sparsesearch.ops import keep_count
from sparsesearch.testing import quick_profile_args

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "sam_demo.yaml"
SAM_B = ROOT / "search_spaces" / "sam_b.yaml"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_models_and_spaces_cli(capsys):
    assert main(["models", "samvit*"]) == 0
    out = capsys.readouterr().out
    assert out.count("samvit_") == 4 and "global [2, 5, 8, 11] groups [3, 3, 3, 3]" in out
    assert main(["space", str(SAM_B)]) == 0
    assert "depths [3, 3, 3, 3]" in capsys.readouterr().out
    assert main(["space", str(DEMO), "--sample", "2"]) == 0
    capsys.readouterr()
    assert main(["space", str(DEMO), "--sample", "-1"]) == 2
    assert "--sample -1" in _one_line_error(capsys)


def test_family_describes_the_parts():
    space = ss.SearchSpace.load(SAM_B)
    fam = get_family(space.architecture)
    arch = fam.arch(space.architecture)
    assert space.depths == (3, 3, 3, 3) and space.default_window == (14,) * 4
    assert [fam.block_variant(arch, s, b) for s in range(4) for b in range(3)] == ["window", "window", "global"] * 4
    assert fam.block_name(arch, 2, 1) == "blocks.7"
    shapes = fam.stage_shapes(arch, (1024, 1024))
    assert {(s.H, s.W, s.dim, s.heads) for s in shapes} == {(64, 64, 768, 12)}
    assert fam.geometry("global", 64, 64, 14).num_windows == 25  # padded to 70x70
    assert fam.fixed_parts(arch, "seg") == ["patch_embed", "neck", "head"]
    with torch.device("meta"):
        model = space.create_model(head=None)
    assert model.img_size == (1024, 1024)
    assert [n for n, _ in fam.model_parts(model, None)] == ["patch_embed", *(f"blocks.{i}" for i in range(12)), "neck"]


def test_flops_windowed_linear_global_quadratic():
    space = ss.SearchSpace.load(DEMO)
    model = space.create_model(head=None)
    dense = count_flops(model, 192, ss.SparsityConfig.dense(space.depths, 4))
    half = count_flops(model, 192, ss.SparsityConfig.uniform(0.5, space.depths, 4))
    kept = keep_count(0.5, 9) / 9  # 12x12 tokens, 3x3 windows of 4
    assert half.parts["blocks.0"] / dense.parts["blocks.0"] == pytest.approx(kept, rel=1e-6)
    # the global block's attention is over the kept tokens only: its FLOPs fall faster than the kept fraction
    assert half.parts["blocks.2"] / dense.parts["blocks.2"] < kept
    assert half.parts["patch_embed"] == dense.parts["patch_embed"] and half.parts["neck"] == dense.parts["neck"]


def test_profile_validate_predict(tmp_path, capsys):
    out = tmp_path / "sam.json"
    args = quick_profile_args(str(DEMO), "96x96", str(out))
    assert main(args) == 0
    table = LatencyTable.load(out)
    doc = json.loads(out.read_text())
    variants = {(b["stage"], b["window"], b.get("variant")) for b in doc["tables"][0]["blocks"]}
    assert variants == {(s, w, v) for s in (0, 1) for w in (3, 4) for v in ("window", "global")}
    assert set(doc["tables"][0]["fixed"]) == {"patch_embed", "neck", "head"}
    cfg = table.space.uniform(0.5)
    parts = table.parts(cfg)
    assert {f"blocks.{i}" for i in range(6)} <= set(parts)
    assert table.predict(cfg) == pytest.approx(sum(parts.values()))
    capsys.readouterr()
    assert main(["latency", "validate", "--table", str(out), "--n", "2", "--no-progress"]) == 0
    assert "MAPE" in capsys.readouterr().out


def test_profiler_plans_the_sam_b_space():
    space = ss.SearchSpace.load(SAM_B)
    profiler = Profiler(space, ProfileSettings(repeats=1, warmup=0, rounds=1))
    plan = profiler.plan()
    kinds = {e.kind.variant for e in plan if e.part == "block"}
    assert kinds == {"window", "global"}
    assert {e.name for e in plan if e.part == "fixed"} == {"patch_embed", "neck", "head"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("samdemo") / "run"
    code = main(["demo", "--quick", "--space", str(DEMO), "--out", str(out)])
    return out, code


def test_quick_demo_adapt_evolve_export(quick_demo):
    out, code = quick_demo
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in summary["rows"]]
    assert names[0] == "dense" and names[-1].startswith("searched")  # "searched (uniform 0.50)" when a baseline wins
    pareto = json.loads((out / "search" / "pareto.json").read_text())
    assert pareto["baselines"]["uniform_resize"] and pareto["baselines"]["uniform_sparsity"]
    card = json.loads((out / "export" / "card.json").read_text())
    assert card["onnx"]["ok"]
    from sparsesearch.export import load_exported

    model = load_exported(out / "export")
    assert isinstance(model, ss.models.SamViT)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_eval_cli_on_the_supernet(quick_demo, capsys):
    out, _ = quick_demo
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--supernet",
                str(out / "adapt" / "supernet.pt"),
                "--config",
                "dense",
                "--config",
                "uniform:0.5",
                "--val-samples",
                "4",
                "--json",
            ]
        )
        == 0
    )
    assert "uniform" in capsys.readouterr().out


def test_bad_input_is_one_line(quick_demo, tmp_path, capsys):
    out, _ = quick_demo
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sparsity": [[0.0, 0.0], [0.0, 0.0, 0.0]], "window_size": [4, 4]}))
    assert main(["flops", "--space", str(DEMO), "--config", str(bad)]) == 2
    assert "stage 0 of the model has 3 blocks" in _one_line_error(capsys)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"sparsity": [[0.0] * 3, [0.0] * 3], "window_size": [6, 4]}))
    assert main(["flops", "--space", str(DEMO), "--config", str(big)]) == 2
    assert "allows at most 4" in _one_line_error(capsys)
    swin = tmp_path / "swin.pth"
    torch.save(ss.create_model("swin_nano").state_dict(), swin)
    assert (
        main(
            [
                "adapt",
                "--space",
                str(DEMO),
                "--data",
                "synthetic:8",
                "--init",
                str(swin),
                "--steps",
                "1",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "Swin Transformer (swin_*) checkpoint but" in _one_line_error(capsys)
