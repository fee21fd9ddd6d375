"""`sparsesearch demo`: the whole pipeline on the built-in default (what `make demo` runs)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ._base import Command, add_options, options_from_args

if TYPE_CHECKING:
    from ..pipeline import DemoSummary


class DemoCommand(Command):
    name = "demo"
    help = "run the whole pipeline on synthetic scenes: profile, pretrain, adapt, evolve, export, compare"
    description = (
        "Profile a CPU latency table for search_spaces/demo.yaml (--space for another), train its model dense "
        "on synthetic dense scenes (the stand-in for a pretrained checkpoint), adapt a supernet from it, search under "
        "a latency budget, search the pretrained weights the same way without training, export the result, and print "
        "dense vs unadapted pruning vs uniform sparsity vs uniform resize vs training-free searched vs searched "
        "(predicted and measured x dense, held-out mIoU, FLOPs), with a verdict. Each "
        "space's demo has a folder of its own. A second run reuses what the first produced; --fresh starts over."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..pipeline import DemoOptions  # noqa: PLC0415

        add_options(parser, DemoOptions)

    def run(self, args: argparse.Namespace) -> int:
        from ..latency import tune_malloc  # noqa: PLC0415
        from ..pipeline import DemoOptions, run_demo  # noqa: PLC0415

        t0 = time.time()
        opts = options_from_args(DemoOptions, args)
        tune_malloc()  # this process times as `sparsesearch profile` does: no page faults from its allocation history
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
    """The final table, the note on the resize baseline and the verdict, as printed."""
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
