"""Supernet adaptation, supernet checkpoints and evaluation: loss goes down, resume is exact, DDP ranks agree,
mIoU is right, bad input gives one line and exit 2. A tiny swin_nano at 64x64 keeps the file fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sparsesearch as ss
import torch
import yaml
from sparsesearch.adapt import AdaptOptions, ConfigSampler, adapt, cosine_schedule, kl_distill
from sparsesearch.cli import main
from sparsesearch.errors import CheckpointError, ConfigError
from sparsesearch.evaluate import Evaluator, confusion_matrix, evaluate, miou_from_confusion, resolve_config
from sparsesearch.supernet import build_eval_dataset, load_supernet, read_supernet_file

from .tiny_spaces import SWIN

ROOT = Path(__file__).resolve().parents[1]

#: the shared tiny swin space with a wider head, a second window choice in the first two stages, and no ordering rule
TINY = {
    **SWIN,
    "model_kwargs": {**SWIN["model_kwargs"], "seg_dim": 32},
    "window_sizes": [[4, 3], [4, 3], [4], [4]],
    "rules": {"non_decreasing_within_stage": False},
}


def _write_space(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_space(tmp_path_factory.mktemp("space") / "tiny.yaml")


def _opts(space_file: Path, out: Path, **kw: object) -> AdaptOptions:
    base: dict[str, object] = dict(
        space=str(space_file), data="synthetic:24", out=str(out), steps=6, batch=4, val_samples=0, ckpt_every=3, lr=2e-3
    )
    base.update(kw)
    return AdaptOptions(**base)  # type: ignore[arg-type]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- a trained run shared by several tests ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(space_file: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run") / "uniform"
    result = adapt(_opts(space_file, out, steps=12, val_samples=8), progress=False)
    return out, result


def test_adapt_lowers_the_loss_and_writes_the_run_files(trained):
    out, result = trained
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    assert {p.name for p in out.iterdir()} == {"supernet.pt", "last.pt", "metrics.jsonl", "args.yaml"}
    assert not list(out.glob("*.tmp"))
    recs = _metrics(out)
    steps = [r for r in recs if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert {"loss", "lr", "images_per_s", "genes", "losses"} <= set(steps[0])
    end = recs[-1]
    assert end["event"] == "end" and end["val"]["dense"]["metric"] == "mIoU" and end["val"]["dense"]["n"] == 8
    assert yaml.safe_load((out / "args.yaml").read_text())["steps"] == 12
    # the sampled configs are the space's, drawn from (seed, step) alone
    space = ss.SearchSpace.load(AdaptOptions(**yaml.safe_load((out / "args.yaml").read_text())).space)
    sampler = ConfigSampler(space, "uniform", seed=0)
    assert [r["genes"] for r in steps] == [space.encode(sampler.sample(t)).tolist() for t in range(12)]


def test_supernet_file_rebuilds_model_space_and_data(trained, space_file):
    out, result = trained
    model, space, meta = load_supernet(out / "supernet.pt")
    assert meta.architecture == "swin_nano" and meta.task == "seg" and meta.num_classes == 4
    assert meta.image_size == (64, 64) and meta.data == "synthetic:24" and meta.finished and meta.step == 12
    assert space.name == "tiny" and space.model_kwargs["embed_dim"] == 16
    assert meta.model_kwargs == {"num_classes": 4, "head": "seg", "drop_path_rate": 0.0}
    assert ss.SearchSpace.load(space_file).genes == space.genes
    ds = build_eval_dataset(meta)
    ev = evaluate(model, space.densest(), ds, 8, batch=8)  # the batch validation used: same arithmetic
    assert (ev.metric, ev.value, ev.n) == ("mIoU", result.val["dense"].value, 8)
    # last.pt is a supernet file too, with the training state
    obj = read_supernet_file(out / "last.pt")
    assert obj["train"]["step"] == 12 and set(obj["train"]["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert {"optimizer", "scheduler", "args", "epoch", "batch_in_epoch"} <= set(obj["train"])


def test_evaluator_is_deterministic_cached_and_restores_the_config(trained):
    out, _ = trained
    model, space, meta = load_supernet(out / "supernet.pt")
    ds = build_eval_dataset(meta)
    ev = Evaluator(model, ds, 6, batch=4)
    cfg = space.uniform(0.5)
    a = ev(cfg)
    assert ev(cfg) is a  # cached
    assert ev(space.densest()).n == 6
    assert Evaluator(model, ds, 6, batch=4, preload=False, cache=False)(cfg).value == a.value
    assert Evaluator(model, ds, 6, ss.EvalSettings(batch=4, preload=False))(cfg).value == a.value
    assert model.config is None and not model.training
    assert evaluate(model, cfg, ds, 100).n == len(ds)  # n larger than the split: all of it


def test_a_config_resolution_is_used_by_the_evaluator(trained):
    out, _ = trained
    model, space, meta = load_supernet(out / "supernet.pt")
    ds = build_eval_dataset(meta)
    seen: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        ev = Evaluator(model, ds, 4, batch=4)
        dense = space.densest()
        resized = ss.SparsityConfig(dense.sparsity, dense.window_size, resolution=(32, 48))
        ev(dense)
        assert seen[-1] == (64, 64)
        got = ev(resized)
        assert seen[-1] == (32, 48)  # the config's own resolution is what runs
        assert got.value == Evaluator(model, ds, 4, batch=4, cache=False)(dense, (32, 48)).value
        assert evaluate(model, resized, ds, 4).value == got.value and seen[-1] == (32, 48)
        ev(resized, (64, 64))
        assert seen[-1] == (64, 64)  # an explicit resolution wins over the config's
    finally:
        hook.remove()


# ---- kill and resume --------------------------------------------------------------------------------------------
class _Killed(Exception):
    pass


def test_kill_and_resume_repeats_the_uninterrupted_losses(space_file, tmp_path):
    # sandwich + distillation + drop path: three passes a step and RNG use that the checkpoint must restore
    kw = dict(sampler="sandwich", distill=True, drop_path=0.1)
    full = adapt(_opts(space_file, tmp_path / "full", **kw), progress=False)

    def kill_after_4(rec: dict) -> None:
        if rec["step"] == 4:  # one step past the checkpoint at 3: that step is lost and redone
            raise _Killed

    with pytest.raises(_Killed):
        adapt(_opts(space_file, tmp_path / "cut", **kw), progress=False, on_step=kill_after_4)
    resumed = adapt(AdaptOptions(out=str(tmp_path / "cut")), resume=True, progress=False)
    assert resumed.resumed_from == 3
    assert resumed.losses == {s: full.losses[s] for s in (4, 5, 6)}  # bit-exact on CPU
    assert resumed.fingerprints == full.fingerprints
    logged = [r for r in _metrics(tmp_path / "cut") if "event" not in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]  # the lost step 4 was dropped and redone
    assert [r["loss"] for r in logged] == [full.losses[s] for s in range(1, 7)]
    assert set(logged[0]["losses"]) == {"dense", "sparsest", "sampled"}
    # a finished run resumes to nothing
    again = adapt(AdaptOptions(out=str(tmp_path / "cut")), resume=True, progress=False)
    assert again.finished and again.losses == {}


def test_uniform_distill_bf16_autocast_and_several_resolutions(tmp_path):
    # two resolutions: the teacher (densest) runs at 64, the sparsest at 48, sampled configs at either
    space = _write_space(tmp_path / "mr.yaml", resolutions=[[64, 64], [48, 48]])
    res = adapt(_opts(space, tmp_path / "r", steps=3, distill=True, amp=True, val_samples=4), progress=False)
    assert set(res.losses) == {1, 2, 3} and all(np.isfinite(list(res.losses.values())))
    assert set(_metrics(tmp_path / "r")[0]["losses"]) == {"dense", "sampled"}
    assert res.val["dense"].n == 4 and np.isfinite(res.val["sparsest"].value)
    assert load_supernet(tmp_path / "r" / "supernet.pt")[2].image_size == (64, 64)


def test_classification_folder_end_to_end(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        for i in range(4):
            arr = np.clip(np.array(colour) + rng.integers(-20, 20, size=(40, 40, 3)), 0, 255).astype(np.uint8)
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "data" / cls / f"{i}.png")
    space = _write_space(tmp_path / "s.yaml")
    rc = main(
        [
            "adapt",
            "--space",
            str(space),
            "--data",
            str(tmp_path / "data"),
            "--steps",
            "3",
            "--batch",
            "4",
            "--val-samples",
            "8",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    model, _, meta = load_supernet(tmp_path / "run" / "supernet.pt")
    assert meta.task == "cls" and meta.num_classes == 2 and meta.class_names == ["cat", "dog"]
    assert model.head_type == "cls"
    assert main(["eval", "--supernet", str(tmp_path / "run" / "supernet.pt"), "--config", "uniform:0.5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["metric"] == "top1" and row["n"] == 8 and 0 <= row["value"] <= 100


# ---- distributed ------------------------------------------------------------------------------------------------
def test_two_process_gloo_run_agrees_with_itself_and_with_one_process(space_file, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "sparsesearch", "adapt", "--space", str(space_file), "--data", "synthetic:24", "--steps", "3",
        "--batch", "2", "--lr", "2e-3", "--sampler", "sandwich", "--val-samples", "0", "--device", "cpu",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone prints ...
    assert {p.name for p in out.iterdir()} == {"supernet.pt", "last.pt", "metrics.jsonl", "args.yaml"}  # ... and writes
    recs = _metrics(out)
    end = recs[-1]
    assert end["world_size"] == 2 and end["ranks_agree"]
    assert len(set(end["fingerprints"])) == 1 and len(set(end["config_digests"])) == 1  # same weights, same configs
    # 2 processes x batch 2 see the same images per step as 1 process x batch 4: same losses up to rounding
    single = adapt(_opts(space_file, tmp_path / "one", steps=3, sampler="sandwich"), progress=False)
    ddp_losses = [r["loss"] for r in recs if "event" not in r]
    np.testing.assert_allclose(ddp_losses, [single.losses[s] for s in (1, 2, 3)], rtol=1e-4)


# ---- sampling, schedule, losses ---------------------------------------------------------------------------------
def test_sampler_rules(space_file):
    space = ss.SearchSpace.load(space_file)
    s = ConfigSampler(space, "sandwich", seed=5)
    roles = [p.role for p in s.configs(0)]
    assert roles == ["dense", "sparsest", "sampled"]
    assert s.configs(3)[0].config == space.densest() and s.configs(3)[1].config == space.sparsest()
    assert s.sample(7) == ConfigSampler(space, "uniform", seed=5).sample(7)  # a function of (seed, step) only
    assert len({s.sample(t).key() for t in range(20)}) > 5
    assert [p.role for p in ConfigSampler(space, "uniform", 0, distill=True).configs(0)] == ["dense", "sampled"]
    assert [p.role for p in ConfigSampler(space, "dense").configs(0)] == ["dense"]
    ordered = ss.SearchSpace(
        {
            **TINY,
            "genes": [
                {"name": "a", "blocks": ["0.0"]},
                {"name": "b", "blocks": ["0.1"]},
                {"name": "c", "blocks": ["1.0", "1.1", "2.0", "2.1", "3.0", "3.1"]},
            ],
            "rules": {"non_decreasing_within_stage": True},
        }
    )
    for t in range(30):
        sp = ConfigSampler(ordered, "uniform", 1).sample(t).sparsity[0]
        assert sp[0] <= sp[1]
    with pytest.raises(ConfigError, match="unknown sampler"):
        ConfigSampler(space, "random")


def test_every_parameter_gets_a_gradient_under_any_config(space_file):
    # why DDP needs no find_unused_parameters: pruned blocks run the same weights on fewer windows
    space = ss.SearchSpace.load(space_file)
    torch.manual_seed(0)
    model = space.create_model(num_classes=3, head="seg")
    x = torch.randn(2, 3, 64, 64)
    for cfg in (space.sparsest(), ConfigSampler(space, "uniform", 3).sample(0)):
        model.zero_grad(set_to_none=True)
        model(x, config=cfg).square().mean().backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_cosine_schedule_and_kl_distill():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = cosine_schedule(opt, total_steps=10, warmup_steps=2, lr=1.0, min_lr=0.1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0.1
    logits = torch.randn(2, 3, 4, 4)
    assert float(kl_distill(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_distill(logits, torch.randn(2, 3, 8, 8))) > 0  # teacher at another size is resized
    target = torch.full((2, 4, 4), 255)
    target[0, 0, 0] = 1
    other = torch.randn(2, 3, 4, 4)
    kl = torch.nn.functional.kl_div(
        other[0, :, 0, 0].log_softmax(0), logits[0, :, 0, 0].log_softmax(0), log_target=True, reduction="sum"
    )
    assert float(kl_distill(other, logits, mask=target != 255)) == pytest.approx(float(kl), rel=1e-5)


# ---- metrics ----------------------------------------------------------------------------------------------------
def test_confusion_matrix_matches_an_independent_count():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (3, 17, 13), generator=g)
    target[target == 4] = 255  # ignored
    pred = torch.randint(0, 4, (3, 17, 13), generator=g)
    cm = confusion_matrix(pred, target, 4, 255)
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    expected = np.zeros((4, 4), dtype=np.int64)
    for a, b in zip(t, p):
        if a != 255:
            expected[a, b] += 1
    assert np.array_equal(cm.numpy(), expected)
    miou, per_class = miou_from_confusion(cm)
    iou = [expected[c, c] / (expected[c].sum() + expected[:, c].sum() - expected[c, c]) for c in range(4)]
    assert miou == pytest.approx(100 * np.mean(iou)) and per_class == pytest.approx([100 * v for v in iou])


class _Stub(torch.nn.Module):
    """Predicts, for item i of the batch, the mask it was given (as one-hot logits), whatever the input."""

    head_type = "seg"
    num_classes = 3

    def __init__(self, preds: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.preds, self.seen = preds, 0
        self.config: object = None
        self.configs: list[object] = []

    def set_config(self, cfg: object) -> None:
        self.config = cfg
        self.configs.append(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.preds[self.seen : self.seen + x.shape[0]]
        self.seen += x.shape[0]
        return torch.nn.functional.one_hot(p, 3).permute(0, 3, 1, 2).float()


class _Masks(torch.utils.data.Dataset):
    ignore_index = 255
    num_classes = 3

    def __init__(self, masks: torch.Tensor) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int):
        return torch.zeros(3, *self.masks.shape[1:]), self.masks[i]


def test_miou_of_a_model_whose_predictions_are_known():
    # labels: item 0 all class 0; item 1 left half class 1, right half class 2 (one pixel ignored); item 2 unused
    labels = torch.zeros(3, 2, 4, dtype=torch.long)
    labels[1, :, :2], labels[1, :, 2:] = 1, 2
    labels[1, 0, 3] = 255
    preds = labels.clamp(max=2).clone()
    preds[0, 0, 0] = 1  # one class-0 pixel called 1
    preds[1, 1, 3] = 1  # one class-2 pixel called 1
    preds[1, 0, 3] = 0  # the ignored pixel: does not count
    preds[2] = 2  # item 2 is outside n=2
    # class 0: tp 7, fn 1, fp 0 -> 7/8; class 1: tp 4, fp 2 -> 4/6; class 2: tp 2, fn 1 -> 2/3
    cfg = ss.SparsityConfig([[0.5]], [4])
    stub = _Stub(preds)
    res = evaluate(stub, cfg, _Masks(labels), n=2, batch=1)
    assert res.metric == "mIoU" and res.n == 2
    assert res.value == pytest.approx(100 * (7 / 8 + 4 / 6 + 2 / 3) / 3)
    assert stub.configs == [cfg, None] and stub.seen == 2  # applied for the call, then restored


def test_top1_for_classification():
    class Cls(torch.nn.Module):
        head_type = "cls"
        num_classes = 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    items = [(torch.full((3, 2, 2), float(p)), t) for p, t in [(0, 0), (1, 1), (2, 0), (1, 1)]]
    res = evaluate(Cls(), None, items, batch=3, num_classes=3)  # type: ignore[arg-type]
    assert (res.metric, res.value, res.n) == ("top1", 75.0, 4)
    assert res.stderr == pytest.approx(100 * (0.75 * 0.25 / 3) ** 0.5)  # binomial, n - 1 in the denominator


def test_resolve_config_shortcuts(space_file, tmp_path):
    space = ss.SearchSpace.load(space_file)
    assert resolve_config("dense", space) == space.densest()
    assert resolve_config("sparsest", space) == space.sparsest()
    assert resolve_config("uniform:0.5", space) == space.uniform(0.5)
    space.uniform(0.25).save(tmp_path / "c.json")
    assert resolve_config(str(tmp_path / "c.json"), space) == space.uniform(0.25)
    with pytest.raises(ConfigError, match="neither dense"):
        resolve_config("nope", space)


# ---- CLI --------------------------------------------------------------------------------------------------------
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def test_cli_config_file_flags_override_and_eval(space_file, tmp_path, capsys):
    cfg = tmp_path / "adapt.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "space": str(space_file),
                "data": "synthetic:16",
                "steps": 50,
                "batch": 4,
                "val-samples": 4,
                "sampler": "sandwich",
                "lr": 1e-3,
            }
        )
    )
    out = tmp_path / "run"
    rc, stdout, err = _cli(capsys, "adapt", "--config-file", str(cfg), "--steps", "2", "--out", str(out))
    assert rc == 0, err
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["steps"] == 2 and args["sampler"] == "sandwich" and args["lr"] == 1e-3 and args["batch"] == 4
    assert "wrote" in stdout
    rc, stdout, err = _cli(
        capsys,
        "eval",
        "--supernet",
        str(out / "supernet.pt"),
        "--config",
        "dense",
        "--config",
        "uniform:0.5",
        "--val-samples",
        "3",
        "--json",
    )
    assert rc == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["config"] for r in rows] == ["dense", "uniform:0.5"] and all(r["n"] == 3 for r in rows)
    assert all(r["metric"] == "mIoU" and 0 <= r["value"] <= 100 for r in rows)
    # --out holds a finished run: refused without --resume/--overwrite
    rc, _, err = _cli(capsys, "adapt", "--config-file", str(cfg), "--out", str(out))
    assert rc == 2
    _one_error_line(err, "already holds a finished run", "--resume", "--overwrite")
    # a resumed run keeps its settings
    rc, _, err = _cli(capsys, "adapt", "--out", str(out), "--resume", "--lr", "0.1")
    assert rc == 2
    _one_error_line(err, "--lr", "differs")


def _bad_cases(space_file: Path, trained_out: Path, tmp: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    other = ss.create_model("swin_nano", embed_dim=8, num_heads=[1, 1, 1, 1], head=None)
    torch.save(other.state_dict(), tmp / "other_arch.pth")
    truncated = tmp / "truncated.pt"
    data = (trained_out / "last.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cut_run = tmp / "cut_run"
    cut_run.mkdir()
    (cut_run / "last.pt").write_bytes(data[: len(data) // 3])
    other_space = _write_space(
        tmp / "other.yaml", model_kwargs={"embed_dim": 8, "num_heads": [1, 1, 1, 1], "window_size": 4}
    )
    base = ["adapt", "--space", str(space_file), "--data", "synthetic:16", "--steps", "1", "--batch", "4"]
    return {
        "bad data folder": (
            base[:4] + [str(tmp / "no_such_folder")] + base[5:] + ["--out", str(tmp / "a")],
            ("no_such_folder", "does not exist"),
        ),
        "init of another architecture": (
            base + ["--init", str(tmp / "other_arch.pth"), "--out", str(tmp / "b")],
            ("does not fit", "another architecture"),
        ),
        "truncated init": (base + ["--init", str(truncated), "--out", str(tmp / "c")], ("truncated",)),
        "truncated supernet": (["eval", "--supernet", str(truncated)], ("truncated",)),
        "truncated resume": (["adapt", "--out", str(cut_run), "--resume"], ("truncated",)),
        "resume of another space": (
            ["adapt", "--out", str(trained_out), "--resume", "--space", str(other_space)],
            ("checkpoint of space", "embed_dim"),
        ),
        "resume without checkpoint": (["adapt", "--out", str(tmp / "empty"), "--resume"], ("no last.pt",)),
        "missing space": (
            ["adapt", "--space", str(tmp / "nope.yaml"), "--data", "synthetic", "--out", str(tmp / "d")],
            ("nope.yaml", "does not exist"),
        ),
        "plain weights as supernet": (
            ["eval", "--supernet", str(tmp / "other_arch.pth")],
            ("not a sparsesearch supernet",),
        ),
    }


def test_bad_input_gives_one_line_and_exit_2(space_file, trained, tmp_path, capsys):
    for name, (argv, needles) in _bad_cases(space_file, trained[0], tmp_path).items():
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2, (name, err)
        _one_error_line(err, *needles)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on error


def test_library_errors_are_typed(space_file, trained, tmp_path):
    with pytest.raises(CheckpointError, match="not of --space"):
        adapt(
            AdaptOptions(out=str(trained[0]), space=str(_write_space(tmp_path / "o.yaml", resolutions=[[32, 32]]))),
            resume=True,
            progress=False,
        )
    with pytest.raises(ConfigError, match="steps or epochs"):
        AdaptOptions.from_mapping({"steps": 2, "epochs": 1})
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        AdaptOptions.from_mapping({"learning_rate": 2})


def test_example_config_file_is_valid():
    opts = AdaptOptions.from_mapping(AdaptOptions.from_file(ROOT / "examples" / "adapt.yaml"))
    assert opts.sampler == "sandwich" and opts.distill and (ROOT / opts.space).is_file()
