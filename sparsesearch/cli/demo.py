"""`sparsesearch demo`: the whole pipeline on the built-in default (what `make demo` runs)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ._base import Command

if TYPE_CHECKING:
    from ..pipeline import DemoSummary


class DemoCommand(Command):
    name = "demo"
    help = "run the whole pipeline on synthetic scenes: profile, pretrain, adapt, evolve, export, compare"
    description = (
        "Profile a CPU latency table for search_spaces/demo.yaml (swin_nano; --space for another), train it dense "
        "on synthetic dense scenes (the stand-in for a pretrained checkpoint), adapt a supernet from it, search under "
        "a latency budget, export the result, and print dense vs unadapted pruning vs uniform sparsity vs uniform "
        "resize vs searched (predicted and measured x dense, held-out mIoU, FLOPs), with a two-line verdict. Each "
        "space's demo has a folder of its own. A second run reuses what the first produced; --fresh starts over."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..pipeline import DemoOptions  # noqa: PLC0415

        d = DemoOptions()
        parser.add_argument(
            "--out",
            default=None,
            help="run folder (default: runs/demo for the built-in space, runs/demo_<space file name> for another; "
            "a folder that holds another space's demo is refused)",
        )
        parser.add_argument("--space", default=d.space)
        parser.add_argument("--data", default=d.data, help=f"data spec (default {d.data})")
        parser.add_argument(
            "--resolutions",
            type=int,
            nargs="+",
            default=None,
            help="sides to profile (default: the space's resolutions; a single-resolution space adds 5/6 and 2/3 of it "
            "for the uniform-resize reference)",
        )
        parser.add_argument("--pretrain-steps", type=int, default=d.pretrain_steps, help="dense pretraining steps")
        parser.add_argument("--steps", type=int, default=d.steps, help="adaptation steps")
        parser.add_argument("--latency", default=d.latency, help="search budget (e.g. 0.6x, 40ms)")
        parser.add_argument("--algorithm", default=d.algorithm)
        parser.add_argument("--population", type=int, default=d.population)
        parser.add_argument("--generations", type=int, default=d.generations)
        parser.add_argument("--val-samples", type=int, default=d.val_samples, help="val items the search scores")
        parser.add_argument(
            "--test-samples", type=int, default=d.test_samples, help="held-out test items the final table scores"
        )
        parser.add_argument(
            "--threads", type=int, default=None, help="torch CPU threads for training (default: torch's)"
        )
        parser.add_argument(
            "--latency-threads",
            type=int,
            default=d.latency_threads,
            help=f"CPU threads of the latency table and the final timing (default {d.latency_threads})",
        )
        parser.add_argument("--seed", type=int, default=d.seed)
        parser.add_argument(
            "--finalists",
            type=int,
            default=d.finalists,
            help=f"the search times this many of the pick's candidates before choosing (default {d.finalists}; 0: off)",
        )
        parser.add_argument("--fresh", action="store_true", help="discard earlier results in --out")
        parser.add_argument("--quick", action="store_true", help="a reduced run in seconds (tiny model, 64x64)")

    def run(self, args: argparse.Namespace) -> int:
        from ..pipeline import DemoOptions, run_demo  # noqa: PLC0415

        keys = (
            "out space data resolutions pretrain_steps steps latency algorithm population generations val_samples "
            "test_samples threads latency_threads seed finalists fresh quick"
        ).split()
        t0 = time.time()
        opts = DemoOptions(**{k: getattr(args, k) for k in keys})
        if opts.resolutions is not None:
            opts.resolutions = tuple(opts.resolutions)
        s = run_demo(opts, say=lambda msg: print(msg, flush=True))
        if s.reused:
            print(f"reused from an earlier run: {', '.join(s.reused)} (--fresh to redo)")
        print(format_summary(s))
        print(
            f"\nplot: {s.out}/search/pareto.png  best config: {s.out}/search/best.json  model: {s.out}/export/ "
            f"({time.time() - t0:.0f} s)"
        )
        return 0


def format_summary(s: DemoSummary) -> str:
    """The final table, the note on the resize baseline and the two-line verdict, as printed."""
    from tabulate import tabulate  # noqa: PLC0415

    rows = [
        [
            r.name,
            f"{r.predicted_x:.2f}",
            f"{r.measured_x:.2f}",
            f"{r.predicted_ms:.2f}",
            f"{r.measured_ms:.2f}",
            f"{r.accuracy:.2f}",
            f"{r.gflops:.3f}",
        ]
        for r in s.rows
    ]
    headers = ["config", "pred. x dense", "meas. x dense", "pred. ms", "meas. ms", s.metric, "GFLOPs"]
    return "\n".join(
        [
            f"\nbudget {s.budget_ms:.2f} ms ({s.budget_x:.2f}x of dense as predicted), measured on {s.machine}; "
            f"{s.metric} on {s.samples} items of the held-out {s.split} split",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True),
            s.resize_note,
            *([s.baseline_note] if s.baseline_note else []),
            "",
            *s.verdict,
        ]
    )


COMMANDS = [DemoCommand]
