"""Tiny search spaces the tests share (a swin_nano and a samvit_nano small enough for a CPU test)."""

from __future__ import annotations

from typing import Any

SWIN: dict[str, Any] = {
    "name": "tiny",
    "architecture": "swin_nano",
    "model_kwargs": {"embed_dim": 16, "num_heads": [1, 1, 2, 2], "window_size": 4, "seg_dim": 16},
    "resolutions": [[64, 64]],
    "sparsity_choices": [0.0, 0.25, 0.5, 0.75],
    "genes": [
        {"name": "s1", "blocks": ["0.0", "0.1"]},
        {"name": "s2", "blocks": ["1.0", "1.1"]},
        {"name": "s3", "blocks": ["2.0", "2.1"]},
        {"name": "s4", "blocks": ["3.0", "3.1"], "choices": [0.0]},
    ],
    "window_sizes": [[4], [4], [4], [4]],
}

SAM: dict[str, Any] = {
    "name": "tiny_sam",
    "architecture": "samvit_nano",
    "model_kwargs": {"embed_dim": 32, "num_heads": 2, "neck_chans": 16},
    "resolutions": [[128, 128]],
    "sparsity_choices": [0.0, 0.5, 0.75],
    "genes": [
        {"name": "w1", "blocks": ["0.0", "0.1"]},
        {"name": "g1", "blocks": ["0.2"]},
        {"name": "w2", "blocks": ["1.0", "1.1"]},
        {"name": "g2", "blocks": ["1.2"]},
    ],
    "window_sizes": [[4], [4]],
}
