"""The registered models: Swin and SAM ViT variants (timm's names and hyper-parameters) and small CPU members."""

from __future__ import annotations

from typing import Any

from .registry import register_model
from .samvit import SamViT
from .swin import SwinTransformer

__all__: list[str] = []

_ARCHS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224
    ),
    "swin_small_patch4_window7_224": dict(
        embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224
    ),
    "swin_base_patch4_window7_224": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, img_size=224
    ),
    "swin_base_patch4_window12_384": dict(
        embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, img_size=384
    ),
    # CPU-sized model for demos and tests: same structure, a fraction of the width.
    "swin_nano": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, img_size=224),
}


_SAM_ARCHS: dict[str, dict[str, Any]] = {
    "samvit_base_patch16": dict(
        embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), window_size=14, img_size=1024
    ),
    "samvit_large_patch16": dict(
        embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), window_size=14, img_size=1024
    ),
    "samvit_huge_patch16": dict(
        embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), window_size=14, img_size=1024
    ),
    # CPU-sized member: 6 blocks in two groups of (2 windowed + 1 global); 12x12 tokens at 192x192, 3x3 windows of 4.
    "samvit_nano": dict(
        embed_dim=96, depth=6, num_heads=3, global_attn_indexes=(2, 5), window_size=4, img_size=192, neck_chans=64
    ),
}


def _make(name: str, arch: dict[str, Any], cls: type) -> None:
    @register_model(name, family=cls.__name__, **arch)
    def build(**kwargs: Any) -> Any:
        return cls(**{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{name}: {cls.__name__}({', '.join(f'{k}={v}' for k, v in arch.items())})."


for _name, _arch in _ARCHS.items():
    _make(_name, _arch, SwinTransformer)
for _name, _arch in _SAM_ARCHS.items():
    _make(_name, _arch, SamViT)
