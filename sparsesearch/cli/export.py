"""`sparsesearch export` and `sparsesearch flops`."""

from __future__ import annotations

import argparse
from typing import Any

from ._base import Command, add_model_source, resolution


class ExportCommand(Command):
    name = "export"
    help = "fix a config into a plain deployable model with a model card (optionally fine-tuned, ONNX)"
    description = (
        "Fix a config of the supernet (or of a pretrained model: --model NAME --checkpoint PATH --space FILE) into "
        "a plain deployable model with a model card (FLOPs, predicted and measured latency, accuracy), optionally "
        "fine-tuned and exported to ONNX."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_model_source(parser)
        parser.add_argument("--config", required=True, help="a config file, e.g. the search's best.json")
        parser.add_argument("--out", required=True, help="output folder")
        parser.add_argument("--table", default=None, help="latency table for the predicted latency")
        parser.add_argument("--data", default=None, help="evaluate accuracy on this data (default: the supernet's)")
        parser.add_argument("--val-samples", type=int, default=None, help="validation images for the accuracy figures")
        parser.add_argument(
            "--accuracy",
            choices=["labels", "fidelity"],
            default="labels",
            help="the accuracy figures: labels (mIoU or top-1) or fidelity to the dense model (no labels needed)",
        )
        parser.add_argument("--finetune-steps", type=int, default=0, help="fine-tune this one config first")
        parser.add_argument("--finetune-lr", type=float, default=1e-4)
        parser.add_argument("--onnx", action="store_true", help="also export model.onnx and check it with ONNX Runtime")
        parser.add_argument(
            "--quantize",
            default=None,
            metavar="dynamic",
            help="with --onnx, also write model.int8.onnx: ONNX Runtime's dynamic int8 quantisation of the linear "
            "layers, checked, timed and (with labels) evaluated beside the fp32 model",
        )
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--no-measure", dest="measure", action="store_false", help="skip timing on this machine")
        from .latency import add_table_check_flags  # noqa: PLC0415

        add_table_check_flags(parser)

    def run(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        from ..export import check_quantize, export_model  # noqa: PLC0415

        check_quantize(args.onnx, args.quantize)  # bad input: one line before anything loads
        r = export_model(
            args.supernet,
            args.config,
            args.out,
            model=args.model,
            checkpoint=args.checkpoint,
            space=args.space,
            head=args.head,
            data=args.data,
            val_samples=args.val_samples,
            accuracy=args.accuracy,
            table=args.table,
            finetune_steps=args.finetune_steps,
            finetune_lr=args.finetune_lr,
            onnx=args.onnx,
            quantize=args.quantize,
            device=args.device,
            measure=args.measure,
            progress=lambda msg: print(f"export: {msg}"),
            table_check=args.table_check,
            rescale_table=args.rescale_table,
        )
        if r.table_check is not None:
            c = r.table_check
            print(
                f"table speed check: measured/predicted {c['factor']:.3f} (per config {c['ratio_range'][0]:.3f} .. "
                f"{c['ratio_range'][1]:.3f}), {c['seconds']:.1f} s"
                + (" -> predictions rescaled" if c["rescaled"] else "")
            )
        rows = [
            ["parameters", f"{r.parameters / 1e6:.2f} M", ""],
            ["GFLOPs", f"{r.gflops:.2f}", f"{r.gflops_dense:.2f}"],
        ]
        if r.predicted_ms is not None:
            rows.append(["predicted ms", f"{r.predicted_ms:.2f}", f"{r.predicted_dense_ms:.2f}"])
        if r.measured_ms is not None:
            rows.append([f"measured ms ({r.measured_on})", f"{r.measured_ms:.2f}", f"{r.measured_dense_ms:.2f}"])
        rows += _onnx_rows(r)
        if r.accuracy is not None and r.accuracy_dense is not None:
            rows.append(
                [
                    f"{r.accuracy['metric']} (n={r.accuracy['n']})",
                    f"{r.accuracy['value']:.2f}",
                    f"{(r.accuracy_dense or {}).get('value', float('nan')):.2f}",
                ]
            )
        if r.accuracy_int8 is not None:
            rows.append([f"{r.accuracy_int8['metric']}, ONNX int8", f"{r.accuracy_int8['value']:.2f}", ""])
        print(tabulate(rows, headers=["", "exported config", "dense"], tablefmt="github"))
        if r.onnx is not None:
            return _report_onnx(r.onnx, args.out)
        _wrote(args.out)
        return 0


def _wrote(out: str) -> None:
    print(
        f"wrote {out}: model.safetensors, model.json, config.json, card.json (load it with sparsesearch.load_exported)"
    )


def _onnx_rows(r: Any) -> list[list[str]]:
    """The card's ONNX Runtime latency rows (fp32, int8: config and dense), if it has them."""
    ms = r.onnx_ms or {}
    return [
        [f"ONNX Runtime {kind} ms", f"{ms[kind]:.2f}", f"{ms[f'{kind}_dense']:.2f}"]
        for kind in ("fp32", "int8")
        if kind in ms
    ]


def _report_onnx(onnx: dict[str, Any], out: str) -> int:
    """Print the ONNX checks (fp32, int8) and what was written; 1 when a check failed."""
    checks = [("model.onnx", onnx, "max |onnxruntime - torch|")]
    if "int8" in onnx:
        checks.append(("model.int8.onnx", onnx["int8"], "int8: max |onnxruntime - torch|"))
    for name, check, what in checks:
        by_batch = ", ".join(f"batch {b}: {d:.2e}" for b, d in check["max_abs_diff_by_batch"].items())
        print(f"ONNX: {out}/{name} (any batch size), {what} {by_batch} ({check['max_rel_diff']:.1e} of the range)")
    if not onnx["ok"]:
        print("sparsesearch export: error: ONNX Runtime's output of model.onnx differs from torch's", flush=True)
        return 1
    if "int8" in onnx and not onnx["int8"]["ok"]:  # quantisation error, not a broken export: the card has accuracy
        print(
            f"sparsesearch export: warning: model.int8.onnx differs from torch by {onnx['int8']['max_rel_diff']:.2f} "
            f"of the output's range (over {onnx['int8']['tolerance']}): check its accuracy before deploying it",
            flush=True,
        )
    _wrote(out)
    return 0


class FlopsCommand(Command):
    name = "flops"
    help = "FLOPs per stage and in total for a config (fvcore; one multiply-add = one FLOP)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--space", required=True, help="search space YAML")
        parser.add_argument("--config", default="dense", help="config file, 'dense', or 'uniform:P' (default: dense)")
        parser.add_argument(
            "--resolution", type=resolution, default=None, help="input size (default: the config's or space's)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        from ..config import SparsityConfig  # noqa: PLC0415
        from ..errors import ConfigError  # noqa: PLC0415
        from ..flops import count_flops  # noqa: PLC0415
        from ..space import SearchSpace  # noqa: PLC0415

        space = SearchSpace.load(args.space)
        if args.config == "dense":
            cfg = space.densest()
        elif args.config.startswith("uniform:"):
            try:
                cfg = space.uniform(float(args.config.split(":", 1)[1]))
            except ValueError:
                raise ConfigError(f"--config {args.config!r}: write uniform:P with P a number in [0, 1)") from None
        else:
            cfg = SparsityConfig.load(args.config)
        res = args.resolution or cfg.resolution or space.resolutions[0]
        model = space.create_model(head=None)
        dense = count_flops(model, res, SparsityConfig([[0.0] * d for d in space.depths], cfg.window_size))
        r = count_flops(model, res, cfg)
        rows = [
            [
                part,
                f"{r.parts.get(part, 0) / 1e9:.3f}",
                f"{dense.parts.get(part, 0) / 1e9:.3f}",
                f"{r.parts.get(part, 0) / max(dense.parts.get(part, 1), 1):.2f}",
            ]
            for part in dense.parts
        ]
        rows.append(["total", f"{r.gflops:.3f}", f"{dense.gflops:.3f}", f"{r.total / dense.total:.2f}"])
        print(f"{space.architecture} backbone at {res[0]}x{res[1]}, config mean sparsity {cfg.mean_sparsity():.2f}")
        print(tabulate(rows, headers=["part", "GFLOPs", "dense GFLOPs", "ratio"], tablefmt="github"))
        return 0


COMMANDS = [ExportCommand, FlopsCommand]
