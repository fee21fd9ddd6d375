"""Where a table's parts and whole models run: torch eager (the default) or ONNX Runtime.

For "onnxruntime" a part (a block at one kept-window count, a fixed part) or a whole model at one config is
exported to ONNX as `sparsesearch export --onnx` exports a model (`torch.onnx.export`, TorchScript exporter,
opset 18, the blocks' "export" kernel backend: static-shape ops, the kept count baked into the graph) with a fixed
input shape, and loaded into an `InferenceSession` on the CPU provider with every graph optimisation, the table's
thread count, one inter-op thread and thread spinning off; the timers then time `session.run` on a numpy input.
What produces that input (the part before it in the model) stays in torch and runs outside the timed call.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LatencyTableError
from ..models.family import family_of_model, prunable
from .onnx_graph import fold_reshapes

__all__ = [
    "RUNTIMES",
    "INSTALL_HINT",
    "EXPORT_FORM",
    "check_runtime",
    "table_runtime",
    "installed_version",
    "runtime_version",
    "export_backend",
    "onnx_bytes",
    "write_onnx",
    "ort_session",
    "OrtCall",
    "ort_call",
]

#: the runtimes a table can be measured in
RUNTIMES = ("torch", "onnxruntime")
INSTALL_HINT = "pip install 'sparsesearch[onnx]'"
#: the ONNX opset of the exported parts (as `sparsesearch export --onnx`)
OPSET = 18
#: the version of the exported graph's form (bumped when the export of a block changes what ONNX Runtime runs):
#: an onnxruntime table records it, and one of another form is refused (its figures time another graph)
EXPORT_FORM = 7


def check_runtime(runtime: str) -> str:
    """`runtime` if it is one of `RUNTIMES`, else LatencyTableError (one line)."""
    if runtime not in RUNTIMES:
        raise LatencyTableError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def table_runtime(meta: Mapping[str, Any]) -> str:
    """The runtime a table's `meta` says it was measured in ("torch" for tables that do not say)."""
    return str(meta.get("runtime") or "torch")


def installed_version(runtime: str) -> str | None:
    """The version of `runtime` in this process (None: not installed)."""
    if check_runtime(runtime) == "torch":
        return str(torch.__version__)
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return None
    return str(ort.__version__)


def runtime_version(runtime: str) -> str:
    """The version of `runtime`; LatencyTableError (one line, how to install it) when it is missing."""
    version = installed_version(runtime)
    if version is None:
        raise LatencyTableError(f"the {runtime} runtime needs onnx and onnxruntime: {INSTALL_HINT}")
    return version


@contextlib.contextmanager
def export_backend(model: nn.Module) -> Iterator[None]:
    """Every block of `model` on the "export" kernel backend (static-shape ops) inside; the previous backends
    restored after."""
    blocks = family_of_model(model).block_modules(model)
    previous = [b.kernel_backend for b in blocks]
    prunable(model).set_kernel_backend("export")
    try:
        yield
    finally:
        for b, backend in zip(blocks, previous):
            b.kernel_backend = backend


class _Call(nn.Module):
    """A callable of one tensor as a module, for the exporter; `model` is held as a child, so that the parameters
    `fn` uses are the exported graph's weights, not constants (only those it uses are exported)."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], model: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.fn(x)


def write_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    model: nn.Module,
    names: tuple[str, str | None] = ("x", None),
    dynamic_batch: bool = False,
) -> None:
    """`module` (`model`, or a part of it, with its config already set) exported to ONNX at `path`: the TorchScript
    exporter, opset `OPSET`, `model`'s blocks on the "export" backend, at the shape of `example` (with
    `dynamic_batch`, its first axis a "batch" axis of the input and the output). names: (input, output) names,
    None for the exporter's output name."""
    in_name, out_name = names
    kwargs: dict[str, Any] = {"output_names": [out_name]} if out_name else {}
    if dynamic_batch:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in (in_name, out_name) if n}
    with contextlib.ExitStack() as stack:
        for ctx in (torch.inference_mode(False), torch.no_grad(), export_backend(model), warnings.catch_warnings()):
            stack.enter_context(ctx)
        warnings.simplefilter("ignore")
        x = example.detach().clone()  # a normal tensor even if `example` was made in inference mode
        torch.onnx.export(module, (x,), str(path), opset_version=OPSET, dynamo=False, input_names=[in_name], **kwargs)
    fold_reshapes(path)


def onnx_bytes(fn: Callable[[torch.Tensor], Any], example: torch.Tensor, model: nn.Module) -> bytes:
    """`fn` (a part of `model`, or `model` itself, with its config already set) exported to ONNX at the fixed shape
    of `example` (`write_onnx`); the serialized model."""
    with tempfile.TemporaryDirectory(prefix="sparsesearch-ort-") as folder:
        path = Path(folder) / "part.onnx"
        write_onnx(fn if isinstance(fn, nn.Module) else _Call(fn, model), example, path, model)
        return path.read_bytes()


def ort_session(data: bytes, threads: int, spinning: bool = False) -> Any:
    """An ONNX Runtime session of a serialized model: CPU provider, all graph optimisations, `threads` intra-op
    threads, one inter-op thread, no thread spinning (a spinning pool would take the CPU between timed calls), and
    the process's one shared CPU arena (`_shared_arena`).

    `spinning`: ONNX Runtime's default threading instead, its threads spinning between operators, in one pool of
    `threads` shared by every session of the process (`_spinning_pool`; sessions with pools of their own would spin
    against each other): how a process serving one model runs it with default settings."""
    runtime_version("onnxruntime")
    import onnxruntime as ort  # noqa: PLC0415

    if spinning:
        _spinning_pool(ort, int(threads))
    _shared_arena(ort)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if spinning:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


_POOL: list[int] = []  # the thread count of this process's shared spinning pool, once made


def _spinning_pool(ort: Any, threads: int) -> None:
    """Give ONNX Runtime's environment one intra-op pool of `threads` (ORT's defaults: spinning), once per process,
    before any session exists; a later call for another count is an error (the pool cannot change)."""
    if _POOL:
        if _POOL[0] != threads:
            raise LatencyTableError(
                f"this process's shared ONNX Runtime pool has {_POOL[0]} threads, not {threads}: time other thread "
                "counts in a process of their own"
            )
        return
    if _ARENA:
        raise LatencyTableError(
            "ONNX Runtime's shared pool can only be made before the process's first session: ask for spinning "
            "sessions in a process of their own"
        )
    from onnxruntime.capi import _pybind_state  # noqa: PLC0415

    _pybind_state.set_global_thread_pool_sizes(threads, 1)
    _POOL.append(threads)


_ARENA: list[bool] = []  # whether this process registered the shared arena


def _shared_arena(ort: Any) -> None:
    """Register one CPU arena allocator with ONNX Runtime's environment, once per process, for every session here
    to share. A profile keeps a session per table entry for all its rounds; each session's own arena held about
    2.7 MB beside a 0.5 MB block (3.2 GB for the demo space's 736 entries). Timing is the same either way (the
    demo model's session: 7.82 ms own arena, 7.78 ms shared, interleaved)."""
    if _ARENA:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena settings
    _ARENA.append(True)


class OrtCall:
    """A part or a whole model in an ONNX Runtime session; `self(x)` runs it on `x` (a numpy array, or a CPU
    tensor converted first) and returns the session's outputs (a list of numpy arrays)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray | torch.Tensor) -> list[np.ndarray]:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return list(self.session.run(None, {self.input: x}))


def ort_call(
    fn: Callable[[torch.Tensor], Any], example: torch.Tensor, model: nn.Module, threads: int | None = None
) -> OrtCall:
    """`fn` (a part of `model` or `model`, its config set) exported at `example`'s shape and loaded into a session
    with `threads` intra-op threads (default: torch's current count)."""
    runtime_version("onnxruntime")
    if example.device.type != "cpu" or example.dtype != torch.float32:
        raise LatencyTableError("the onnxruntime runtime times fp32 on the CPU: use --device cpu --dtype fp32")
    return OrtCall(ort_session(onnx_bytes(fn, example, model), threads or torch.get_num_threads()))
