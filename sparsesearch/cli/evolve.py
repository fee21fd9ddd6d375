"""`sparsesearch evolve`: the latency-constrained search."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._base import Command, add_model_source

if TYPE_CHECKING:
    from ..search.report import Point


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
        from ..search import ALGORITHMS  # noqa: PLC0415

        add_model_source(parser)
        parser.add_argument("--table", required=True, help="latency table written by `sparsesearch profile`")
        parser.add_argument("--latency", required=True, help="budget: 30ms, '30 ms', 0.03s, 30000us, or 0.6x of dense")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument(
            "--accuracy",
            default=None,
            metavar="labels|fidelity|MODULE:FUNCTION",
            help="labels (default): mIoU or top-1 on labelled --data; fidelity: how closely each config reproduces "
            "the dense model on the same images (no labels needed: a folder of images will do; any head or none); "
            "or your own importable function fn(model, config) -> float, higher is better (the working directory "
            "is importable)",
        )
        parser.add_argument(
            "--data",
            default=None,
            help="validation data: a data folder (for fidelity, images alone will do) or synthetic[:N] (default: the "
            "supernet's training data; needed with --model)",
        )
        parser.add_argument("--val-samples", type=int, default=64, help="validation images per accuracy estimate")
        parser.add_argument("--batch", type=int, default=16, help="evaluation batch size")
        parser.add_argument("--device", default="cpu", help="where accuracies are evaluated (cpu, cuda)")
        parser.add_argument("--algorithm", choices=ALGORITHMS, default="ga")
        parser.add_argument("--population", type=int, default=32)
        parser.add_argument("--generations", type=int, default=12)
        parser.add_argument("--workers", type=int, default=1, help="evaluate accuracies on N local Ray workers")
        parser.add_argument("--ray", default=None, metavar="ADDRESS", help="evaluate on an existing Ray cluster")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue a killed search in --out")
        parser.add_argument("--overwrite", action="store_true", help="discard a previous search in --out")
        parser.add_argument(
            "--allow-foreign-table",
            action="store_true",
            help="use a table measured on another device/dtype/torch (what-if studies)",
        )
        parser.add_argument(
            "--no-refine",
            dest="refine",
            action="store_false",
            help="skip the final neighbourhood search around the best config",
        )
        parser.add_argument(
            "--no-warm-start",
            dest="warm_start",
            action="store_false",
            help="start from random configs only (default: score each choice of each gene alone first and seed "
            "half the first population with the best configs an additive model of those drops finds in the budget)",
        )
        parser.add_argument(
            "--finalists",
            type=int,
            default=0,
            metavar="N",
            help="before choosing, time the N fastest-predicted configs the pick weighs (accuracy tied with the "
            "best, within the budget + 10%%) on this machine with dense, and pick by those figures (a table "
            "under-predicts some configs, and the fastest predicted of many is likely one); default 0: off",
        )
        from .latency import add_table_check_flags  # noqa: PLC0415

        add_table_check_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        from ..progress import progress_bar  # noqa: PLC0415
        from ..search.evolve import EvolveOptions, evolve  # noqa: PLC0415

        opts = EvolveOptions(**{k: getattr(args, k) for k in EvolveOptions.__dataclass_fields__})
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
        rows: list[tuple[str, Point | None]] = [("dense", s.dense)]
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
