"""`sparsesearch profile` (measure a latency table) and `sparsesearch latency validate|show|predict`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LatencyTableError, SparseSearchError
from ._base import Command, CommandError, resolution

if TYPE_CHECKING:
    from ..latency import LatencyTable, Stat
    from ..latency.check import TableCheck
    from ..latency.plan import Entry
    from ..search.budget import Budget
    from ..space import SearchSpace


def _res(r: tuple[int, int]) -> str:
    return f"{r[0]}x{r[1]}"


def _load_space(path: str) -> SearchSpace:
    from ..space import SearchSpace  # noqa: PLC0415

    return SearchSpace.load(path)


def _load_table(path: str, space: str | None = None) -> LatencyTable:
    from ..latency import LatencyTable  # noqa: PLC0415

    table = LatencyTable.load(path)
    if space is not None:
        table.check_space(_load_space(space))
    return table


def _allocator_as_profiled(table: LatencyTable) -> None:
    """Time in this process with the allocator setting the table was profiled with (`tune_malloc`, process-wide:
    applied by the command for its own process, never by the library on its own)."""
    if table.meta.get("malloc") and table.meta.get("device_type") == "cpu":
        from ..latency import tune_malloc  # noqa: PLC0415

        tune_malloc()


def add_table_check_flags(parser: argparse.ArgumentParser) -> None:
    """--no-table-check and --rescale-table (evolve, export, latency predict)."""
    parser.add_argument(
        "--no-table-check",
        dest="table_check",
        action="store_false",
        help="skip the speed check an absolute budget runs (the table's calibration configs timed here)",
    )
    parser.add_argument(
        "--rescale-table",
        action="store_true",
        help="scale the table's predictions by the speed check's measured/predicted factor (recorded in the outputs)",
    )


def table_speed(
    table: LatencyTable, budget: Budget | None, args: argparse.Namespace
) -> tuple[LatencyTable, TableCheck | None]:
    """Run the speed check for a command (see `ensure_table_speed`) and print its one line; (table, check)."""
    from ..latency import ensure_table_speed  # noqa: PLC0415

    absolute = budget.value if budget is not None and not budget.relative else None
    table, checked = ensure_table_speed(table, absolute, check=args.table_check, rescale=args.rescale_table)
    if checked is not None:
        print(f"table speed check: {checked.line()}" + (" -> predictions rescaled" if args.rescale_table else ""))
    return table, checked


def _runtime_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--runtime of the commands that use a table: default the table's; another is refused in one line."""
    parser.add_argument(
        "--runtime",
        default=None,
        choices=["torch", "onnxruntime"],
        help=f"the runtime to {what} (default: the table's; a table of another runtime is refused)",
    )


class ProfileCommand(Command):
    name = "profile"
    help = "measure a latency table of a search space on this machine"
    description = (
        "Time every block kind of a search space's model at every kept-window count the space can produce, plus "
        "the fixed parts (patch embedding, patch merging, norm, head), in several rounds, and fit the back-to-back "
        "correction on whole-model runs. Resumable: rerun the same command after an interruption."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--space",
            required=True,
            help="search space YAML (a file of search_spaces/; `sparsesearch models` lists the architectures)",
        )
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
        parser.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
        parser.add_argument(
            "--resolution", type=resolution, nargs="+", metavar="HxW", help="input size(s) (default: the space's)"
        )
        parser.add_argument(
            "--threads", type=int, default=None, help="torch threads (default: torch's; 1 on shared CPUs)"
        )
        parser.add_argument(
            "--out", type=Path, help="table path (default latency_tables/<device>/<space>_<res>_<dtype>_b<batch>.json)"
        )
        parser.add_argument("--warmup", type=int, default=2, help="untimed calls per entry and round (default 2)")
        parser.add_argument("--repeats", type=int, default=10, help="timed calls per entry and round (default 10)")
        parser.add_argument("--rounds", type=int, default=3, help="passes over all entries, averaged (default 3)")
        parser.add_argument(
            "--calibration", type=int, default=12, help="whole-model configs for the correction (default 12)"
        )
        parser.add_argument("--head", default="cls", choices=["cls", "seg", "none"], help="model head (default cls)")
        parser.add_argument("--num-classes", type=int, default=1000)
        parser.add_argument(
            "--max-k-points", type=int, default=24, help="above this many kept counts per block, use a grid"
        )
        parser.add_argument(
            "--flush-mb", type=float, default=None, help="cache flush before each timed call (MiB; 0: none)"
        )
        parser.add_argument(
            "--wait-quiet",
            action="store_true",
            help="CPU: start each measurement only when other processes leave the cores free (see --max-load)",
        )
        parser.add_argument(
            "--max-load",
            type=float,
            default=None,
            help="with --wait-quiet: most cores other processes may use (default: cores left free by --threads, +0.25)",
        )
        parser.add_argument(
            "--max-wait", type=float, default=600.0, help="total wait for a quiet machine, seconds (default 600)"
        )
        parser.add_argument(
            "--clock",
            default="wall",
            choices=["wall", "thread"],
            help="wall: elapsed time; thread: the thread's CPU time "
            "(CPU, --threads 1: ignores other processes' time slices)",
        )
        parser.add_argument(
            "--statistic",
            default="mean",
            choices=["mean", "min"],
            help="an entry's figure: mean = trimmed mean of each round, averaged over the rounds (default); "
            "min = the fastest sample of all rounds",
        )
        parser.add_argument(
            "--default-malloc",
            action="store_true",
            help="leave glibc's allocator as it is (default: keep freed memory in the heap, see tune_malloc)",
        )
        parser.add_argument(
            "--runtime",
            default="torch",
            choices=["torch", "onnxruntime"],
            help="where the parts run: torch eager (default) or onnxruntime (each part exported to ONNX and timed "
            "in ONNX Runtime; CPU, fp32; needs pip install 'sparsesearch[onnx]')",
        )
        parser.add_argument("--fresh", action="store_true", help="ignore partial results of an interrupted run")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from ..latency import Profiler, ProfileSettings, default_table_path  # noqa: PLC0415

        space = _load_space(args.space)
        settings = ProfileSettings(
            device=args.device,
            dtype=args.dtype,
            batch=args.batch,
            resolutions=tuple(args.resolution) if args.resolution else None,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            rounds=args.rounds,
            head=args.head,
            num_classes=args.num_classes,
            max_k_points=args.max_k_points,
            calibration=args.calibration,
            flush_mb=args.flush_mb,
            clock=args.clock,
            statistic=args.statistic,
            malloc=not args.default_malloc,
            quiet=args.wait_quiet,
            max_load=args.max_load,
            max_wait_s=args.max_wait,
            seed=args.seed,
            runtime=args.runtime,
        )
        profiler = Profiler(space, settings)
        out = args.out or default_table_path(profiler.space, settings)
        env = profiler.environment
        runtime = "" if settings.runtime == "torch" else f"{settings.runtime} {profiler.runtime_version}, "
        print(
            f"profiling {space.name} ({space.architecture}) on {env['device']} "
            f"[{runtime}{settings.dtype}, batch {settings.batch}, "
            f"threads {settings.threads or 'default'}, {', '.join(_res(r) for r in profiler.resolutions)}]"
        )
        bar = None

        def on_start(done: int, total: int) -> None:
            nonlocal bar
            if done:
                print(f"resuming: {done} of {total} measurements kept from the interrupted run")
            if not args.no_progress:
                from ..progress import progress_bar  # noqa: PLC0415

                bar = progress_bar(total, initial=done, desc="profile", unit="entry")

        def on_entry(entry: Entry, stat: Stat, done: int, total: int) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{entry.key} {stat.ms:.3f} ms", refresh=False)
                bar.update(1)

        try:
            table = profiler.run(out, resume=not args.fresh, on_entry=on_entry, on_start=on_start)
        finally:
            if bar is not None:
                bar.close()
        waited, busy = table.meta.get("waited_s", 0), table.meta.get("busy_measurements", 0)
        waiting = f", {waited:.0f} s waiting for a quiet machine" if waited else ""
        print(f"wrote {out}  ({table.meta['duration_s']:.0f} s{waiting})")
        if busy:
            print(
                f"  note: {busy} measurements started while other processes kept the machine busy; "
                "rerun when it is quiet"
            )
        for res in table.resolutions:
            rt = table.resolution_table(res)
            corr = rt.correction
            line = f"  {_res(res)}: dense {table.dense_latency(res):.3f} ms, fixed parts {rt.fixed_ms:.3f} ms"
            if corr:
                line += f", correction {corr['offset_ms']:+.3f} ms + {corr['scale']:.4f} x parts"
            print(line)
        print(f"  achievable over the space: {table.min_latency():.3f} .. {table.max_latency():.3f} ms")
        return 0


class LatencyCommand(Command):
    name = "latency"
    help = "validate, inspect or query a latency table"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="latency_command", metavar="ACTION")
        sub.required = True
        v = sub.add_parser("validate", help="time random configs end to end and compare with the table's predictions")
        v.add_argument("--table", required=True, help="table JSON written by `sparsesearch profile`")
        v.add_argument("--n", type=int, default=50, help="random configs (plus dense and uniform ones; default 50)")
        v.add_argument("--seed", type=int, default=0)
        v.add_argument("--space", help="check that the table was measured for this search space")
        v.add_argument("--warmup", type=int, default=None, help="default: the table's")
        v.add_argument("--repeats", type=int, default=None, help="default: the table's")
        v.add_argument("--rounds", type=int, default=None, help="default: the table's")
        v.add_argument(
            "--allow-foreign-table", action="store_true", help="measure even if the table is for another setup"
        )
        v.add_argument("--wait-quiet", action="store_true", help="as for `sparsesearch profile`")
        v.add_argument("--max-load", type=float, default=None, help="as for `sparsesearch profile`")
        v.add_argument("--max-wait", type=float, default=600.0, help="total wait for a quiet machine, seconds")
        v.add_argument(
            "--report",
            type=Path,
            help="report JSON (default: <table>.validation.json, or .validation2.json, ... when taken: an earlier "
            "report is kept); the PNG goes beside it",
        )
        v.add_argument("--no-progress", action="store_true")
        _runtime_flag(v, "time the whole models in")
        s = sub.add_parser("show", help="print a table's metadata and entries")
        s.add_argument("--table", required=True)
        p = sub.add_parser("predict", help="predict the latency of configs (JSON/YAML files) from a table")
        p.add_argument("--table", required=True)
        p.add_argument("configs", nargs="+", help="config files")
        p.add_argument("--space", help="check that the table was measured for this search space")
        p.add_argument(
            "--allow-foreign-table", action="store_true", help="predict even if the table is for another setup"
        )
        p.add_argument(
            "--latency",
            default=None,
            metavar="BUDGET",
            help="also say whether each config meets this budget (30ms, 0.8x of dense); "
            "an absolute one runs the speed check",
        )
        add_table_check_flags(p)
        _runtime_flag(p, "predict for")
        c = sub.add_parser(
            "check", help="time the table's calibration configs here: measured/predicted factor (a few seconds)"
        )
        c.add_argument("--table", required=True)
        c.add_argument("--tolerance", type=float, default=0.10, help="accepted |factor - 1| (default 0.10)")
        c.add_argument("--seconds", type=float, default=4.0, help="about how long to time (default 4)")
        c.add_argument("--rounds", type=int, default=None, help="interleaved passes (default: fit --seconds)")
        c.add_argument("--json", type=Path, default=None, help="also write the check's figures to this JSON file")
        _runtime_flag(c, "time the configs in")

    def run(self, args: argparse.Namespace) -> int:
        return {"validate": self.validate, "show": self.show, "predict": self.predict, "check": self.check}[
            args.latency_command
        ](args)

    def check(self, args: argparse.Namespace) -> int:
        """Exit 0 when the factor is within the tolerance, 1 when it is not (2: bad input)."""
        import json  # noqa: PLC0415

        from ..fileio import atomic_write_text  # noqa: PLC0415
        from ..latency import check_table, reprofile_command  # noqa: PLC0415

        if not 0 < args.tolerance < 1 or args.seconds <= 0:
            raise CommandError(f"need 0 < --tolerance < 1 and --seconds > 0, got {args.tolerance} and {args.seconds}")
        table = _load_table(args.table)
        _allocator_as_profiled(table)
        result = check_table(
            table, budget_s=args.seconds, rounds=args.rounds, tolerance=args.tolerance, runtime=args.runtime
        )
        print(f"{args.table}: {result.line()}")
        if result.vs_profile is not None:
            print(f"  the calibration configs take {result.vs_profile:.3f}x the time the profile measured for them")
        if args.json is not None:
            atomic_write_text(args.json, json.dumps(result.to_dict(), indent=1) + "\n")
            print(f"  wrote {args.json}")
        if not result.ok:
            print(
                f"  absolute budgets need one of: `{reprofile_command(table)}`, --rescale-table, "
                "or a relative budget (0.8x)"
            )
            return 1
        return 0

    def validate(self, args: argparse.Namespace) -> int:
        from ..latency import report_paths, validate, write_report  # noqa: PLC0415

        if args.n < 0:
            raise CommandError(f"--n must be >= 0, got {args.n}")
        table = _load_table(args.table, args.space)
        if not args.allow_foreign_table:
            table.check_compatible(runtime=args.runtime)
        _allocator_as_profiled(table)
        json_path, png_path = report_paths(args.table, keep_existing=True)
        if args.report:
            json_path, png_path = args.report, args.report.with_suffix(".png")
        bar = None
        if not args.no_progress:
            from ..progress import progress_bar  # noqa: PLC0415

            bar = progress_bar(desc="validate", unit="config")

        def on_config(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            report = validate(
                table,
                n=args.n,
                seed=args.seed,
                warmup=args.warmup,
                repeats=args.repeats,
                rounds=args.rounds,
                allow_foreign=args.allow_foreign_table,
                quiet=args.wait_quiet,
                max_load=args.max_load,
                max_wait_s=args.max_wait,
                runtime=args.runtime,
                on_config=on_config,
            )
        finally:
            if bar is not None:
                bar.close()
        write_report(report, json_path, png_path)
        s = report.summary()
        m = table.meta
        timed_in = report.settings["runtime"]
        runtime = "" if timed_in == "torch" else f"{timed_in} {report.settings['runtime_version']}, "
        print(
            f"{table.space.name} on {m['device']} [{runtime}{m['dtype']}, batch {m['batch']}, "
            f"threads {m['threads']}, {m.get('clock', 'wall')} clock]"
        )
        print(
            f"  configs        {s['n']} (dense, uniform, {args.n} random), "
            f"measured {s['measured_range_ms'][0]:.2f} .. {s['measured_range_ms'][1]:.2f} ms"
        )
        print(f"  MAPE           {s['mape_pct']:.2f}%")
        print(f"  within +-10%   {s['within_10_pct']:.1f}%")
        print(f"  Kendall tau    {s['kendall_tau']:.3f}")
        print(f"  worst error    {s['worst_error_pct']:+.2f}% ({s['worst_label']})")
        if s["speed_vs_profile"] is not None:
            print(
                f"  machine speed  {s['speed_vs_profile']:.3f}x that of the profile run "
                "(its calibration configs timed again)"
            )
            print(
                f"  without it     MAPE {s['mape_drift_corrected_pct']:.2f}%, "
                f"within +-10% {s['within_10_drift_corrected_pct']:.1f}%, Kendall tau {s['kendall_tau']:.3f}, "
                f"worst {s['worst_drift_corrected_pct']:+.2f}% ({s['worst_drift_corrected_label']})"
            )
        if report.settings.get("busy_measurements"):
            print(
                f"  note: {report.settings['busy_measurements']} configs were timed while other processes "
                "kept the machine busy"
            )
        print(f"wrote {json_path} and {png_path}")
        return 0

    def show(self, args: argparse.Namespace) -> int:
        from tabulate import tabulate  # noqa: PLC0415

        table = _load_table(args.table)
        m = table.meta
        print(table)
        for key in (
            "device",
            "driver",
            "cuda",
            "torch",
            "triton",
            "runtime",
            "threads",
            "dtype",
            "batch",
            "warmup",
            "repeats",
            "rounds",
            "date",
        ):
            value = f"{table.runtime} {m.get('runtime_version', '')}".strip() if key == "runtime" else m.get(key)
            print(f"  {key:<9} {value}")
        print(f"  space     {m['space']['name']} ({m['space']['architecture']}, {m['space']['hash']})")
        fp = m.get("fingerprint")
        if isinstance(fp, dict):
            gpu = fp.get("gpu") or {}
            caches = " ".join(f"{k} {v}" for k, v in (fp.get("caches") or {}).items())
            print(
                f"  machine   {m.get('machine')}: {fp.get('cpu')} (family {fp.get('family')} model {fp.get('model')} "
                f"stepping {fp.get('stepping')}), {fp.get('physical_cores')} cores / {fp.get('threads')} threads, "
                f"{caches}, {fp.get('torch_capability')} [{' '.join(fp.get('vector') or [])}], "
                f"{fp.get('memory_gib')} GiB"
                + (
                    f"; {gpu.get('gpu')} ({gpu.get('sm_count')} SMs, {gpu.get('gpu_memory_gib')} GiB, "
                    f"driver {gpu.get('driver')})"
                    if gpu
                    else ""
                )
            )
        else:
            print("  machine   not recorded (table from an older sparsesearch)")
        for res in table.resolutions:
            rt = table.resolution_table(res)
            print(f"\n{_res(res)}: fixed parts " + ", ".join(f"{k} {v.ms:.3f}" for k, v in rt.fixed.items()) + " ms")
            if rt.correction:
                print(f"  correction: {rt.correction['offset_ms']:+.3f} ms + {rt.correction['scale']:.4f} x parts")
            rows = [
                [
                    kt.stage,
                    kt.window,
                    kt.variant,
                    f"{kt.H}x{kt.W}",
                    kt.num_windows,
                    " ".join(f"{k}:{s.ms:.3f}" for k, s in zip(kt.ks, kt.stats)),
                ]
                for _, kt in sorted(rt.kinds.items())
            ]
            print(tabulate(rows, headers=["stage", "window", "variant", "map", "windows", "kept:ms"]))
        return 0

    def predict(self, args: argparse.Namespace) -> int:
        from ..config import SparsityConfig  # noqa: PLC0415
        from ..search.budget import parse_budget  # noqa: PLC0415

        table = _load_table(args.table, args.space)
        if not args.allow_foreign_table:
            table.check_compatible(runtime=args.runtime)
        budget = parse_budget(args.latency) if args.latency is not None else None
        configs = []
        for path in args.configs:
            try:
                configs.append((path, SparsityConfig.load(path)))
            except SparseSearchError as e:
                raise LatencyTableError(str(e)) from None
        table, _ = table_speed(table, budget, args)  # after the input is known to be good: it times for seconds
        budget_ms = (
            None if budget is None else budget.value * table.dense_latency() if budget.relative else budget.value
        )
        for path, config in configs:
            ms = table.predict(config)
            verdict = (
                ""
                if budget_ms is None
                else f"  ({'meets' if ms <= budget_ms else 'over'} the budget {budget_ms:.3f} ms)"
            )
            print(f"{path}: {ms:.3f} ms{verdict}")
        return 0


COMMANDS = [ProfileCommand, LatencyCommand]
