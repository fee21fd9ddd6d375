"""sparsesearch inside your own code: your model head, your loss, your training loop, your metric.

    PYTHONPATH=. .venv/bin/python examples/own_training_loop.py [--steps 40] [--table my_table.json]

A centre-point ("CenterNet"-style) object detector on the synthetic sparse scenes of sparsesearch.data:
1. a window-prunable Swin backbone as timm-style feature maps (`features_only=True`) under a detection head
   of our own (a small FPN and a per-class centre heatmap, focal loss);
2. a plain PyTorch loop adapts it as a supernet: `ss.RandomSparsity` gives each step's configs (densest,
   sparsest, random: the same on every DDP rank) and the in-place distillation loss (heatmaps: "bce");
3. `ss.search` finds per-stage sparsity under a budget, scored by our own metric (centre-detection F1);
4. the searched config is printed against the best uniform sparsity within the same budget.

Latency comes from `--table` (measured on your machine with `sparsesearch profile --space SPACE --head none`)
or, by default, from an analytic cost: the multiply-adds of the blocks' kept windows (a stand-in with the
shape of the FLOPs; measured tables on a busy CPU are too noisy for a 5-minute example).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import sparsesearch as ss
import torch
import torch.nn.functional as F
from scipy import ndimage
from sparsesearch.data import SparseScenes
from sparsesearch.ops import keep_count
from torch import nn

SPACE = """\
name: own_loop
architecture: swin_nano
model_kwargs: {embed_dim: 32, num_heads: [1, 2, 4, 8], window_size: 4}
resolutions: [[96, 96]]
sparsity_choices: [0.0, 0.2, 0.4, 0.6, 0.8]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s3, blocks: ["2.0", "2.1"]}
  - {name: s4, blocks: ["3.0", "3.1"], choices: [0.0]}
window_sizes: [[4], [4], [4], [4]]
"""
SIZE, STRIDE, CLASSES = 96, 8, 4  # input side, heatmap stride, classes of the synthetic set (background included)


# ---- data: centre heatmaps from the synthetic segmentation masks ------------------------------------------------
def centres(mask: np.ndarray) -> list[tuple[int, float, float]]:
    """(class, row, col) of each object (connected component of one class) of an (H, W) mask, in pixels."""
    out = []
    for c in range(1, CLASSES):
        labels, n = ndimage.label(mask == c)
        for cy, cx in ndimage.center_of_mass(mask == c, labels, range(1, n + 1)) if n else []:
            out.append((c, float(cy), float(cx)))
    return out


def heatmap(objs: list[tuple[int, float, float]], sigma: float = 1.0) -> torch.Tensor:
    """(CLASSES-1, H/8, W/8) target: a Gaussian of peak 1 at the cell of each centre (CenterNet)."""
    h = SIZE // STRIDE
    yy, xx = np.mgrid[0:h, 0:h]
    hm = np.zeros((CLASSES - 1, h, h), np.float32)
    for c, cy, cx in objs:
        py, px = int(cy // STRIDE), int(cx // STRIDE)
        hm[c - 1] = np.maximum(hm[c - 1], np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * sigma**2)))
    return torch.from_numpy(hm)


def load(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    ds = SparseScenes(n, SIZE, num_classes=CLASSES, split=split, objects=(2, 5))
    items = [ds[i] for i in range(n)]
    objs = [centres(m.numpy()) for _, m in items]
    return torch.stack([x for x, _ in items]), torch.stack([heatmap(o) for o in objs]), objs


# ---- the model: sparsesearch backbone features + our own head -------------------------------------------------
class CentreNet(nn.Module):
    """Backbone feature maps (strides 8, 16, 32) -> small FPN -> per-class centre logits at stride 8."""

    def __init__(self, backbone: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        chans = backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in chans)
        self.head = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, CLASSES - 1, 1))
        nn.init.constant_(self.head[-1].bias, -2.19)  # CenterNet's prior: sigmoid = 0.1

    def set_config(self, config) -> None:  # what ss.RandomSparsity and ss.search call
        self.backbone.set_config(config)

    @property
    def config(self):
        return self.backbone.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)  # NCHW maps, finest first
        y = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            y = lat(f) + F.interpolate(y, size=f.shape[-2:], mode="nearest")
        return self.head(y)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    loss = pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - target) ** 4 * p**2 * (1 - p).log()
    return -loss.sum() / pos.sum().clamp(min=1.0)


# ---- our metric ------------------------------------------------------------------------------------------------
def detection_f1(logits: torch.Tensor, objs: list, threshold: float = 0.3, radius: float = 1.5) -> float:
    """Centre-detection F1 (percent): heatmap peaks (3x3 max) over `threshold`, matched greedily to true centres
    of the same class within `radius` cells."""
    p = logits.sigmoid()
    peaks = (p == F.max_pool2d(p, 3, 1, 1)) & (p > threshold)
    tp = fp = fn = 0
    for b, truth in enumerate(objs):
        free = [(c - 1, cy / STRIDE - 0.5, cx / STRIDE - 0.5) for c, cy, cx in truth]
        for c, py, px in peaks[b].nonzero().tolist():
            hit = next((t for t in free if t[0] == c and (t[1] - py) ** 2 + (t[2] - px) ** 2 <= radius**2), None)
            if hit is None:
                fp += 1
            else:
                tp += 1
                free.remove(hit)
        fn += len(free)
    return 100.0 * 2 * tp / max(1, 2 * tp + fp + fn)


# ---- latency: a table, or the analytic cost of the kept windows -------------------------------------------------
def analytic_ms(model: CentreNet, ms_per_gmac: float = 20.0):
    """config -> the multiply-adds of its blocks' kept windows (+ the rest), scaled to pseudo-milliseconds."""
    bb = model.backbone.backbone

    def cost(cfg: ss.SparsityConfig) -> float:
        macs, side = 0.0, SIZE // 4
        for s, stage in enumerate(bb.layers):
            d, w = stage.dim, cfg.window_size[s]
            nw = (-(-side // w)) ** 2  # windows of the padded map
            for p in cfg.sparsity[s]:
                tokens = keep_count(p, nw) * w * w
                macs += tokens * (12 * d * d + 2 * w * w * d)  # qkv, proj, MLP 4x; attention
            side //= 2
        return 0.5 + ms_per_gmac * macs / 1e9

    return cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/own_loop")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--table", default=None, help="a latency table of the space (default: the analytic cost)")
    ap.add_argument("--budget", default="0.75x")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(out / "space.yaml")

    # 1. backbone as feature maps (timm-style) under our own head
    backbone = space.create_model(features_only=True, out_indices=(1, 2, 3))
    print("backbone maps:", backbone.feature_info.channels(), "channels at strides", backbone.feature_info.reduction())
    model = CentreNet(backbone)
    train_x, train_y, _ = load("train", 96)
    val_x, _, val_objs = load("val", 32)

    # 2. our loop, adapting a supernet: each step trains the densest, the sparsest and a random config
    rs = ss.RandomSparsity(model, space, sampler="sandwich", seed=0, distill=True, kind="bce")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    for step in range(args.steps):
        i = torch.randint(0, len(train_x), (6,), generator=torch.Generator().manual_seed(step))
        x, y = train_x[i], train_y[i]
        losses = []
        for sub in rs.configs(step):
            with rs.applied(sub):
                logits = model(x)
            loss = focal_loss(logits, y)
            if sub.teacher:
                rs.set_teacher(logits)  # the densest run's heatmaps: the soft targets of the others
            else:
                loss = 0.5 * loss + 0.5 * rs.distill_loss(logits)
            loss.backward()
            losses.append(float(loss.detach()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss " + "  ".join(f"{s.role} {v:.3f}" for s, v in zip(rs.configs(step), losses)))
    model.eval()

    # 3. search with our own metric
    @torch.no_grad()
    def accuracy(m: CentreNet, config: ss.SparsityConfig) -> float:
        return detection_f1(torch.cat([m(val_x[j : j + 16]) for j in range(0, len(val_x), 16)]), val_objs)

    accuracy.metric = "F1"  # the name reports use
    latency = args.table or analytic_ms(model)
    result = ss.search(
        space,
        latency=latency,
        accuracy=accuracy,
        budget=args.budget,
        model=model,
        population=10,
        generations=4,
        seed=0,
        out=out / "search",
        overwrite=True,
        progress=False,
        flops=False,
    )

    # 4. searched vs uniform sparsity at the same budget
    unit = "ms" if args.table else "cost"
    print(f"\nbudget {result.budget_ms:.2f} {unit} ({args.budget}); {result.evaluated} configs evaluated")
    rows = [("dense", result.dense), ("best uniform sparsity", result.best_uniform_sparsity), ("searched", result.best)]
    for name, c in rows:
        if c is None:
            print(f"{name:<22} none within the budget")
            continue
        per_stage = [round(sum(r) / len(r), 2) for r in c.config.sparsity]
        print(f"{name:<22} {unit} {c.latency_ms:6.2f}   F1 {c.accuracy:5.1f}   sparsity per stage {per_stage}")
    result.plot(out / "search" / "pareto.png")
    print(f"wrote {out / 'search'} (best.json, pareto.json, pareto.png); {time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
