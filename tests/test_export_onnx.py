"""The ONNX export: the "export" window ops against the reference, exported models against torch at batch 1 and 3
(fp32 and dynamic int8), the card's ONNX Runtime figures, and `--quantize`'s bad input."""

from __future__ import annotations

import json
import sys

import pytest
import sparsesearch as ss
import torch
from sparsesearch import ops
from sparsesearch.cli import main
from sparsesearch.export import INT8_TOLERANCE, check_onnx, check_quantize, export_model
from sparsesearch.models.window_block import window_partition, window_reverse
from sparsesearch.ops import WindowGeometry, export_impl
from sparsesearch.testing import tiny_supernet

from .test_export import SPACE

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    d = tmp_path_factory.mktemp("sn")
    tiny_supernet(d, SPACE)  # test_export's tiny space, seeded weights
    cfg = ss.SparsityConfig([[0.5, 0.5], [0.25, 0.25], [0.75, 0.75], [0.75, 0.75]], [4, 2, 4, 4], (64, 64))
    cfg.save(d / "best.json")
    return d


def _export_argv(d, out):
    """`sparsesearch export` of the fixture's supernet at its best.json into `out`."""
    return ["export", "--supernet", str(d / "supernet.pt"), "--config", str(d / "best.json"), "--out", str(out)]


@pytest.mark.parametrize(
    "geom",
    [WindowGeometry.create(8, 8, 4, False), WindowGeometry.create(8, 8, 4, True), WindowGeometry.create(9, 7, 4, True)],
)
def test_export_ops_equal_the_reference(geom):
    """Scores, gather and write-back of the "export" backend give the torch backend's values (padded maps too)."""
    torch.manual_seed(0)
    x = torch.randn(3, geom.H, geom.W, 8)
    k = ops.keep_count(0.5, geom.num_windows)
    scores = ops.score_windows(x, geom, "export")
    torch.testing.assert_close(scores, ops.score_windows(x, geom, "torch"))
    idx = ops.select_windows(scores, k, "export")  # the torch backend's windows, by descending score
    assert torch.equal(idx.sort(dim=1).values, ops.select_windows(scores, k, "torch"))
    assert bool((scores.gather(1, idx).diff(dim=1) <= 0).all())
    windows = ops.gather_windows(x, idx, geom, "export")
    assert torch.equal(windows, ops.gather_windows(x, idx, geom, "torch"))
    new = torch.randn_like(windows)
    assert torch.equal(
        ops.scatter_windows(x, new, idx, geom, "export"), ops.scatter_windows(x, new, idx, geom, "torch")
    )


@pytest.mark.parametrize(
    "geom",
    [WindowGeometry.create(8, 8, 4, True), WindowGeometry.create(9, 7, 4, True), WindowGeometry.create(6, 6, 8, False)],
)
def test_export_partition_and_reverse_equal_roll_pad_partition(geom):
    """The dense path's shift + pad + partition (and back) as the export writes it, one Gather each way."""
    y = torch.randn(2, geom.H, geom.W, 5)
    rolled = torch.roll(y, (-geom.sh, -geom.sw), (1, 2))
    padded = torch.nn.functional.pad(rolled, (0, 0, 0, geom.Wp - geom.W, 0, geom.Hp - geom.H))
    windows = window_partition(padded, geom.wh, geom.ww)
    assert torch.equal(export_impl.partition(y, geom), windows)
    back = window_reverse(windows * 2, geom.wh, geom.ww, geom.Hp, geom.Wp)[:, : geom.H, : geom.W]
    assert torch.equal(export_impl.reverse(windows * 2, geom), torch.roll(back, (geom.sh, geom.sw), (1, 2)))


@pytest.mark.parametrize("sparsity, side", [(0.0, 64), (0.5, 64), (0.5, 72)])
def test_onnx_export_agrees_with_torch_at_batch_1_and_3(sparsity, side, tmp_path):
    """fp32 within 1e-4 of the model as torch runs it (its own backend), dense and pruned, on a map whose windows
    tile exactly (64) and on one with padded and shifted windows (72: 18x18, windows of 4)."""
    torch.manual_seed(0)
    model = ss.create_model("swin_nano", head="seg", num_classes=3, embed_dim=16, num_heads=[1, 1, 2, 2], window_size=4)
    model.eval().set_config(model.uniform_config(sparsity) if sparsity else None)
    report = check_onnx(model, tmp_path / "m.onnx", (side, side))
    assert set(report["max_abs_diff_by_batch"]) == {"1", "3"}
    assert report["max_abs_diff"] < 1e-4 and report["ok"]


def test_onnx_int8_agrees_within_its_tolerance(tmp_path):
    """Dynamic int8 within INT8_TOLERANCE of the output's range at batch 1 and 3 (the bound the export checks: weights
    and each linear layer's input rounded to 1/254 and 1/255 of their ranges, a dozen layers; this model lands near
    0.02), and written beside the fp32 model."""
    torch.manual_seed(0)
    model = ss.create_model("swin_nano", head="seg", num_classes=3, embed_dim=16, num_heads=[1, 1, 2, 2], window_size=4)
    model.eval().set_config(model.uniform_config(0.5))
    report = check_onnx(model, tmp_path / "model.onnx", (64, 64), quantize="dynamic")
    int8 = report["int8"]
    assert int8["file"] == "model.int8.onnx" and (tmp_path / "model.int8.onnx").is_file()
    assert set(int8["max_abs_diff_by_batch"]) == {"1", "3"}
    assert 0 < int8["max_rel_diff"] <= INT8_TOLERANCE and int8["ok"]
    assert (tmp_path / "model.int8.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size


def test_card_gives_onnx_runtime_latency_beside_torch(supernet, tmp_path):
    """The card: ONNX Runtime ms of fp32 and int8, of the config and the dense config, beside torch's; the int8
    model's accuracy beside the fp32 one's."""
    d = supernet
    report = export_model(
        d / "supernet.pt", d / "best.json", tmp_path / "e", onnx=True, quantize="dynamic", val_samples=2
    )
    card = json.loads((tmp_path / "e" / "card.json").read_text())
    ms = card["onnx_ms"]
    for key in ("fp32", "fp32_dense", "int8", "int8_dense"):
        assert ms[key] > 0
    assert ms["torch_ms"] == card["measured_ms"] == report.measured_ms and ms["torch_dense_ms"] > 0
    assert "ONNX Runtime" in ms["measured_on"] and ms["onnxruntime"]
    assert card["onnx"]["int8"]["ok"] and card["accuracy_int8"]["metric"] == card["accuracy"]["metric"] == "mIoU"
    assert card["accuracy_int8"]["n"] == 2


def test_cli_export_quantize_prints_both_models(supernet, tmp_path, capsys):
    argv = _export_argv(supernet, tmp_path / "e")
    assert main([*argv, "--onnx", "--quantize", "dynamic", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "model.int8.onnx" in out and "wrote" in out
    assert (tmp_path / "e" / "model.int8.onnx").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [(["--quantize", "dynamic"], "add --onnx"), (["--onnx", "--quantize", "static"], "must be one of dynamic")],
)
def test_cli_quantize_bad_input_is_one_line(supernet, extra, message, tmp_path, capsys):
    argv = _export_argv(supernet, tmp_path / "e")
    assert main([*argv, "--no-measure", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_quantize_without_onnxruntime_is_one_line(supernet, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ss.SparseSearchError, match="pip install"):
        check_quantize(True, "dynamic")
    with pytest.raises(ss.SparseSearchError, match="must be one of"):
        check_quantize(True, "static")
    argv = _export_argv(supernet, tmp_path / "e")
    assert main([*argv, "--onnx", "--quantize", "dynamic", "--no-measure"]) == 2
    err = capsys.readouterr().err.strip()
    assert "onnxruntime" in err and "pip install" in err and len(err.splitlines()) == 1


def test_sam2_export_has_no_shape_merge_conflict(tmp_path):
    """SAM 2's position embedding exports as one Tile (no If whose branches disagree on the repeats' rank, which
    ONNX Runtime reported as a "Concat output 4 vs 5" shape-merge warning), and the export agrees with torch."""
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = ss.create_model("sam2_hiera_nano", head=None).eval()
    model.set_config(model.uniform_config(0.5))
    report = check_onnx(model, tmp_path / "m.onnx", (128, 128))
    assert report["max_abs_diff"] < 1e-4
    assert not [n.name for n in onnx.load(str(tmp_path / "m.onnx")).graph.node if n.op_type == "If"]


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_sam_vit_export_agrees_with_torch_at_batch_1_and_3(sparsity, tmp_path):
    """The SAM ViT's exported attention (2-d linears, a constant scale, relative positions as batched MatMuls, the
    global blocks' kept windows through SDPA) within 1e-4 of torch's (SDPA and einsum), dense and pruned, on windowed
    blocks whose 5x5 token map pads its windows of 4 and on global blocks."""
    torch.manual_seed(0)
    model = ss.create_model(
        "samvit_nano", head=None, embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3), img_size=80
    )
    for name, p in model.named_parameters():  # the relative position tables start at zero: give them values
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.eval().set_config(model.uniform_config(sparsity) if sparsity else None)
    report = check_onnx(model, tmp_path / "m.onnx", (80, 80))
    assert set(report["max_abs_diff_by_batch"]) == {"1", "3"}
    assert report["max_abs_diff"] < 1e-4 and report["ok"]
