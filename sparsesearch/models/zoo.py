"""The registered Swin variants (timm's names and hyper-parameters) and the small CPU demo model."""
from __future__ import annotations

from typing import Any

from .registry import register_model
from .swin import SwinTransformer

__all__: list[str] = []

_ARCHS: dict[str, dict[str, Any]] = {
    "swin_tiny_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224),
    "swin_small_patch4_window7_224": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7, img_size=224),
    "swin_base_patch4_window7_224": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7, img_size=224),
    "swin_base_patch4_window12_384": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12, img_size=384),
    # CPU-sized model for demos and tests: same structure, a fraction of the width.
    "swin_nano": dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, img_size=224),
}


def _make(name: str, arch: dict[str, Any]) -> None:
    @register_model(name, **arch)
    def build(**kwargs: Any) -> SwinTransformer:
        return SwinTransformer(**{**arch, **kwargs})

    build.__name__ = name
    build.__doc__ = f"{name}: SwinTransformer({', '.join(f'{k}={v}' for k, v in arch.items())})."


for _name, _arch in _ARCHS.items():
    _make(_name, _arch)
