"""Gather the figures of a GPU check (run.py) and write its Markdown summary, each figure beside its goal.

Goals: each kernel at least 2x faster than the torch path and at least 80 % of the measured copy
bandwidth on the large shapes (here: ops that must move at least 16 MiB); the backbone at uniform 0.5 at most
0.5x dense latency, at 0.7 at most 0.38x; the GPU latency table's MAPE at most 3 %.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for _machine

GOAL_SPEEDUP = 2.0
GOAL_COPY_FRACTION = 0.8
LARGE_BYTES = 16 * 2**20
GOAL_X_DENSE = {0.5: 0.5, 0.7: 0.38}
GOAL_MAPE_PCT = 3.0
OP_TITLES = {"sg": "score + gather", "scatter": "scatter (out of place)", "inplace": "scatter (in place)"}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _machine() -> dict[str, Any]:
    try:
        import numpy  # noqa: PLC0415

        from _machine import machine_info  # noqa: PLC0415

        return {**machine_info(), "numpy": numpy.__version__}
    except Exception as e:  # noqa: BLE001  (the summary must still be written)
        return {"error": f"{type(e).__name__}: {e}"}


def pytest_counts(text: str) -> dict[str, int]:
    """{'passed': n, 'failed': n, ...} from pytest's closing line."""
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error|skipped)", ln)]
    if not lines:
        return {}
    return {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", lines[-1])}


def kernel_goals(kern: dict[str, Any]) -> dict[str, Any]:
    """Per op: speedups and copy-bandwidth fractions over all shapes and over the large ones, with the verdict."""
    out: dict[str, Any] = {}
    for op in OP_TITLES:
        recs = [r for r in kern.get("ops", []) if r["op"] == op and "speedup" in r]
        if not recs:
            continue
        large = [r for r in recs if r["bytes"] >= LARGE_BYTES]
        item: dict[str, Any] = {"shapes": len(recs), "large_shapes": len(large),
                                "speedup_median_all": statistics.median(r["speedup"] for r in recs),
                                "speedup_min_all": min(r["speedup"] for r in recs)}  # fmt: skip
        if large:
            item.update(speedup_min_large=min(r["speedup"] for r in large),
                        copy_fraction_min_large=min(r["copy_fraction"] for r in large),
                        copy_fraction_median_large=statistics.median(r["copy_fraction"] for r in large))  # fmt: skip
            item["speedup_met"] = item["speedup_min_large"] >= GOAL_SPEEDUP
            item["bandwidth_met"] = item["copy_fraction_min_large"] >= GOAL_COPY_FRACTION
        out[op] = item
    return out


def adapt_figures(run_dir: Path) -> dict[str, Any] | None:
    """Steps, last loss, process group and throughput from an adapt run's metrics.jsonl."""
    try:
        recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return None
    steps = [r for r in recs if "event" not in r and "loss" in r]
    end = next((r for r in recs if r.get("event") == "end"), {})
    args = _load_yaml(run_dir / "args.yaml") or {}
    return {
        "steps": len(steps),
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "images_per_s_median": statistics.median(r["images_per_s"] for r in steps) if steps else None,
        "process_group": end.get("process_group"),
        "world_size": end.get("world_size"),
        "ranks_agree": end.get("ranks_agree"),
        "amp": args.get("amp"),
        "device": args.get("device"),
        "finished": bool(end),
    }


def _load_yaml(path: Path) -> Any:
    try:
        import yaml  # noqa: PLC0415

        return yaml.safe_load(path.read_text())
    except Exception:  # noqa: BLE001
        return None


def collect(steps: list[Any], table: Path, work: Path) -> dict[str, Any]:
    """Every figure of the run as plain data (what figures.json holds)."""
    by_name = {s.name: s for s in steps}
    fig: dict[str, Any] = {"machine": _machine(), "steps": {}}
    for s in steps:
        fig["steps"][s.name] = {
            "status": s.status,
            "seconds": round(s.seconds, 1),
            "cpu_seconds": round(s.cpu_seconds, 1),
        }
    if "tests" in by_name:
        fig["tests"] = pytest_counts(by_name["tests"].tail)
    kern = _load(work / "kernels.json")
    if kern:
        fig["kernels"] = {"copy_gbs": kern["copy_gbs"], "dtype": kern["dtype"], "resolution": kern["resolution"],
                          "graphs": kern["graphs"], "goals": kernel_goals(kern), "ops": kern["ops"],
                          "graph_failures": kern.get("graph_failures", [])}  # fmt: skip
    model = _load(work / "model.json")
    if model:
        fig["model"] = model
    comp = _load(work / "compile.json")
    if comp:
        fig["compile"] = comp.get("compile")
    tab = _load(table)
    if tab:
        meta = tab.get("meta", {})
        fig["table"] = {
            "path": table.name,
            "meta": {k: meta.get(k) for k in ("device", "dtype", "batch", "duration_s")},
        }
    val = _load(table.with_suffix(".validation.json"))
    if val:
        fig["validation"] = val.get("summary", val)
    ad = adapt_figures(work / "adapt")
    if ad:
        fig["adapt"] = ad
    return fig


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("**met**" if met else "**missed**")


def _ms(v: float | None) -> str:
    return "n/a" if v is None else (f"{v * 1e3:.1f} us" if v < 1 else f"{v:.3f} ms")


def render(steps: list[Any], fig: dict[str, Any], dry: bool, seconds: float) -> str:
    """The Markdown summary (gpu_results.md)."""
    m = fig.get("machine", {})
    lines = [f"# GPU check{' (CPU DRY RUN: figures mean nothing)' if dry else ''}", ""]
    dev = m.get("gpu") or m.get("cpu", "?")
    if m.get("gpu"):
        dev += f" ({m.get('gpu_memory_gib')} GiB, {m.get('sms')} SMs, compute capability {m.get('capability')})"
    lines.append(f"- device: {dev}")
    lines.append(f"- driver {m.get('driver')}, CUDA {m.get('cuda')}; torch {m.get('torch')}, triton {m.get('triton')}, "
                 f"numpy {m.get('numpy')}, Python {m.get('python')}")  # fmt: skip
    lines.append(f"- total {seconds:.0f} s")
    lines += ["", "| step | status | seconds | |", "|---|---|---|---|"]
    for s in steps:
        note = ""
        if s.name == "tests" and fig.get("tests"):
            note = ", ".join(f"{n} {k}" for k, n in fig["tests"].items())
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {note} |")
    lines += _render_kernels(fig.get("kernels"))
    lines += _render_model(fig.get("model"), fig.get("compile"))
    lines += _render_table(fig)
    lines += _render_adapt(fig.get("adapt"))
    failed = [s for s in steps if s.status not in ("passed", "skipped (--only)")]
    if failed:
        lines += ["", "## Steps that did not pass (last lines; the whole output is in gpu_run.log)"]
        for s in failed:
            lines += ["", f"### {s.name}: {s.status}", "```", s.tail or "(no output)", "```"]
    return "\n".join(lines) + "\n"


def _render_kernels(k: dict[str, Any] | None) -> list[str]:
    if not k:
        return ["", "## Kernels: no figures"]
    lines = ["", f"## Kernels ({k['dtype']}, {k['resolution']}x{k['resolution']}; device copy bandwidth "
             f"{k['copy_gbs']:.0f} GB/s, this run; times: {'CUDA-graph replay' if k['graphs'] else 'eager'})", "",
             f"Goal on the large shapes (>= {LARGE_BYTES >> 20} MiB moved): >= {GOAL_SPEEDUP:.0f}x the torch path and "
             f">= {GOAL_COPY_FRACTION:.0%} of the copy bandwidth.", "",
             "| op | shapes (large) | x torch median, all | x torch min, large | goal "
             "| % copy min / median, large | goal |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for op, g in k["goals"].items():
        large = "speedup_min_large" in g
        lines.append(
            f"| {OP_TITLES[op]} | {g['shapes']} ({g['large_shapes']}) | {g['speedup_median_all']:.2f} | "
            + (f"{g['speedup_min_large']:.2f} | {_verdict(g['speedup_met'])} | {g['copy_fraction_min_large']:.0%} / "
               f"{g['copy_fraction_median_large']:.0%} | {_verdict(g['bandwidth_met'])} |"
               if large else "n/a | n/a | n/a | n/a |")
        )  # fmt: skip
    lines += ["", "| op | stage | map | shift | B | k/nW | torch | Triton | x | Triton eager | GB/s | % copy |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in k["ops"]:
        if "speedup" not in r:
            continue
        lines.append(f"| {r['op']} | {r['stage']} | {r['side']}x{r['side']}x{r['C']} | "
                     f"{'s' if r['shifted'] else '-'} | "
                     f"{r['batch']} | {r['k']}/{r['num_windows']} | {_ms(r['torch_ms'])} | {_ms(r['triton_ms'])} | "
                     f"{r['speedup']:.2f} | {_ms(r['triton_eager_ms'])} | {r['gbs']:.0f} | "
                     f"{r['copy_fraction']:.0%} |")  # fmt: skip
    if k.get("graph_failures"):
        lines.append(f"\nCUDA-graph capture failed {len(k['graph_failures'])} time(s); first: {k['graph_failures'][0]}")
    return lines


def _render_model(model: dict[str, Any] | None, comp: dict[str, Any] | None) -> list[str]:
    lines = [""]
    if not model:
        lines.append("## Backbone: no figures")
    else:
        res = "x".join(map(str, model["resolution"]))
        lines += [f"## Backbone: {model['model']} {res}, {model['dtype']}, batch {model['batch']} "
                  f"({model['clock']})", "",
                  "| sparsity | path | ms | x dense | goal | |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in model["rows"]:
            goal = GOAL_X_DENSE.get(r["sparsity"]) if r["path"] == "triton" else None
            judged = ("", "") if goal is None else (f"<= {goal}", _verdict(r["x_dense"] <= goal))
            lines.append(
                f"| {r['sparsity']} | {r['path']} | {r['ms']:.3f} | {r['x_dense']:.3f} | {judged[0]} | {judged[1]} |"
            )
    if comp:
        lines += ["", f"torch.compile ({comp['backend']}) at uniform {comp['sparsity']}: "
                      f"compile {comp['compile_s']:.1f} s; "
                  f"{comp['compiled_ms']:.3f} ms compiled vs {comp['eager_ms']:.3f} ms eager ({comp['speedup']:.2f}x); "
                  f"outputs vs eager: mean |diff| {comp['mean_abs_diff']:.1e}, "
                  f"max {comp['max_abs_diff']:.1e}."]  # fmt: skip
    return lines


def _render_table(fig: dict[str, Any]) -> list[str]:
    if "table" not in fig:
        return ["", "## Latency table: none written"]
    t, v = fig["table"], fig.get("validation")
    lines = ["", f"## Latency table {t['path']} ({t['meta'].get('dtype')}, batch {t['meta'].get('batch')}, "
             f"profiled in {t['meta'].get('duration_s') or 0:.0f} s)"]  # fmt: skip
    if v:
        met = v["mape_pct"] <= GOAL_MAPE_PCT
        lines += ["", f"validation on {v['n']} configs: MAPE {v['mape_pct']:.2f} % (goal <= {GOAL_MAPE_PCT:.0f} %: "
                  f"{_verdict(met)}), within 10 %: {v['within_10_pct']:.0f} %, Kendall tau {v['kendall_tau']:.3f}, "
                  f"worst {v['worst_error_pct']:+.1f} % ({v['worst_label']})"]  # fmt: skip
    return lines


def _render_adapt(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return ["", "## adapt: no figures"]
    ok = a["finished"] and a["steps"] > 0 and a["last_loss"] is not None and a["last_loss"] == a["last_loss"]
    loss = " -> ".join("n/a" if v is None else f"{v:.4f}" for v in (a["first_loss"], a["last_loss"]))
    return ["", f"## adapt smoke: {a['steps']} steps on {a['device']}, amp {a['amp']}, process group "
            f"{a['process_group']} (world {a['world_size']}), loss {loss}, "
            f"{a['images_per_s_median'] or 0:.1f} images/s; "
            f"{'finished' if ok else 'DID NOT FINISH CLEANLY'}"]  # fmt: skip
