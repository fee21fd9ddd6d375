"""`sparsesearch evolve`: the latency-constrained search."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._base import Command, add_model_source, add_options, options_from_args

if TYPE_CHECKING:
    from ..search.records import Candidate


class EvolveCommand(Command):
    name = "evolve"
    help = "search per-layer sparsity (and windows) for the best accuracy under a latency budget"
    description = (
        "Search the supernet's space (or a pretrained model's: --model NAME --checkpoint PATH --space FILE, no "
        "training needed; with --accuracy fidelity no labels either) for the most accurate config whose latency, "
        "predicted from TABLE, meets the budget. Writes pareto.json, best.json, history.jsonl and pareto.png to "
        "--out, with the uniform-sparsity and uniform-resize baselines at the same budget."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..search.evolve import EvolveOptions  # noqa: PLC0415
        from .latency import add_table_check_flags  # noqa: PLC0415

        add_model_source(parser)
        add_options(parser, EvolveOptions)
        add_table_check_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        from ..progress import progress_bar  # noqa: PLC0415
        from ..search.evolve import EvolveOptions, evolve  # noqa: PLC0415

        opts = options_from_args(EvolveOptions, args)
        bars: list = []  # created at the first generation: input errors come out as one clean line

        def on_generation(rec: dict) -> None:
            if not bars:
                bars.append(progress_bar(args.generations, desc=f"evolve ({args.algorithm})", unit="gen"))
            bar = bars[0]
            if rec.get("refined"):
                bar.set_postfix_str("refined around the best")
                return
            bar.n = min(int(rec["generation"]), args.generations)
            post = {"evaluated": rec.get("evaluated", 0)}
            if "best_accuracy" in rec:
                post.update(best=f"{rec['best_accuracy']:.2f}", ms=f"{rec['best_latency_ms']:.2f}")
            bar.set_postfix(post)  # refreshes the bar

        try:
            s = evolve(opts, on_generation=on_generation)
        finally:
            for bar in bars:
                bar.close()
        if s.extra.get("table_check") is not None:
            print(
                f"table speed check: {s.extra['table_check'].line()}"
                + (" -> predictions rescaled" if args.rescale_table else "")
            )
        builtin = args.accuracy in (None, "labels", "fidelity")
        scored_by = f"{args.accuracy}" if not builtin else f"{s.metric} on {args.val_samples} validation images"
        print(
            f"budget {s.budget_ms:.2f} ms ({args.latency}); {s.evaluated} configs evaluated "
            f"({s.new_evaluations} new), scored by {scored_by}"
        )
        rows: list[tuple[str, Candidate | None]] = [("dense", s.dense)]
        ub, rb = s.baselines.best(s.baselines.uniform_sparsity), s.baselines.best(s.baselines.uniform_resize)
        rows.append((f"uniform sparsity ({ub.label})", ub) if ub else ("uniform sparsity", None))
        rows.append((f"uniform resize ({rb.label})", rb) if rb else ("uniform resize", None))
        rows.append(("searched", s.best))
        table = [
            [name, f"{p.latency_ms:.2f}", f"{p.accuracy:.2f}", f"{p.gflops:.2f}" if p.gflops is not None else "-"]
            if p
            else [name, "-", "none within budget", "-"]
            for name, p in rows
        ]
        print(tabulate(table, headers=["config", "pred. ms", s.metric, "GFLOPs"], tablefmt="github"))
        print(f"wrote {s.out}/best.json, pareto.json ({len(s.front)} configs), history.jsonl, pareto.png")
        return 0


COMMANDS = [EvolveCommand]
