"""`sparsesearch demo`: the main job on the built-in default (what `make demo` runs)."""
from __future__ import annotations

import argparse

from ._base import Command, resolution


class DemoCommand(Command):
    name = "demo"
    help = "build a model from a search space, apply configs, compare parameters, FLOPs and CPU latency"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--space", default="search_spaces/swin_t.yaml", help="search space YAML")
        parser.add_argument("--resolution", type=resolution, default=None, help="input size (default: the space's)")
        parser.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7], help="uniform sparsities to compare")
        parser.add_argument("--random", type=int, default=2, metavar="N", help="also compare N random configs of the space")
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
        parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timing per config")
        parser.add_argument("--seed", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np  # noqa: PLC0415
        import torch  # noqa: PLC0415
        from tabulate import tabulate  # noqa: PLC0415
        from torch.utils import benchmark  # noqa: PLC0415
        from tqdm import tqdm  # noqa: PLC0415

        from ..flops import count_flops  # noqa: PLC0415
        from ..space import SearchSpace  # noqa: PLC0415

        if args.threads:
            torch.set_num_threads(args.threads)
        space = SearchSpace.load(args.space)
        res = args.resolution or space.resolutions[0]
        torch.manual_seed(args.seed)
        model = space.create_model(head=None).eval()
        params = sum(p.numel() for p in model.parameters())
        print(space.describe())
        print(f"{space.architecture}: {params / 1e6:.2f} M parameters (backbone), input {res[0]}x{res[1]}, "
              f"{torch.get_num_threads()} CPU threads")
        rng = np.random.default_rng(args.seed)
        configs = [(f"uniform {p:g}", space.uniform(p)) for p in args.sparsity]
        configs += [(f"random #{i + 1}", space.sample(rng)) for i in range(args.random)]
        x = torch.randn(1, 3, *res)
        rows, dense_ms, dense_flops = [], None, None
        with torch.inference_mode():
            for label, cfg in tqdm(configs, desc="configs", unit="cfg"):
                fl = count_flops(model, res, cfg).total
                model.set_config(cfg)
                model(x)
                timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
                ms = timer.blocked_autorange(min_run_time=args.min_time).median * 1e3
                dense_ms = dense_ms or ms
                dense_flops = dense_flops or fl
                genes = " ".join(f"{row[0]:.1f}" for row in cfg.sparsity)
                rows.append([label, f"{cfg.mean_sparsity():.2f}", genes, f"{fl / 1e9:.2f}", f"{fl / dense_flops:.2f}",
                             f"{ms:.1f}", f"{ms / dense_ms:.2f}"])
        print(tabulate(rows, headers=["config", "mean p", "p (1st block/stage)", "GFLOPs", "x first", "CPU ms", "x first"],
                       tablefmt="github"))
        return 0


COMMANDS = [DemoCommand]
