"""FLOPs of a (pruned) model with fvcore, with handles for the ops fvcore does not know.

Convention: fvcore's, one multiply-add = one FLOP (the convention of the Swin and SparseViT papers:
Swin-T at 224x224 is about 4.5 GFLOPs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import SparsityConfig
from .errors import SparseSearchError
from .models.family import family_of_model, prunable
from .models.layers import config_applied

__all__ = ["FlopReport", "count_flops", "FLOP_HANDLES", "register_flop_handle"]

Handle = Callable[[list[Any], list[Any]], int]
FLOP_HANDLES: dict[str, Handle] = {}


def register_flop_handle(op_name: str) -> Callable[[Handle], Handle]:
    """Decorator: count FLOPs of a traced op (e.g. "aten::scaled_dot_product_attention")."""

    def wrap(fn: Handle) -> Handle:
        FLOP_HANDLES[op_name] = fn
        return fn

    return wrap


def _shape(value: Any) -> list[int]:
    return list(value.type().sizes())


@register_flop_handle("aten::scaled_dot_product_attention")
def _sdpa(inputs: list[Any], outputs: list[Any]) -> int:
    q, k = _shape(inputs[0]), _shape(inputs[1])
    batch_heads_lq = 1
    for s in q[:-1]:
        batch_heads_lq *= s
    # q @ k^T and attn @ v: each (..., Lq, d) x (..., d, Lk)
    return 2 * batch_heads_lq * k[-2] * q[-1]


# memory-movement ops of the pruned path: no arithmetic worth counting
for _name in (
    "sparsesearch::score_windows",
    "sparsesearch::gather_windows",
    "sparsesearch::scatter_windows",
    "sparsesearch::scatter_windows_inplace",
    "sparsesearch::place_windows",
    "sparsesearch::zero_windows",
):
    FLOP_HANDLES[_name] = lambda inputs, outputs: 0


def _is_part(name: str, containers: tuple[str, ...]) -> bool:
    """Top-level modules other than the family's block containers, and each child of a container (Swin's
    `layers.i`, SamViT's `blocks.i`)."""
    head, _, rest = name.partition(".")
    return (not rest and head not in containers) or (head in containers and rest.count(".") == 0 and rest != "")


@dataclass
class FlopReport:
    """FLOPs of one forward: total and per part (the model's top-level modules, with each child of the family's
    block containers listed on its own: e.g. patch_embed, layers.0..3, norm, head)."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def count_flops(
    model: nn.Module, resolution: tuple[int, int] | int, config: SparsityConfig | None = None, batch: int = 1
) -> FlopReport:
    """Count FLOPs of `model` at `resolution` under `config` (None: the model's current config)."""
    from fvcore.nn import FlopCountAnalysis  # noqa: PLC0415  (slow import)

    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    param = next(model.parameters())
    x = torch.zeros(batch, 3, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    applied = config_applied(prunable(model), config) if config is not None else contextlib.nullcontext()
    log = logging.getLogger("fvcore.nn.jit_analysis")  # its tracer warnings, quieted for this call only
    log_level = log.level
    log.setLevel(logging.ERROR)
    try:
        with applied, torch.no_grad():
            fa = FlopCountAnalysis(model, x)
            fa.set_op_handle(**FLOP_HANDLES)
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            fa.tracer_warnings("none")
            total = int(fa.total())
            by_module = fa.by_module()
    finally:
        log.setLevel(log_level)
        model.train(was_training)
    containers = _containers(model)
    parts = {k: int(v) for k, v in by_module.items() if k and _is_part(k, containers)}
    return FlopReport(total, parts)


def _containers(model: nn.Module) -> tuple[str, ...]:
    """The family's block containers; none for a model of no registered family."""
    try:
        return family_of_model(model).part_containers
    except SparseSearchError:
        return ()
