"""A pretrained model in place of a supernet, scored without labels: `evolve --model NAME --checkpoint PATH --space
FILE --accuracy fidelity --data <image folder>`, then `export --model ...`, end to end on a tiny swin_nano; `eval`
of a SAM encoder from an original SAM checkpoint; the same search in one Python call; and each bad input as one
line on stderr with exit code 2. Checkpoints are made here (random weights); nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sparsesearch as ss
import torch
import yaml
from PIL import Image
from sparsesearch.cli import main
from sparsesearch.data import build_dataset
from sparsesearch.export import load_exported
from sparsesearch.fidelity import dense_reference
from sparsesearch.latency import ProfileSettings, profile
from torch import nn

from .cli_checks import one_line_exit_2, quick_search_args
from .tiny_spaces import SAM, SWIN


def _images(root: Path, n: int = 6) -> Path:
    for i in range(n):
        sub = root / ("more" if i % 2 else ".")
        sub.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(i).integers(0, 256, size=(60 + 4 * i, 70, 3), dtype=np.uint8)
        Image.fromarray(arr).save(sub / f"im{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A space, a latency table, an image folder, and checkpoints: a timm-style Swin backbone, a Swin with a
    segmentation head (our own layout), an original SAM checkpoint (image_encoder.* + a mask decoder)."""
    d = tmp_path_factory.mktemp("tf")
    (d / "space.yaml").write_text(yaml.safe_dump(SWIN, sort_keys=False))
    (d / "sam.yaml").write_text(yaml.safe_dump(SAM, sort_keys=False))
    space, sam_space = ss.SearchSpace.load(d / "space.yaml"), ss.SearchSpace.load(d / "sam.yaml")
    torch.save(space.create_model(seed=0, head=None).state_dict(), d / "swin_backbone.pth")
    torch.save(space.create_model(seed=1, head="seg", num_classes=3).state_dict(), d / "swin_seg.pth")
    sam = sam_space.create_model(seed=2, head=None).state_dict()
    original = {f"image_encoder.{k}".replace("mlp.fc", "mlp.lin"): v for k, v in sam.items()}
    original["mask_decoder.output_upscaling.0.weight"] = torch.zeros(4, 4, 2, 2)
    torch.save(original, d / "sam_vit.pth")
    settings = ProfileSettings(head="none", threads=1, warmup=0, repeats=1, rounds=1, calibration=0, in_model=False)
    profile(space, settings, d / "table.json")
    _images(d / "images")
    (d / "empty").mkdir()
    return {k: d / v for k, v in {"dir": ".", "space": "space.yaml", "sam_space": "sam.yaml"}.items()} | {
        "backbone": d / "swin_backbone.pth",
        "seg": d / "swin_seg.pth",
        "sam": d / "sam_vit.pth",
        "table": d / "table.json",
        "images": d / "images",
        "empty": d / "empty",
    }


def _model_args(f: dict[str, Path], ckpt: str = "backbone") -> list[str]:
    return ["--model", "swin_nano", "--checkpoint", str(f[ckpt]), "--space", str(f["space"])]


def _evolve(f: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "evolve",
        "--table",
        str(f["table"]),
        "--latency",
        "1.2x",  # the tiny model's table is noise: any config may be the fastest
        *quick_search_args(out),
        "--val-samples",
        "4",
        *extra,
    ]


def test_training_free_search_and_export_of_a_pretrained_backbone(files, tmp_path, capsys):
    f = files
    args = _evolve(f, tmp_path / "s", *_model_args(f), "--accuracy", "fidelity", "--data", str(f["images"]))
    assert main(args) == 0, capsys.readouterr().err
    assert "fidelity on 4 validation images" in capsys.readouterr().out
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["latency_ms"] <= best["budget_ms"] and best["model"] == "swin_nano" and best["metric"] == "fidelity"

    # every figure of the outputs, recomputed here from the checkpoint: the weights under a config against the
    # same weights dense, on the folder's first 4 images
    space = ss.SearchSpace.load(f["space"])
    model = space.create_model(head=None)
    ss.load_checkpoint(model, f["backbone"])
    images, _ = build_dataset(str(f["images"]), "val", (64, 64))
    x = torch.stack([images[i][0] for i in range(4)])
    pareto = json.loads((tmp_path / "s" / "pareto.json").read_text())
    points = [best, *pareto["front"], *(p for ps in pareto["baselines"].values() for p in ps)]
    scores = []
    for p in points:
        cfg = ss.SparsityConfig.from_dict(p["config"])
        scores.append(ss.fidelity(model, cfg, x, reference=dense_reference(space)).value)
        assert p["accuracy"] == pytest.approx(scores[-1], abs=1e-6)
    assert min(scores) < 100.0  # configs that prune were scored

    exp = tmp_path / "exp"
    export = ["export", *_model_args(f), "--config", str(tmp_path / "s" / "best.json"), "--out", str(exp)]
    extra = ["--no-measure", "--data", str(f["images"]), "--val-samples", "4", "--accuracy", "fidelity"]
    assert main(export + extra) == 0, capsys.readouterr().err
    card = json.loads((exp / "card.json").read_text())
    assert card["accuracy"]["metric"] == "fidelity" and card["accuracy"]["value"] == pytest.approx(best["accuracy"])
    assert card["accuracy_dense"]["value"] == pytest.approx(100.0)
    exported = load_exported(exp)
    x = torch.randn(2, 3, 64, 64)
    model.set_config(ss.SparsityConfig.from_dict(best["config"]))
    with torch.no_grad():
        assert torch.allclose(exported(x), model.eval()(x), atol=1e-5)


def test_eval_scores_a_sam_encoder_from_an_original_checkpoint_without_labels(files, capsys):
    f = files
    args = ["eval", "--model", "samvit_nano", "--checkpoint", str(f["sam"]), "--space", str(f["sam_space"])]
    args += ["--accuracy", "fidelity", "--data", str(f["images"]), "--config", "dense", "--config", "uniform:0.75"]
    assert main([*args, "--json", "--val-samples", "3"]) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["metric"] for r in rows] == ["fidelity", "fidelity"]
    assert rows[0]["value"] == pytest.approx(100.0) and rows[1]["value"] < 100.0
    space = ss.SearchSpace.load(f["sam_space"])
    encoder = space.create_model(head=None)
    ss.load_checkpoint(encoder, f["sam"])  # the SAM layout, converted
    images, _ = build_dataset(str(f["images"]), "val", (128, 128))
    x = torch.stack([images[i][0] for i in range(3)])
    assert rows[1]["value"] == pytest.approx(
        ss.fidelity(encoder, space.uniform(0.75), x, reference=dense_reference(space)).value
    )


def test_the_training_free_search_is_one_python_call(files, tmp_path):
    f = files

    def ms(cfg: ss.SparsityConfig) -> float:
        return 1.0 + sum(1.0 - p for p in cfg.flat())

    r = ss.search(
        f["space"],
        model=f["backbone"],  # pretrained weights, not a supernet
        accuracy="fidelity",
        data=str(f["images"]),
        val_samples=4,
        latency=ms,
        budget="0.7x",
        population=4,
        generations=2,
        progress=False,
        flops=False,
    )
    assert r.metric == "fidelity" and r.dense.accuracy == pytest.approx(100.0)
    assert r.best.latency_ms <= r.budget_ms and 0 < r.best.accuracy < 100.0
    assert r.tie > 0  # the pick's margin: the paired noise of fidelity figures


class _DictOut(nn.Module):
    """A model whose output is a dict (as many detectors' are)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> Any:
        return self.inner.config

    def set_config(self, config: Any) -> None:
        self.inner.set_config(config)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.inner(x)}


def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, monkeypatch):
    f = files
    fid = ["--accuracy", "fidelity", "--data", str(f["images"])]
    out = tmp_path / "s"
    one_line_exit_2(
        _evolve(f, out, "--supernet", str(f["seg"]), *_model_args(f), *fid), capsys, "--supernet and --model"
    )
    one_line_exit_2(
        _evolve(f, out, "--model", "swin_nano", "--checkpoint", str(f["backbone"]), *fid), capsys, "needs --space"
    )
    one_line_exit_2(_evolve(f, out, "--model", "swin_nano", "--space", str(f["space"]), *fid), capsys, "--checkpoint")
    sam_into_swin = ["--model", "swin_nano", "--checkpoint", str(f["sam"]), "--space", str(f["space"])]
    one_line_exit_2(_evolve(f, out, *sam_into_swin, *fid), capsys, "SAM", "Swin")
    labelled = ["--data", str(f["images"])]  # a segmentation head, mIoU asked of images without labels
    one_line_exit_2(_evolve(f, out, *_model_args(f, "seg"), *labelled), capsys, "without labels", "fidelity")
    one_line_exit_2(
        _evolve(f, out, *_model_args(f), "--accuracy", "fidelity", "--data", str(f["empty"])), capsys, "no images"
    )
    one_line_exit_2(["eval", *_model_args(f), *labelled], capsys, "without a head", "fidelity")

    import sparsesearch.supernet as sn

    real = sn.load_pretrained

    def dict_model(*a: Any, **k: Any) -> Any:
        model, space, meta = real(*a, **k)
        return _DictOut(model), space, meta

    monkeypatch.setattr(sn, "load_pretrained", dict_model)
    one_line_exit_2(["eval", *_model_args(f), *fid, "--config", "uniform:0.5"], capsys, "returned a dict")
    assert not out.exists()  # nothing was searched
