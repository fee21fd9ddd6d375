"""Loading timm- and Microsoft-format checkpoints written by the tests."""

from __future__ import annotations

import re

import pytest
import sparsesearch as ss
import torch
from safetensors.torch import save_file
from sparsesearch.errors import CheckpointError

from .reference_swin import native_rel_index, shift_attn_mask

ARCH = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4), window_size=4, num_classes=7)


def _source(seed: int = 0) -> ss.SwinTransformer:
    torch.manual_seed(seed)
    m = ss.create_model("swin_nano", **ARCH).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _to_microsoft(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rewrite a timm-layout state dict the way Microsoft's Swin repository stores it."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d+)\.downsample\.(.*)", k)
        if m:
            k = f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc.") :]
        out[k] = v
    for i, d in enumerate(ARCH["depths"]):  # Microsoft also saves derived buffers
        for j in range(d):
            out[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = native_rel_index(4, 4)
            if j % 2 and (16 >> i) > 4:
                mask = shift_attn_mask(16 >> i, 16 >> i, 4, 4, 2, 2)
                if mask is not None:
                    out[f"layers.{i}.blocks.{j}.attn_mask"] = mask
    return out


def test_timm_format_pth_and_safetensors_round_trip(tmp_path):
    src = _source()
    x = torch.randn(1, 3, 64, 64)
    torch.save(src.state_dict(), tmp_path / "m.pth")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "wrapped.pth")
    with torch.no_grad():
        expected = src(x)
        for name in ("m.pth", "m.safetensors", "wrapped.pth"):
            dst = ss.create_model("swin_nano", checkpoint=str(tmp_path / name), **ARCH).eval()
            assert torch.equal(dst(x), expected), name


def test_state_dict_keys_are_timms():
    keys = set(_source().state_dict())
    assert "layers.0.blocks.1.attn.relative_position_bias_table" in keys
    assert "layers.1.downsample.reduction.weight" in keys and "layers.1.downsample.norm.bias" in keys
    assert not any(k.startswith("layers.0.downsample") for k in keys)
    assert {"head.fc.weight", "head.fc.bias", "norm.weight", "patch_embed.proj.weight"} <= keys
    assert not any("relative_position_index" in k or "attn_mask" in k for k in keys)


def test_microsoft_checkpoint_is_converted(tmp_path):
    src = _source(1)
    torch.save({"model": _to_microsoft(src.state_dict())}, tmp_path / "ms.pth")
    dst = ss.create_model("swin_nano", **ARCH).eval()
    report = ss.load_checkpoint(dst, tmp_path / "ms.pth")
    assert report.converted_from == "microsoft"
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_position_tables_are_resized_for_larger_windows(tmp_path):
    src = _source(2)
    sd = src.state_dict()
    for k in sd:
        if k.endswith("relative_position_bias_table"):
            sd[k] = torch.full_like(sd[k], 0.25)  # bicubic resizing keeps a constant table constant
    torch.save(sd, tmp_path / "w4.pth")
    dst = ss.create_model("swin_nano", **{**ARCH, "max_window_size": 6})
    report = ss.load_checkpoint(dst, tmp_path / "w4.pth")
    assert len(report.resized) == sum(ARCH["depths"])
    table = dst.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (11 * 11, 1)
    torch.testing.assert_close(table, torch.full_like(table, 0.25))


def test_segmentation_model_takes_the_backbone(tmp_path):
    src = _source(3)
    torch.save(src.state_dict(), tmp_path / "cls.pth")
    seg = ss.create_model("swin_nano", **{**ARCH, "head": "seg", "num_classes": 3})
    report = ss.load_checkpoint(seg, tmp_path / "cls.pth")
    assert "head.fc.weight" in report.dropped_head
    assert any(k.startswith("seg_head.") for k in report.initialised_head)
    assert torch.equal(seg.layers[2].blocks[1].mlp.fc1.weight, src.layers[2].blocks[1].mlp.fc1.weight)


def test_other_architecture_is_refused(tmp_path):
    torch.save(ss.create_model("swin_nano").state_dict(), tmp_path / "nano.pth")
    with pytest.raises(CheckpointError, match=r"does not fit .*shape mismatches"):
        ss.create_model("swin_nano", **ARCH, checkpoint=str(tmp_path / "nano.pth"))


def test_truncated_and_missing_checkpoints(tmp_path):
    torch.save(_source().state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    m = ss.create_model("swin_nano", **ARCH)
    with pytest.raises(CheckpointError, match="truncated"):
        ss.load_checkpoint(m, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        ss.load_checkpoint(m, tmp_path / "nope.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        ss.load_checkpoint(m, tmp_path / "empty.pth")
