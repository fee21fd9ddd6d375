"""Export round trip, FLOPs proportions, ONNX, and the flops/export CLI."""

from __future__ import annotations

import json

import pytest
import sparsesearch as ss
import torch
from sparsesearch import export_model, load_exported  # the names the README uses: ss.export_model, ss.load_exported
from sparsesearch.cli import main
from sparsesearch.flops import count_flops
from sparsesearch.ops import keep_count
from sparsesearch.supernet import SupernetMeta, save_supernet

SPACE = """
name: tiny
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


@pytest.fixture(scope="module")
def supernet(tmp_path_factory):
    d = tmp_path_factory.mktemp("sn")
    (d / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(d / "space.yaml")
    kwargs = {"head": "seg", "num_classes": 3}
    torch.manual_seed(0)
    model = space.create_model(**kwargs)
    meta = SupernetMeta.create(space, kwargs, task="seg", num_classes=3, data="synthetic:8", image_size=(64, 64))
    save_supernet(d / "supernet.pt", model, meta)
    cfg = ss.SparsityConfig([[0.5, 0.5], [0.25, 0.25], [0.75, 0.75], [0.75, 0.75]], [4, 2, 4, 4], (64, 64))
    cfg.save(d / "best.json")
    return d, space, model, cfg


def test_export_round_trip(supernet, tmp_path):
    d, space, model, cfg = supernet
    report = export_model(d / "supernet.pt", d / "best.json", tmp_path / "exp", measure=False)
    exported = load_exported(tmp_path / "exp")
    assert exported.config == cfg
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x, config=cfg), rtol=0, atol=0)
    card = json.loads((tmp_path / "exp" / "card.json").read_text())
    assert card["parameters"] == sum(p.numel() for p in model.parameters()) == report.parameters
    assert card["gflops"] < card["gflops_dense"]


def test_pruned_flops_follow_the_kept_fraction(supernet):
    _, space, _, _ = supernet
    model = space.create_model(head=None)
    dense = count_flops(model, 64, ss.SparsityConfig.dense(space.depths, 4))
    half = count_flops(model, 64, ss.SparsityConfig.uniform(0.5, space.depths, 4))
    # stage 0 has no patch merging and its 16x16 map tiles exactly into 16 windows of 4x4: every FLOP of it
    # scales with the kept windows
    assert half.parts["layers.0"] / dense.parts["layers.0"] == pytest.approx(keep_count(0.5, 16) / 16)
    assert half.parts["patch_embed"] == dense.parts["patch_embed"]
    # stages 2 and 3 (4x4 and 2x2 maps) are a single window each: a block always keeps one
    assert half.parts["layers.2"] == dense.parts["layers.2"] and half.parts["layers.3"] == dense.parts["layers.3"]
    assert half.total < dense.total


def test_onnx_export_matches_torch(supernet, tmp_path):
    pytest.importorskip("onnxruntime")
    d, *_ = supernet
    report = export_model(d / "supernet.pt", d / "best.json", tmp_path / "exp", measure=False, onnx=True)
    assert report.onnx["ok"] and report.onnx["max_abs_diff"] < 1e-4
    assert set(report.onnx["max_abs_diff_by_batch"]) == {"1", "3"} and report.onnx["dynamic_batch"]
    assert (tmp_path / "exp" / "model.onnx").stat().st_size > 10_000


def test_onnx_model_takes_any_batch_size(supernet, tmp_path):
    """onnxruntime runs the exported file at batch 3 (and 2) with the torch model's outputs, per image."""
    ort = pytest.importorskip("onnxruntime")
    d, *_ = supernet
    export_model(d / "supernet.pt", d / "best.json", tmp_path / "exp", measure=False, onnx=True)
    model = load_exported(tmp_path / "exp")
    sess = ort.InferenceSession(str(tmp_path / "exp" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    torch.manual_seed(1)
    for b in (3, 2):
        x = torch.randn(b, 3, 64, 64)
        with torch.no_grad():
            ref = model(x)
            alone = torch.cat([model(x[i : i + 1]) for i in range(b)])  # the kept windows are chosen per image
        out = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
        assert out.shape == ref.shape == (b, 3, 64, 64)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-4)


def test_export_with_finetune_and_accuracy(supernet, tmp_path):
    d, *_ = supernet
    report = export_model(d / "supernet.pt", d / "best.json", tmp_path / "exp", finetune_steps=2, val_samples=4)
    assert report.finetune_steps == 2 and report.accuracy["metric"] == "mIoU" and report.accuracy["n"] == 4
    assert report.measured_ms > 0 and report.measured_dense_ms > 0


def test_cli_export_and_flops(supernet, tmp_path, capsys):
    d, *_ = supernet
    assert (
        main(
            [
                "export",
                "--supernet",
                str(d / "supernet.pt"),
                "--config",
                str(d / "best.json"),
                "--out",
                str(tmp_path / "e"),
                "--no-measure",
            ]
        )
        == 0
    )
    assert "load_exported" in capsys.readouterr().out
    assert main(["flops", "--space", str(d / "space.yaml"), "--config", "uniform:0.5"]) == 0
    assert "layers.0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "--supernet", "nope.pt", "--config", "c.json", "--out", "o"], "does not exist"),
        (["flops", "--space", "nope.yaml"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_load_exported_refuses_other_folders(tmp_path):
    with pytest.raises(ss.CheckpointError, match="not an exported model"):
        load_exported(tmp_path)
