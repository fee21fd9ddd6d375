"""Clean-up of an exported ONNX graph that ONNX Runtime's own optimiser leaves undone.

ONNX Runtime keeps a Reshape of a Reshape as two nodes. The exported blocks make such chains wherever one part
hands rows to the next in another shape (a block's output map to the next block's rows, windows to rows around a
linear), and at two CPU threads every node costs a few microseconds whatever it computes: `fold_reshapes` makes
each chain one Reshape.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["fold_reshapes"]


def fold_reshapes(path: str | Path) -> int:
    """Rewrite the ONNX model at `path` in place so that a Reshape whose input comes from another Reshape, used by
    nothing else, reads that Reshape's input instead (and the inner one is dropped), then drop every Reshape to the
    shape its input already has (by ONNX shape inference; the batch axis may be symbolic). Only where the target
    shape is a constant without zeros (a zero copies a dimension of its input, which the fold would change).
    Returns the number of Reshapes removed."""
    import onnx  # noqa: PLC0415

    model = onnx.load(str(path))
    removed = _fold(model.graph)
    removed += _drop_identities(model)
    if removed:
        _drop_unused_constants(model.graph)  # ONNX Runtime warns of each unused initializer it drops
        onnx.save(model, str(path))
    return removed


def _fold(graph: Any) -> int:
    """`fold_reshapes`' first step on a GraphProto; the count removed."""
    constants = _constant_shapes(graph)
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    uses = Counter(name for node in nodes for name in node.input)
    uses.update(out.name for out in graph.output)
    dropped: set[int] = set()
    for node in nodes:
        if node.op_type != "Reshape" or not _safe_target(node, constants):
            continue
        inner = producer.get(node.input[0])
        while inner is not None and inner not in dropped and nodes[inner].op_type == "Reshape":
            if uses[nodes[inner].output[0]] != 1:
                break
            dropped.add(inner)
            node.input[0] = nodes[inner].input[0]
            inner = producer.get(node.input[0])
    _remove(graph, dropped)
    return len(dropped)


def _remove(graph: Any, dropped: set[int]) -> None:
    """Delete the nodes at the indices `dropped`, in place (a node list rebuilt from removed messages would hold
    emptied ones)."""
    for i in sorted(dropped, reverse=True):
        del graph.node[i]


def _constant_shapes(graph: Any) -> dict[str, list[int]]:
    """Name -> value of every 1-d int64 constant of the graph (initializers and Constant nodes)."""
    from onnx import numpy_helper  # noqa: PLC0415

    out: dict[str, list[int]] = {}
    for init in graph.initializer:
        if len(init.dims) == 1:
            out[init.name] = numpy_helper.to_array(init).tolist()
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            if value.ndim == 1:
                out[node.output[0]] = value.tolist()
    return out


def _safe_target(node: Any, constants: dict[str, list[int]]) -> bool:
    """Whether a Reshape's target is a known constant with no zero entry (or allowzero set)."""
    shape = constants.get(node.input[1]) if len(node.input) > 1 else None
    if shape is None:
        return False
    allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
    return allowzero or 0 not in shape


def _drop_identities(model: Any) -> int:
    """Remove the Reshapes whose target is their input's inferred shape (e.g. rows (R, C) to (-1, C), left where a
    fold joined a reshape to windows and one back); the count removed."""
    import onnx  # noqa: PLC0415

    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: v.type.tensor_type.shape for v in [*inferred.value_info, *inferred.input]}
    constants = _constant_shapes(graph)
    outputs = {out.name for out in graph.output}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for i, node in enumerate(graph.node):
        if node.op_type != "Reshape" or node.output[0] in outputs or not _safe_target(node, constants):
            continue
        shape = shapes.get(node.input[0])
        if shape is not None and _same_shape(shape, constants[node.input[1]]):
            rename[node.output[0]] = node.input[0]
            dropped.add(i)
    if not dropped:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name
    _remove(graph, dropped)
    return len(dropped)


def _same_shape(shape: Any, target: list[int]) -> bool:
    """Whether a Reshape to `target` leaves a tensor of inferred `shape` as it is: same rank, every known size
    named, and at most one -1, standing for the one size not known."""
    dims = list(shape.dim)
    if len(dims) != len(target) or target.count(-1) > 1:
        return False
    for dim, want in zip(dims, target):
        known = dim.HasField("dim_value")
        if want == -1:
            if known:
                return False
        elif not known or dim.dim_value != want:
            return False
    return True


def _drop_unused_constants(graph: Any) -> None:
    """Remove the Constant nodes and initializers nothing reads any more (the removed Reshapes' target shapes)."""
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    used |= {inp.name for inp in graph.input}  # an initializer listed as an input stays (older IRs do that)
    _remove(graph, {i for i, n in enumerate(graph.node) if n.op_type == "Constant" and n.output[0] not in used})
    for i in sorted((i for i, t in enumerate(graph.initializer) if t.name not in used), reverse=True):
        del graph.initializer[i]
