"""The "floor" of benchmarks/bench_model.py (dense blocks on the kept windows' work) and bench_blocks.py.

The speed figures of benchmarks/RESULTS.md rest on the floor row; its stand-in block is checked here: it runs the dense
block on exactly k whole windows, leaves the map unchanged, and is swapped back out; and both benchmarks run end to
end on a tiny model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import sparsesearch as ss
import torch
from sparsesearch.models.swin import SwinBlock
from sparsesearch.ops import keep_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_model  # noqa: E402

TINY = {"embed_dim": 16, "num_heads": [1, 2, 2, 4], "window_size": [4, 4, 4, 2]}


@pytest.mark.parametrize("shifted,hw,p", [(False, (8, 8), 0.5), (True, (8, 12), 0.3), (True, (9, 11), 0.7)])
def test_floor_block_runs_the_dense_block_on_k_whole_windows(shifted, hw, p, monkeypatch):
    blk = SwinBlock(8, 2, 4, 4, shifted).eval()
    blk.sparsity = p
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    dense = blk._forward_dense

    def record(x, g):  # type: ignore[no-untyped-def]
        seen.append((tuple(x.shape), (g.H, g.W, g.wh, g.ww, g.sh, g.sw)))
        return dense(x, g)

    monkeypatch.setattr(blk, "_forward_dense", record)
    x = torch.randn(2, *hw, 8)
    with torch.no_grad():
        out = bench_model._floor_forward(blk)(x)
    assert out is x  # the map passes on unchanged
    g = blk.geometry(*hw)
    k = keep_count(p, g.num_windows)
    # one strip of k windows at the block's window size, shifted as the block's map is (roll and mask)
    assert seen == [((2, 4, 4 * k, 8), (4, 4 * k, 4, 4, g.sh, g.sw))]
    assert shifted == (g.sh > 0 and g.sw > 0)


def test_bench_model_floor_rows(tmp_path, capsys):
    out = tmp_path / "m.json"
    bench_model.main(["--model", "swin_nano", "--model-kwargs", json.dumps(TINY), "--resolution", "64",
                      "--device", "cpu", "--sparsity", "0.5", "--rounds", "1", "--min-time", "0.01", "--no-flops",
                      "--floor", "--no-malloc", "--json", str(out)])  # fmt: skip
    rows = {(r["sparsity"], r["path"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(0.0, "dense"), (0.5, "torch"), (0.5, "floor")}
    assert all(r["ms"] > 0 and r["x_dense"] > 0 for r in rows.values())


def test_set_floor_swaps_every_swin_block_and_restores_it():
    model = ss.create_model("swin_nano", head=None, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        bench_model._set_floor(model, True)
        blocks = [m for m in model.modules() if isinstance(m, SwinBlock)]
        assert blocks and all("forward" in vars(b) for b in blocks)
        bench_model._set_floor(model, False)
        assert not any("forward" in vars(b) for b in blocks)
        assert torch.equal(model(x), want)


def test_bench_blocks_prints_every_part(capsys, monkeypatch):
    import bench_blocks  # noqa: PLC0415

    monkeypatch.setattr(ss.latency, "tune_malloc", lambda: None)  # process-wide: not inside the test session
    bench_blocks.main(["--model-kwargs", json.dumps(TINY), "--resolution", "64", "--passes", "2", "--threads", "1"])
    table = capsys.readouterr().out
    parts = ["embed", "merge 1", "merge 3", "stage 1 block 0", "stage 4 block 1", "total"]
    assert all(f"| {p} " in table for p in parts), table


def test_bench_model_floor_refuses_models_without_swin_blocks():
    with pytest.raises(SystemExit, match="no Swin blocks"):
        bench_model.main(["--model", "samvit_nano", "--resolution", "64", "--device", "cpu", "--floor", "--no-malloc",
                          "--sparsity", "0.5", "--no-flops", "--rounds", "1", "--min-time", "0.01"])  # fmt: skip
