"""The Python API end to end, on a small model and synthetic sparse scenes (a few minutes on a laptop CPU).

    .venv/bin/python examples/api_end_to_end.py [--out runs/api_example]

1. a search space and its model; 2. a latency table measured here; 3. a short supernet adaptation;
4. a search under a budget in one call (`ss.search`), scored by our own function; 5. export and reload.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sparsesearch as ss
from sparsesearch.adapt import AdaptOptions, adapt
from sparsesearch.evaluate import Evaluator
from sparsesearch.export import export_model, load_exported
from sparsesearch.latency import ProfileSettings, profile
from sparsesearch.supernet import build_eval_dataset, load_supernet

SPACE = """\
name: api_example
architecture: swin_nano
resolutions: [[128, 128]]
sparsity_choices: [0.0, 0.2, 0.4, 0.6, 0.8]
genes:
  - {name: s1, blocks: ["0.0", "0.1"]}
  - {name: s2, blocks: ["1.0", "1.1"]}
  - {name: s3, blocks: ["2.0", "2.1"]}
  - {name: s4, blocks: ["3.0", "3.1"], choices: [0.0]}
window_sizes: [[8], [8], [8], [8]]
"""


def train(out: Path, steps: int) -> Path:
    """The supernet of the example (trained once; a second run reuses it)."""
    supernet = out / "adapt" / "supernet.pt"
    if not supernet.exists():
        adapt(
            AdaptOptions(
                space=str(out / "space.yaml"),
                data="synthetic:128",
                out=str(out / "adapt"),
                steps=steps,
                batch=8,
                lr=1e-3,
                sampler="sandwich",
                distill=True,
                val_samples=16,
                num_classes=4,
                device="cpu",
            ),
            progress=True,
        )
    return supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/api_example")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. the space: which blocks share a sparsity gene, and their choices
    (out / "space.yaml").write_text(SPACE)
    space = ss.SearchSpace.load(out / "space.yaml")
    print(space.describe())

    # 2. a latency table for this machine (head/classes as the model will be trained)
    table_path = out / "table.json"
    if not table_path.exists():
        profile(space, ProfileSettings(head="seg", num_classes=4, repeats=5, rounds=1, calibration=4), table_path)
    table = ss.LatencyTable.load(table_path)
    print(table, f"dense {table.dense_latency():.2f} ms, range {table.min_latency():.2f}-{table.max_latency():.2f} ms")

    # 3. a supernet: every step trains a random config (plus the densest and sparsest: sandwich)
    supernet = train(out, args.steps)
    model, space, meta = load_supernet(supernet)

    # 4. search in one call: latency from the table, accuracy from our function (mIoU of the supernet on 16
    # validation scenes); the budget halfway through what the space can reach on this machine (a string such
    # as "0.8x" or "12ms" works too)
    evaluator = Evaluator(model, build_eval_dataset(meta), 16)

    def miou(m, config: ss.SparsityConfig) -> float:  # m has the config applied; higher is better
        return evaluator(config).value

    miou.metric = "mIoU"
    result = ss.search(
        space,
        latency=table,
        accuracy=miou,
        budget=(table.min_latency() + table.max_latency()) / 2,
        model=model,
        algorithm="ga",
        population=12,
        generations=4,
        seed=0,
        out=out / "search",
        overwrite=True,
    )
    best = result.best
    print(
        f"best under {result.budget_ms:.2f} ms: {best.config.to_dict()} -> {best.latency_ms:.2f} ms, "
        f"mIoU {best.accuracy:.2f}"
    )
    ub = result.best_uniform_sparsity
    if ub is not None:
        print(f"best uniform sparsity within the budget: {ub.label}, {ub.latency_ms:.2f} ms, mIoU {ub.accuracy:.2f}")
    best.save(out / "best.json")  # a config file (plus figures) that export and SparsityConfig.load read

    # 5. a deployable model with its card, reloaded in one call
    report = export_model(supernet, out / "best.json", out / "export", table=table_path, val_samples=16)
    print(
        f"exported: {report.gflops:.3f} GFLOPs (dense {report.gflops_dense:.3f}), "
        f"measured {report.measured_ms:.2f} ms (dense {report.measured_dense_ms:.2f}), {report.accuracy}"
    )
    deployed = load_exported(out / "export")
    print("reloaded:", type(deployed).__name__, deployed.config.to_dict())


if __name__ == "__main__":
    main()
