"""The clean-up of exported graphs (`latency.onnx_graph.fold_reshapes`): chains of Reshapes become one, Reshapes to
their input's own shape go, nothing else changes, and ONNX Runtime gives the same outputs."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sparsesearch.latency.onnx_graph import fold_reshapes  # noqa: E402


class Chains(torch.nn.Module):
    """A Reshape chain (folded), one whose middle is used twice (kept), a reshape to the same shape (dropped)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x * 2).reshape(-1, 4, 16).reshape(-1, 8, 8).reshape(-1, 64)  # (B*8, 64) via two intermediates
        shared = x.reshape(-1, 16)  # used by two consumers: stays
        z = shared.reshape(-1, 32) + shared.sum()
        rows = torch.relu(y).reshape(-1, 8, 8).reshape(-1, 64)  # folded to one Reshape to its input's shape: dropped
        return rows + 1, z


def _export(tmp_path: Path) -> Path:
    path = tmp_path / "chains.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Chains(), (torch.randn(2, 8, 32),), str(path), opset_version=18, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


def _reshapes(path: Path) -> int:
    return sum(n.op_type == "Reshape" for n in onnx.load(str(path)).graph.node)


def test_fold_reshapes_removes_chains_and_no_op_reshapes_only(tmp_path):
    path = _export(tmp_path)
    x = torch.randn(3, 8, 32)
    before_count = _reshapes(path)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    removed = fold_reshapes(path)
    # the two inner Reshapes of the first chain, both of the second (its folded outer one leaves the shape as it is);
    # the shared Reshape and the one after it stay
    assert removed == 4 and _reshapes(path) == before_count - 4
    folded = onnx.load(str(path))
    onnx.checker.check_model(folded)
    used = {name for node in folded.graph.node for name in node.input}
    assert all(t.name in used for t in folded.graph.initializer)  # the removed Reshapes' shapes went with them
    assert all(n.output[0] in used for n in folded.graph.node if n.op_type == "Constant")
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    want = Chains()(x)
    for a, b, w in zip(before, after, want):
        assert a.shape == b.shape == tuple(w.shape)
        torch.testing.assert_close(torch.from_numpy(b), w, rtol=1e-6, atol=1e-6)
    assert fold_reshapes(path) == 0  # nothing left to fold


def test_fold_reshapes_leaves_a_target_with_a_zero(tmp_path):
    """A 0 in a target copies its input's size: folding past the inner Reshape would change it, so it is kept."""
    from onnx import helper  # noqa: PLC0415

    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    s1 = helper.make_tensor("s1", onnx.TensorProto.INT64, [2], [6, 4])
    s2 = helper.make_tensor("s2", onnx.TensorProto.INT64, [2], [0, -1])
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["a", "s2"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [s1, s2]))
    path = tmp_path / "zero.onnx"
    onnx.save(model, str(path))
    assert fold_reshapes(path) == 0
    buf = io.BytesIO()
    onnx.save(onnx.load(str(path)), buf)
    assert _reshapes(path) == 2
