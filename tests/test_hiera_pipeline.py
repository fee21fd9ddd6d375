"""SAM 2's Hiera family through the pipeline: zoo and spaces, the family's description of its parts, FLOPs, profile /
latency tables / validate / predict, the profiler's plan of the sam2_t space, the quick demo (adapt, evolve with its
baselines, export + ONNX), and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import torch
from sparsesearch.cli import main
from sparsesearch.flops import count_flops
from sparsesearch.latency import LatencyTable, Profiler, ProfileSettings
from sparsesearch.models.family import get_family
from sparsesearch.models.hiera import HieraDet
from sparsesearch.ops import keep_count
from sparsesearch.testing import quick_profile_args

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "search_spaces" / "sam2_demo.yaml"
SAM2_T = ROOT / "search_spaces" / "sam2_t.yaml"
# the tiny member's blocks, stage by stage: q-pool blocks open stages 2-4, stage 3 alternates windowed and global
TINY_VARIANTS = [
    ["window"],
    ["qpool", "window"],
    ["qpool", "window", "global", "window", "global", "window", "global"],
    ["qpool", "window"],
]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_models_and_spaces_cli(capsys):
    assert main(["models", "sam2*"]) == 0
    out = capsys.readouterr().out
    names = ["sam2_hiera_base_plus", "sam2_hiera_large", "sam2_hiera_nano", "sam2_hiera_small", "sam2_hiera_tiny"]
    assert [line.split()[0] for line in out.strip().splitlines()] == names
    assert "stages [1, 2, 7, 2] heads 1 window [8, 4, 14, 7] global [5, 7, 9]" in out
    assert main(["space", str(SAM2_T)]) == 0
    out = capsys.readouterr().out
    assert "sam2_hiera_tiny, depths [1, 2, 7, 2]" in out
    assert "gene qpool      blocks 1.0 2.0 3.0          choices [0.0]" in out
    assert main(["space", str(DEMO), "--sample", "2"]) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()[-2:]]
    assert all([row[0] for row in s["sparsity"][1:]] == [0.0, 0.0, 0.0] for s in samples)


def test_family_describes_the_parts():
    space = ss.SearchSpace.load(SAM2_T)
    fam = get_family(space.architecture)
    arch = fam.arch(space.architecture)
    assert space.depths == (1, 2, 7, 2) and space.default_window == (8, 4, 14, 7)
    assert [[fam.block_variant(arch, s, b) for b in range(d)] for s, d in enumerate(space.depths)] == TINY_VARIANTS
    fixed = [(s, b) for s, d in enumerate(space.depths) for b in range(d) if not fam.block_prunable(arch, s, b)]
    assert fixed == [(1, 0), (2, 0), (3, 0)]
    # a q-pool block runs the previous stage's window; every other block its own stage's
    assert [fam.window_row(arch, s, 0) for s in range(4)] == [0, 0, 1, 2]
    assert [fam.window_row(arch, 2, b) for b in range(7)] == [1, 2, 2, 2, 2, 2, 2]
    assert [fam.block_name(arch, s, 0) for s in range(4)] == ["blocks.0", "blocks.1", "blocks.3", "blocks.10"]
    assert fam.block_name(arch, 2, 2) == "blocks.5"
    shapes = fam.stage_shapes(arch, (1024, 1024))
    assert [(s.H, s.W, s.dim, s.heads, s.depth) for s in shapes] == [
        (256, 256, 96, 1, 1),
        (128, 128, 192, 2, 2),
        (64, 64, 384, 4, 7),
        (32, 32, 768, 8, 2),
    ]
    assert fam.geometry("window", 256, 256, 8).num_windows == 1024
    assert fam.geometry("global", 64, 64, 14).num_windows == 25  # padded to 70x70
    assert fam.geometry("window", 32, 32, 7).num_windows == 25  # padded to 35x35
    assert fam.geometry("qpool", 32, 32, 14).num_windows == 25  # it tiles its input, stage 3's 64x64 map
    assert fam.fixed_parts(arch, "seg") == ["patch_embed", "head"] and fam.fixed_parts(arch, None) == ["patch_embed"]
    with torch.device("meta"):
        model = space.create_model(head=None)
    assert model.img_size == (1024, 1024)
    assert [n for n, _ in fam.model_parts(model, None)] == ["patch_embed", *(f"blocks.{i}" for i in range(12))]
    assert get_family("sam2_hiera_nano") is fam


def test_flops_windowed_linear_global_quadratic_qpool_unchanged():
    space = ss.SearchSpace.load(DEMO)
    model = space.create_model(seed=0, head=None)
    # 128x128: stage maps 32, 16, 8, 4; windows 8, 8, 4, 4 -> 16, 4, 4, 1 windows, none padded
    dense = count_flops(model, 128, space.uniform(0.0))
    half = count_flops(model, 128, space.uniform(0.5))
    assert half.parts["blocks.0"] / dense.parts["blocks.0"] == pytest.approx(keep_count(0.5, 16) / 16, rel=1e-6)
    assert half.parts["blocks.3"] / dense.parts["blocks.3"] == pytest.approx(keep_count(0.5, 4) / 4, rel=1e-6)
    # a global block attends among the kept tokens only: its FLOPs fall faster than the kept fraction
    assert half.parts["blocks.7"] / dense.parts["blocks.7"] < keep_count(0.5, 4) / 4
    for name in ("patch_embed", "blocks.2", "blocks.5", "blocks.11"):  # the embedding and the q-pool blocks
        assert half.parts[name] == dense.parts[name], name
    assert half.parts["blocks.12"] == dense.parts["blocks.12"]  # stage 4 has a single window: nothing to prune


def _profile(space: Path, out: Path, *extra: str) -> int:
    return main(quick_profile_args(str(space), "64x64", str(out), *extra))


def test_profile_validate_predict(tmp_path, capsys):
    """The family's quick space (sam2_hiera_nano at embed 16, 64x64: 16, 8, 4, 2 tokens a side) with a segmentation
    head: every block kind, q-pool blocks dense only at the previous stage's window."""
    quick = tmp_path / "quick.yaml"
    quick.write_text(get_family("sam2_hiera_nano").quick_space_yaml)
    out = tmp_path / "sam2.json"
    assert _profile(quick, out, "--head", "seg", "--num-classes", "3") == 0
    table = LatencyTable.load(out)
    doc = json.loads(out.read_text())
    blocks = doc["tables"][0]["blocks"]
    kinds = {(b["stage"], b["window"], b.get("variant")) for b in blocks}
    assert kinds == {
        (0, 4, "window"),
        (1, 4, "qpool"),
        (1, 4, "window"),
        (2, 4, "qpool"),
        (2, 2, "window"),
        (2, 2, "global"),
        (3, 2, "qpool"),
        (3, 2, "window"),
    }
    for b in blocks:
        if b.get("variant") == "qpool":
            assert [p["k"] for p in b["points"]] == [b["num_windows"]], b
    assert set(doc["tables"][0]["fixed"]) == {"patch_embed", "head"}
    cfg = table.space.uniform(0.5)
    assert [cfg.sparsity[s][0] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    parts = table.parts(cfg)
    assert {f"blocks.{i}" for i in range(8)} <= set(parts)
    assert table.predict(cfg) == pytest.approx(sum(parts.values()))
    capsys.readouterr()
    assert main(["latency", "validate", "--table", str(out), "--n", "2", "--no-progress"]) == 0
    assert "MAPE" in capsys.readouterr().out
    config = tmp_path / "half.json"
    cfg.save(config)
    assert main(["latency", "predict", "--table", str(out), str(config)]) == 0
    assert "ms" in capsys.readouterr().out


def test_profiler_plans_the_sam2_t_space():
    """Every (block kind, kept count) a config of the space can produce is measured, or lies on the measured grid's
    range; q-pool kinds only dense, at each of the previous stage's windows."""
    space = ss.SearchSpace.load(SAM2_T)
    profiler = Profiler(space, ProfileSettings(repeats=1, warmup=0, rounds=1))
    plan = profiler.plan()
    measured: dict[str, set[int]] = {}
    for e in plan:
        if e.part == "block":
            assert e.kind is not None and e.k is not None
            measured.setdefault(e.kind.key, set()).add(e.k)
    assert {e.name for e in plan if e.part == "fixed"} == {"patch_embed", "head"}
    fam = get_family(space.architecture)
    arch = fam.arch(space.architecture)
    shapes = fam.stage_shapes(arch, (1024, 1024))
    for g in space.genes:
        for s, b in g.blocks:
            variant = fam.block_variant(arch, s, b)
            for w in space.window_choices[fam.window_row(arch, s, b)]:
                key = f"1024x1024/s{s}/w{w}/{variant}"
                nw = fam.geometry(variant, shapes[s].H, shapes[s].W, w).num_windows
                ks = measured[key]
                assert nw in ks, key
                for p in g.choices:
                    k = keep_count(p, nw)
                    assert k in ks or min(ks) <= k <= max(ks), (key, k)
    qpool = {k: v for k, v in measured.items() if k.endswith("/qpool")}
    assert set(qpool) == {"1024x1024/s1/w8/qpool", "1024x1024/s2/w4/qpool"} | {
        f"1024x1024/s3/w{w}/qpool" for w in (14, 16)
    }
    assert all(len(ks) == 1 for ks in qpool.values())
    assert {k.split("/")[-1] for k in measured} == {"window", "global", "qpool"}


def test_profile_runs_every_block_kind_of_the_demo_space(tmp_path):
    """The demo space's deeper layout: the first windowed block of stages 2-4 follows a q-pool block, which the
    profiler feeds the previous stage's map."""
    out = tmp_path / "demo.json"
    assert _profile(DEMO, out, "--head", "none", "--calibration", "0") == 0
    variants = {b.get("variant") for b in json.loads(out.read_text())["tables"][0]["blocks"]}
    assert variants == {"window", "global", "qpool"}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("sam2demo") / "run"
    code = main(["demo", "--quick", "--space", str(DEMO), "--out", str(out)])
    return out, code


def test_quick_demo_adapt_evolve_export(quick_demo):
    out, code = quick_demo
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    names = [r["name"] for r in summary["rows"]]
    assert names[0] == "dense" and names[-1].startswith("searched")
    pareto = json.loads((out / "search" / "pareto.json").read_text())
    assert pareto["baselines"]["uniform_resize"] and pareto["baselines"]["uniform_sparsity"]
    best = ss.SparsityConfig.from_dict(json.loads((out / "search" / "best.json").read_text()))
    assert [best.sparsity[s][0] for s in (1, 2, 3)] == [0.0, 0.0, 0.0]
    card = json.loads((out / "export" / "card.json").read_text())
    assert card["onnx"]["ok"]
    from sparsesearch.export import load_exported

    model = load_exported(out / "export")
    assert isinstance(model, HieraDet)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)


def test_eval_cli_on_the_supernet(quick_demo, capsys):
    out, _ = quick_demo
    capsys.readouterr()
    args = ["eval", "--supernet", str(out / "adapt" / "supernet.pt"), "--config", "dense", "--config", "uniform:0.5"]
    assert main([*args, "--val-samples", "4", "--json"]) == 0
    assert "uniform" in capsys.readouterr().out


def test_ordering_rule_leaves_the_qpool_gene_out():
    """sam2_t orders the sparsity genes of each stage; the q-pool gene (one choice, 0) is in no group, and the
    table's exact extremes honour the groups."""
    space = ss.SearchSpace.load(SAM2_T)
    assert space.non_decreasing
    names = [[space.genes[g].name for g in group] for group in space.stage_groups()]
    assert names == [["s1"], ["s2"], ["s3a", "s3b", "s3c"], ["s4"]]
    genes = np.zeros(space.n_var, dtype=np.int64)
    genes[[3, 4, 5]] = [8, 2, 5]  # s3a, s3b, s3c out of order
    fixed = space.repair(genes)
    assert fixed[[3, 4, 5]].tolist() == [2, 5, 8] and fixed[0] == 0


def test_bad_input_is_one_line(tmp_path, capsys):
    # a config that prunes a q-pool block, and a space whose q-pool gene has sparsity
    bad = tmp_path / "bad.json"
    sparsity = [[0.0, 0.0], [0.5, 0.0, 0.0], [0.0] * 6, [0.0, 0.0]]
    bad.write_text(json.dumps({"sparsity": sparsity, "window_size": [8, 8, 4, 4]}))
    assert main(["flops", "--space", str(DEMO), "--config", str(bad)]) == 2
    assert "cannot be pruned (blocks 1.0)" in _one_line_error(capsys)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"sparsity": [[0.0] * d for d in (2, 3, 6, 2)], "window_size": [8, 7, 4, 4]}))
    assert main(["flops", "--space", str(DEMO), "--config", str(odd)]) == 2
    assert "window_size[1] = 7" in _one_line_error(capsys)
    space = DEMO.read_text().replace('  - {name: qpool, blocks: ["1.0", "2.0", "3.0"], choices: [0.0]}\n', "")
    for first, rest in (("1.0", '"1.1", "1.2"'), ("2.0", '"2.1", "2.2"'), ("3.0", '"3.1"')):
        space = space.replace(f"blocks: [{rest}]", f'blocks: ["{first}", {rest}]')
    bad_space = tmp_path / "bad_space.yaml"
    bad_space.write_text(space)
    assert main(["space", str(bad_space)]) == 2
    assert "never prunes" in _one_line_error(capsys)
    # a space whose pooled stage offers an odd window is refused when it is read, by any command
    odd_space = tmp_path / "odd_space.yaml"
    odd_space.write_text(DEMO.read_text().replace("window_sizes: [[8], [4, 8]", "window_sizes: [[7, 8], [4, 8]"))
    assert main(["space", str(odd_space)]) == 2
    assert "window choice(s) [7] of stage 0: the next stage's q-pool block pools" in _one_line_error(capsys)
    assert _profile(odd_space, tmp_path / "odd.json", "--head", "none", "--calibration", "0") == 2
    assert "window choice(s) [7] of stage 0" in _one_line_error(capsys)
    # an original SAM 1 checkpoint (image_encoder.* without a trunk) for a SAM 2 space
    sam1 = tmp_path / "sam1.pth"
    torch.save(
        {f"image_encoder.{k}": v for k, v in ss.create_model("samvit_nano", head=None).state_dict().items()}, sam1
    )
    args = ["adapt", "--space", str(DEMO), "--data", "synthetic:8", "--init", str(sam1), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "a SAM / plain ViT (samvit_*) checkpoint but sam2_hiera_nano is a SAM 2 Hiera" in _one_line_error(capsys)
