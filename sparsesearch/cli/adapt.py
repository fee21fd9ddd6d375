"""`sparsesearch adapt` (train a supernet under random layerwise sparsity) and `sparsesearch eval` (score configs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ._base import Command, CommandError, add_model_source, add_options

_S = argparse.SUPPRESS  # unset flags stay absent, so a --config-file value is only overridden by a real flag


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


class AdaptCommand(Command):
    name = "adapt"
    help = "train a weight-sharing supernet: every step a random layerwise sparsity (resumable, torchrun-ready)"
    description = (
        "Fine-tune one set of weights under a freshly sampled sparsity config every step, so that every config "
        "of the space works without retraining. Writes OUT/supernet.pt, OUT/last.pt, OUT/metrics.jsonl and "
        "OUT/args.yaml. Options may come from --config-file (YAML, keys = option names); flags override it. "
        "Distributed: torchrun --nproc_per_node N -m sparsesearch adapt ... (--batch is per process)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        a("--config-file", metavar="YAML", default=_S, help="YAML mapping of options (e.g. examples/adapt.yaml)")
        from ..adapt import AdaptOptions  # noqa: PLC0415

        add_options(parser, AdaptOptions, suppress_defaults=True)
        a("--resume", action="store_true", help="continue the run in --out from its last.pt")
        a("--overwrite", action="store_true", help="start afresh in an --out that already holds a run")
        a("--quiet", action="store_true", help="no progress bar and no summary")

    def run(self, args: argparse.Namespace) -> int:
        from ..adapt import AdaptOptions, adapt  # noqa: PLC0415

        if args.resume and args.overwrite:
            raise CommandError("--resume and --overwrite contradict each other: pick one")
        values: dict[str, Any] = {}
        source = "adapt"
        if hasattr(args, "config_file"):
            values.update(AdaptOptions.from_file(args.config_file))
            source = args.config_file
        names = AdaptOptions.field_names()
        values.update({k: getattr(args, k) for k in names if hasattr(args, k)})
        if not values.get("out"):
            raise CommandError("--out DIR is required (the run folder)")
        if not args.resume:
            missing = [f"--{k}" for k in ("space", "data") if not values.get(k)]
            if missing:
                raise CommandError(f"{' and '.join(missing)} required (or --resume an existing run)")
        opts = AdaptOptions.from_mapping(values, source)
        main = _is_main_process()
        log = (lambda msg: print(msg, flush=True)) if main and not args.quiet else None
        result = adapt(
            opts,
            resume=args.resume,
            overwrite=args.overwrite,
            explicit=set(values),
            progress=False if args.quiet else None,
            log=log,
        )
        if main and not args.quiet and result.losses:
            last = result.losses[max(result.losses)]
            val = ", ".join(f"{k} {v}" for k, v in result.val.items())
            print(
                f"wrote {result.out / 'supernet.pt'}: {result.total_steps} steps, final loss {last:.4f}"
                + (f"; val {val}" if val else "")
                + (f"; {result.world_size} processes agree" if result.world_size > 1 else "")
            )
        return 0


class EvalCommand(Command):
    name = "eval"
    help = "score sparsity configs: mIoU (seg) or top-1 (cls) on labels, or fidelity to the dense model without labels"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        a = parser.add_argument
        add_model_source(parser)
        a(
            "--config",
            action="append",
            metavar="CFG",
            help="dense, sparsest, uniform:P or a config JSON/YAML file; repeat for several (default: dense)",
        )
        a(
            "--accuracy",
            choices=["labels", "fidelity"],
            default="labels",
            help="labels: mIoU (seg) or top-1 (cls); fidelity: how closely each config reproduces the dense model on "
            "the same images (no labels needed; any head or none)",
        )
        a("--data", metavar="DATA", help="data set (default: the supernet's; needed with --model)")
        a("--split", default="val", choices=["train", "val", "test"], help="split to score (default val)")
        a("--val-samples", type=int, metavar="N", help="score the first N items (default: all)")
        a("--batch", type=int, default=16, metavar="N")
        a("--device", choices=["auto", "cpu", "cuda"], default="auto")
        a("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
        a("--per-class", action="store_true", help="also print the IoU of each class")
        a("--json", action="store_true", help="one JSON object per config instead of text")

    def run(self, args: argparse.Namespace) -> int:
        import torch  # noqa: PLC0415

        from ..adapt.sampling import input_resolution  # noqa: PLC0415
        from ..evaluate import resolve_config  # noqa: PLC0415
        from ..supernet import load_model_source  # noqa: PLC0415

        if args.val_samples is not None and args.val_samples < 1:
            raise CommandError("--val-samples must be >= 1")
        if args.batch < 1:
            raise CommandError("--batch must be >= 1")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise CommandError("--device cuda was asked for but torch sees no CUDA device")
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        model, space, meta = load_model_source(
            supernet=args.supernet,
            model=args.model,
            checkpoint=args.checkpoint,
            space=args.space,
            head=args.head,
            device=device,
        )
        specs = args.config or ["dense"]
        configs = [(s, resolve_config(s, space)) for s in specs]  # check them all before the slow part
        ev, names = _evaluator(args, model, space, meta, device)
        data = args.data or meta.data
        for spec, cfg in configs:
            assert cfg is not None
            res = ev(cfg, input_resolution(space, cfg))
            if args.json:
                print(json.dumps({"config": spec, "data": data, "split": args.split, **res.to_dict()}))
                continue
            print(
                f"{spec:<24} {res.metric} {res.value:6.2f}  (n={res.n}, {args.split} of {data}, "
                f"mean sparsity {cfg.mean_sparsity():.2f})"
            )
            if args.per_class and res.per_class:
                for i, v in enumerate(res.per_class):
                    label = names[i] if names and i < len(names) else str(i)
                    print(f"    {label:<20} {'-' if v != v else f'{v:6.2f}'}")
        sys.stdout.flush()
        return 0


def _evaluator(args: argparse.Namespace, model: Any, space: Any, meta: Any, device: str) -> tuple[Any, list[str]]:
    """The evaluator `eval` scores with (labelled, or fidelity to the space's densest config) and the class names."""
    from ..evaluate import Evaluator  # noqa: PLC0415
    from ..fidelity import FidelityEvaluator, dense_reference  # noqa: PLC0415
    from ..supernet import build_eval_dataset  # noqa: PLC0415

    fidelity = args.accuracy == "fidelity"
    dataset = build_eval_dataset(meta, args.data, args.split, labelled=not fidelity)
    if fidelity:
        ev: Any = FidelityEvaluator(
            model,
            dataset,
            args.val_samples,
            reference=dense_reference(space),
            batch=args.batch,
            device=device,
            amp=args.amp,
        )
        return ev, []
    ev = Evaluator(
        model,
        dataset,
        args.val_samples,
        batch=args.batch,
        device=device,
        amp=args.amp,
        task=meta.task,
        num_classes=meta.num_classes,
    )
    return ev, list(getattr(dataset, "class_names", None) or meta.class_names)


COMMANDS = [AdaptCommand, EvalCommand]
