"""`sparsesearch demo`: the whole pipeline on the built-in default (what `make demo` runs)."""

from __future__ import annotations

import argparse
import time

from ._base import Command


class DemoCommand(Command):
    name = "demo"
    help = "run the whole pipeline on synthetic sparse scenes: profile, adapt, evolve, export, compare"
    description = (
        "Profile a CPU latency table for search_spaces/demo.yaml (swin_nano), adapt a supernet on synthetic "
        "sparse scenes, search under a latency budget, export the result, and print dense vs uniform sparsity vs "
        "uniform resize vs searched (predicted and measured latency, mIoU, FLOPs). A second run reuses what the "
        "first produced; --fresh starts over."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..pipeline import DemoOptions  # noqa: PLC0415

        d = DemoOptions()
        parser.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
        parser.add_argument("--space", default=d.space)
        parser.add_argument("--data", default=d.data)
        parser.add_argument("--steps", type=int, default=d.steps, help="adaptation steps")
        parser.add_argument("--latency", default=d.latency, help="search budget (e.g. 0.6x, 40ms)")
        parser.add_argument("--algorithm", default=d.algorithm)
        parser.add_argument("--population", type=int, default=d.population)
        parser.add_argument("--generations", type=int, default=d.generations)
        parser.add_argument("--val-samples", type=int, default=d.val_samples)
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
        parser.add_argument("--quick", action="store_true", help="a reduced run in seconds (tiny model, 64x64)")

    def run(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        from ..pipeline import DemoOptions, run_demo  # noqa: PLC0415

        opts = DemoOptions(
            **{
                k: getattr(args, k)
                for k in (
                    "out",
                    "space",
                    "data",
                    "steps",
                    "latency",
                    "algorithm",
                    "population",
                    "generations",
                    "val_samples",
                    "threads",
                    "seed",
                    "fresh",
                    "quick",
                )
            }
        )
        t0 = time.time()
        s = run_demo(opts, say=lambda msg: print(msg, flush=True))
        if s.reused:
            print(f"reused from an earlier run: {', '.join(s.reused)} (--fresh to redo)")
        dense = s.rows[0]
        rows = [
            [
                r.name,
                f"{r.predicted_ms:.2f}",
                f"{r.measured_ms:.2f}",
                f"{r.measured_ms / dense.measured_ms:.2f}",
                f"{r.accuracy:.2f}",
                f"{r.gflops:.3f}",
            ]
            for r in s.rows
        ]
        print(f"\nbudget {s.budget_ms:.2f} ms ({args.latency} of dense), measured on {s.machine}")
        print(
            tabulate(rows, headers=["config", "pred. ms", "meas. ms", "x dense", s.metric, "GFLOPs"], tablefmt="github")
        )
        print(
            f"\nplot: {s.out}/search/pareto.png  best config: {s.out}/search/best.json  model: {s.out}/export/ "
            f"({time.time() - t0:.0f} s)"
        )
        return 0


COMMANDS = [DemoCommand]
