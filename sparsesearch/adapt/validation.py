"""Validation during a training run: the densest and the sparsest config of the space scored on the validation
set (mIoU / top-1 on labels, or without labels the fidelity to the frozen teacher run dense)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..evaluate import EvalResult, Evaluator
from ..fidelity import FidelityEvaluator, dense_reference
from ..space import SearchSpace
from .options import AdaptOptions
from .prepare import Plan
from .sampling import RandomSparsity, input_resolution

__all__ = ["make_evaluator", "validate"]


def make_evaluator(
    model: nn.Module,
    space: SearchSpace,
    plan: Plan,
    opts: AdaptOptions,
    device: torch.device,
    teacher: nn.Module | None,
) -> Evaluator:
    """The run's evaluator on `plan.val_ds`: on labels, or (with a frozen `teacher`) fidelity to it."""
    batch = max(opts.batch, 8)
    assert plan.val_ds is not None
    if teacher is None:
        return Evaluator(model, plan.val_ds, opts.val_samples, batch=batch, device=device, amp=opts.amp, cache=False)
    return FidelityEvaluator(
        model,
        plan.val_ds,
        opts.val_samples,
        reference=dense_reference(space),
        reference_model=teacher,
        batch=batch,
        device=device,
        amp=opts.amp,
        cache=False,
    )


def validate(
    evaluator: Evaluator, sampler: RandomSparsity, space: SearchSpace, log: Callable[[str], None]
) -> dict[str, EvalResult]:
    """The densest and the sparsest config scored, by role; one log line."""
    out = {}
    for role, cfg in (("dense", sampler.densest), ("sparsest", sampler.sparsest)):
        out[role] = evaluator(cfg, input_resolution(space, cfg))
    log("val: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out
