"""The examples run end to end on tiny settings (smoke tests: what they print is for people)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import sparsesearch as ss
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_prune_sam_without_labels_with_an_original_sam_checkpoint(tmp_path):
    """A tiny SAM encoder saved as an original SAM checkpoint (`image_encoder.*`, `mlp.lin1/2`), no images given:
    the example scores configs by fidelity, exports the best, and the export reproduces the model under that
    config."""
    kwargs = {"embed_dim": 32, "num_heads": 2, "neck_chans": 16, "img_size": 128}
    source = ss.create_model("samvit_nano", head=None, **kwargs)
    sam = {f"image_encoder.{k}".replace("mlp.fc", "mlp.lin"): v for k, v in source.state_dict().items()}
    sam["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 8)
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save(sam, ckpt)
    example = _load("prune_sam_without_labels")
    out = tmp_path / "run"
    args = [
        "--model",
        "samvit_nano",
        "--model-kwargs",
        json.dumps({k: v for k, v in kwargs.items() if k != "img_size"}),
    ]
    args += ["--checkpoint", str(ckpt), "--resolution", "128", "--val-images", "4", "--population", "4"]
    args += ["--generations", "1", "--profile-repeats", "1", "--latency", "2x", "--out", str(out)]
    result = example.main(args)
    assert 0.0 <= result["fidelity"] <= 100.0 and result["x_dense"] <= 2.0
    assert sorted(p.name for p in (out / "images").iterdir())[:1] == ["scene_000.png"]
    scored = [json.loads(line) for line in (out / "search" / "accuracy_cache.jsonl").read_text().splitlines()]
    assert len(scored) > 1 and any(r["accuracy"] < 100.0 for r in scored)  # pruned configs scored below dense
    exported = ss.load_exported(out / "export")
    config = ss.SparsityConfig.from_dict(result["config"])
    x = torch.randn(1, 3, 128, 128)
    source.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x), source(x, config=config), rtol=1e-5, atol=1e-5)
    card = json.loads((out / "export" / "card.json").read_text())
    assert card["config"] == result["config"]
