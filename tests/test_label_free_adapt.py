"""Adaptation without labels: `sparsesearch adapt --teacher frozen` trains a supernet from a pretrained checkpoint on
a folder of images, the checkpoint (frozen, dense) teaching every sampled config; its fidelity to the teacher,
computed here by hand, improves. `RandomSparsity(teacher="frozen")` does the same in a user's loop. Bad input is one
line and exit 2. A tiny swin_nano backbone at 64x64, a few seeded steps."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import torch
import yaml
from PIL import Image
from sparsesearch.adapt.sampling import cosine_distill
from sparsesearch.cli import main
from sparsesearch.data import build_dataset
from sparsesearch.errors import ConfigError
from sparsesearch.fidelity import dense_reference
from sparsesearch.supernet import load_supernet

from .cli_checks import one_line_exit_2
from .tiny_spaces import SWIN


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A space, a pretrained backbone checkpoint (timm layout, no head) and 16 images without labels."""
    d = tmp_path_factory.mktemp("lf")
    (d / "space.yaml").write_text(yaml.safe_dump(SWIN, sort_keys=False))
    space = ss.SearchSpace.load(d / "space.yaml")
    torch.save(space.create_model(seed=0, head=None).state_dict(), d / "backbone.pth")
    for i in range(16):  # smooth colour fields: images with structure at the scale of a few windows
        arr = np.random.default_rng(i).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        sub = d / "images" / ("nested" if i % 2 else ".")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).resize((64, 64), Image.Resampling.BILINEAR).save(sub / f"im{i}.png")
    return {"space": d / "space.yaml", "ckpt": d / "backbone.pth", "images": d / "images"}


def _cosine_fidelity(
    teacher: torch.nn.Module, student: torch.nn.Module, cfg: ss.SparsityConfig, x: torch.Tensor
) -> float:
    """Mean over images of the mean over positions of cos(student under cfg, teacher dense), x100, by hand."""
    space = ss.SearchSpace(SWIN)
    with torch.no_grad():
        teacher.eval().set_config(dense_reference(space))
        student.eval().set_config(cfg)
        t, s = teacher(x).numpy(), student(x).numpy()  # NHWC (B, 2, 2, 128)
        teacher.set_config(None)
        student.set_config(None)
    per_image = []
    for si, ti in zip(s.reshape(len(x), -1, 128), t.reshape(len(x), -1, 128)):
        per_image.append(np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(si, ti)]))
    return 100.0 * float(np.mean(per_image))


def test_label_free_adapt_improves_fidelity_to_the_pretrained_model(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["adapt", "--space", str(files["space"]), "--data", str(files["images"]), "--init", str(files["ckpt"])]
    args += ["--teacher", "frozen", "--sampler", "sandwich", "--steps", "12", "--batch", "4", "--lr", "1e-4"]
    args += ["--val-samples", "8", "--seed", "0", "--out", str(out), "--quiet"]
    assert main(args) == 0, capsys.readouterr().err

    space = ss.SearchSpace.load(files["space"])
    teacher = space.create_model(head=None)
    ss.load_checkpoint(teacher, files["ckpt"])
    student, _, meta = load_supernet(out / "supernet.pt")
    assert meta.task == "features" and meta.extra["teacher"] == {"kind": "frozen", "init": str(files["ckpt"])}
    val, _ = build_dataset(str(files["images"]), "val", (64, 64))
    x = torch.stack([val[i][0] for i in range(8)])
    sparsest = space.sparsest()
    before = _cosine_fidelity(teacher, copy.deepcopy(teacher), sparsest, x)  # the student starts as the teacher
    after = _cosine_fidelity(teacher, student, sparsest, x)
    assert after > before + 0.1, (before, after)
    end = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["val"]["sparsest"]["metric"] == "fidelity"  # the run validates by fidelity to its teacher
    assert end["val"]["sparsest"]["value"] == pytest.approx(after, abs=1e-4)


def test_random_sparsity_with_a_frozen_teacher_in_a_users_loop():
    space = ss.SearchSpace(SWIN)
    model = space.create_model(seed=0, head=None)
    rs = ss.RandomSparsity(model, space, sampler="sandwich", seed=0, teacher="frozen", kind="cosine")
    teacher = rs.frozen_teacher
    assert teacher is not None and teacher is not model and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters()) and all(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = rs.teach(x)
    with torch.no_grad():
        assert torch.equal(target, model.eval()(x, config=dense_reference(space)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = {}
    for sub in rs.configs(0):
        with rs.applied(sub):
            out = model(x)
        loss = rs.distill_loss(out)
        losses[sub.role] = float(loss)
        if sub.role == "sparsest":  # 1 - cos over positions, by hand
            s, t = out.detach().reshape(-1, 128), target.reshape(-1, 128)
            by_hand = float(np.mean([1 - np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(s, t)]))
            assert float(loss) == pytest.approx(by_hand, abs=1e-6)
        loss.backward()
    assert losses["dense"] == pytest.approx(0.0, abs=1e-6) and losses["sparsest"] > 1e-4
    before = [p.clone() for p in teacher.parameters()]
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # frozen
    assert torch.equal(rs.teach(x), target)  # the same targets after the model moved

    # a list of levels: the mean over levels
    a, b = [torch.randn(2, 4, 3, 3), torch.randn(2, 8, 2, 2)], [torch.randn(2, 4, 3, 3), torch.randn(2, 8, 2, 2)]
    per_level = [float((1 - torch.nn.functional.cosine_similarity(u, v, dim=1)).mean()) for u, v in zip(a, b)]
    assert float(cosine_distill(a, b)) == pytest.approx(np.mean(per_level), abs=1e-6)

    with pytest.raises(ConfigError, match="two teachers"):
        ss.RandomSparsity(model, space, distill=True, teacher="frozen")
    with pytest.raises(ConfigError, match="teach\\(\\) needs a frozen teacher"):
        ss.RandomSparsity(model, space).teach(x)


def test_bad_label_free_adapt_input_is_one_line(files, tmp_path, capsys):
    base = ["adapt", "--space", str(files["space"]), "--data", str(files["images"]), "--steps", "1", "--batch", "2"]
    out = ["--out", str(tmp_path / "run"), "--quiet"]
    one_line_exit_2([*base, "--teacher", "frozen", *out], capsys, "--teacher frozen needs --init")
    init = ["--init", str(files["ckpt"])]
    one_line_exit_2([*base, *init, "--teacher", "frozen", "--distill", *out], capsys, "two teachers")
    one_line_exit_2([*base, *init, "--teacher", "frozen", "--task", "seg", *out], capsys, "features head")
    one_line_exit_2([*base, *init, *out], capsys, "without labels", "--teacher frozen")
