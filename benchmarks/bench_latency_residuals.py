"""Where does a latency table's remaining error come from? Decompose prediction - measurement per config.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_latency_residuals.py --table T [--n 12] [--rounds 6]

For the dense config, one config per sparsity level and N random configs (seed 0), timed interleaved in one
process (so the machine's speed is common to all of them), each round measures:

- `plain`: whole forwards back to back, as `sparsesearch latency validate` times them;
- `hooked`: whole forwards with a forward hook on every part (the profiler's in-model pass), giving the total
  and every part's time inside this very config.

Then, after dividing by the machine-speed factor (median of plain / predicted, what `latency check` measures):
- hooks = hooked total - plain (what the timing hooks themselves cost);
- glue = hooked total - sum of its parts, against the table's offset;
- parts = sum of parts measured in this config - the table's sum of parts, split by stage and by
  pruned / dense blocks (do parts cost the same inside a mixed config as in the profile's level configs?).
The summary fits the relative error of the speed-corrected prediction against the number of pruned blocks and
the predicted time (a tilt) and prints where the error sits.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsesearch.latency import LatencyTable, Profiler, ProfileSettings, tune_malloc, validation_genomes  # noqa: E402
from sparsesearch.latency.measure import CpuTimer, time_parts  # noqa: E402
from sparsesearch.ops import keep_count  # noqa: E402
from sparsesearch.scoped import torch_threads as num_threads  # noqa: E402

from _machine import machine_line  # noqa: E402


def _profiler(table: LatencyTable) -> Profiler:
    """A profiler of the table's setup: its model (same seed, head, dtype) and its list of parts."""
    m = table.meta
    s = ProfileSettings(
        device=m["device_type"],
        dtype=m["dtype"],
        batch=int(m["batch"]),
        threads=int(m["threads"]),
        head=m.get("head", "cls"),
        num_classes=int(m.get("num_classes", 1000)),
        seed=int(m.get("seed", 0)),
        resolutions=tuple(tuple(r) for r in table.resolutions),
        calibration=0,
    )
    return Profiler(table.space, s)


def measure(table: LatencyTable, n: int, rounds: int, repeats: int) -> list[dict]:
    prof = _profiler(table)
    model, parts = prof.model(), prof.model_parts()
    space = table.space
    configs = validation_genomes(table, n, seed=0)
    g = torch.Generator().manual_seed(0)
    images = {r: torch.randn(int(table.meta["batch"]), 3, *r, generator=g) for r in space.resolutions}
    if table.meta.get("malloc"):
        tune_malloc()
    timer = CpuTimer(float(table.meta.get("trim", 0.2)), clock=table.meta.get("clock", "wall"))
    plain: list[list[float]] = [[] for _ in configs]
    hooked: list[list[dict]] = [[] for _ in configs]
    with num_threads(int(table.meta["threads"])), torch.inference_mode():
        for r in range(rounds):
            for i, (_, genome) in enumerate(configs):
                model.set_config(space.decode(genome))
                image = images[space.resolutions[int(genome[-1])]]
                forward = functools.partial(model, image)
                plain[i].append(timer.measure(forward, 1, repeats).ms)
                stats = time_parts(forward, parts, 1, repeats, "cpu", timer.clock, timer.trim)
                hooked[i].append({k: v.ms for k, v in stats.items() if k != "plain"})
                plain[i][-1] = 0.5 * (plain[i][-1] + stats["plain"].ms)  # before and right after the hooked ones
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    rows = []
    for (label, genome), p, h in zip(configs, plain, hooked):
        cfg = space.decode(genome)
        pred_parts = table.parts(cfg)
        mean_parts = {k: float(np.mean([x[k] for x in h])) for k in h[0]}
        rows.append(
            {
                "label": label,
                "genome": genome.tolist(),
                "plain_ms": float(np.mean(p)),
                "hooked": mean_parts,
                "predicted_parts": pred_parts,
                "predicted_ms": float(table.predict(cfg)),
                "pruned_blocks": sum(
                    1
                    for s, row in enumerate(cfg.sparsity)
                    for q in row
                    if q > 0
                    and keep_count(
                        q, table.resolution_table(cfg.resolution).kinds[(s, cfg.window_size[s], False)].num_windows
                    )
                    < table.resolution_table(cfg.resolution).kinds[(s, cfg.window_size[s], False)].num_windows
                ),
            }
        )
    return rows


def analyse(rows: list[dict]) -> dict:
    pred = np.array([r["predicted_ms"] for r in rows])
    plain = np.array([r["plain_ms"] for r in rows])
    speed = float(np.median(plain / pred))
    hooked_total = np.array([r["hooked"]["total"] for r in rows])
    names = [k for k in rows[0]["hooked"] if k != "total"]
    sum_parts = np.array([sum(r["hooked"][k] for k in names) for r in rows])
    pred_parts = np.array([sum(v for k, v in r["predicted_parts"].items() if k != "correction") for r in rows])
    pred_glue = np.array([r["predicted_parts"]["correction"] for r in rows])
    err = (pred * speed - plain) / plain  # relative error once the machine-speed factor is removed
    out = {
        "speed_factor": speed,
        "mape_raw_pct": float(100 * np.mean(np.abs((pred - plain) / plain))),
        "mape_speed_removed_pct": float(100 * np.mean(np.abs(err))),
        "kendall_tau": float(__import__("scipy.stats", fromlist=["kendalltau"]).kendalltau(pred, plain).statistic),
        "hooks_ms": [float(np.mean(hooked_total - plain)), float(np.std(hooked_total - plain))],
        "glue_ms_measured": [float(np.mean(hooked_total - sum_parts)), float(np.std(hooked_total - sum_parts))],
        "glue_ms_table": float(np.mean(pred_glue)),
        "parts_ratio_measured_over_table": [
            float(np.mean(sum_parts / (pred_parts * speed))),
            float(np.std(sum_parts / (pred_parts * speed))),
        ],
    }
    # which parts carry the error: measured in-config / table entry (speed removed), pruned vs dense blocks, per stage
    by: dict[str, list[float]] = {}
    for r in rows:
        for k in names:
            table_ms = r["predicted_parts"].get(k)
            if not table_ms:
                continue
            group = k if ".blocks." not in k else f"stage {k.split('.')[1]} blocks"
            by.setdefault(group, []).append(r["hooked"][k] / (table_ms * speed))
    out["part_ratios"] = {k: [round(float(np.mean(v)), 4), round(float(np.std(v)), 4)] for k, v in sorted(by.items())}
    # tilt: relative error against the number of pruned blocks and against the predicted time
    npruned = np.array([r["pruned_blocks"] for r in rows], dtype=float)
    if np.ptp(npruned) > 0:
        out["error_per_pruned_block_pct"] = float(100 * np.polyfit(npruned, err, 1)[0])
    out["error_per_ms_pct"] = float(100 * np.polyfit(pred, err, 1)[0])
    out["worst"] = max(
        ({"label": r["label"], "error_pct": float(100 * e)} for r, e in zip(rows, err)),
        key=lambda d: abs(d["error_pct"]),
    )
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    print(machine_line())
    table = LatencyTable.load(args.table)
    t0 = time.time()
    rows = measure(table, args.n, args.rounds, args.repeats)
    summary = analyse(rows)
    print(f"{args.table}: {len(rows)} configs x {args.rounds} rounds in {time.time() - t0:.0f} s")
    for k, v in summary.items():
        print(f"  {k:<36} {v}")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
