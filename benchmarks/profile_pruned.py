"""Per-op CPU self time of a backbone, dense vs uniformly pruned (torch.profiler), to see where the time goes.

.venv/bin/python benchmarks/profile_pruned.py [--model swin_tiny_patch4_window7_224] [--resolution 512]
    [--sparsity 0.7] [--threads 2] [--calls 5] [--rows 18]
"""

from __future__ import annotations

import argparse
import json

import sparsesearch as ss
import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="swin_tiny_patch4_window7_224")
    ap.add_argument("--model-kwargs", type=json.loads, default={})
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.7])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ss.create_model(args.model, head=None, **args.model_kwargs).eval()
    x = torch.randn(1, 3, args.resolution, args.resolution)
    with torch.inference_mode():
        for p in [0.0, *args.sparsity]:
            model.set_config(None if p == 0 else ss.SparsityConfig.uniform(p, model.depths, model.default_window_size))
            for _ in range(2):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    model(x)
            total = sum(e.self_cpu_time_total for e in prof.key_averages()) / args.calls / 1e3
            print(f"\n## sparsity {p}: {total:.1f} ms self CPU per call")
            print(
                prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40)
            )


if __name__ == "__main__":
    main()
