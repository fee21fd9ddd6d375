"""The one training loop: deterministic batches, the optimiser step, and the forward/backward passes of a step.

Used by the supernet trainer (several configs per step, distillation, DDP, AMP) and by export's fine-tune of
one fixed config (one pass per step). The run's random numbers (weight init, drop-path) are drawn inside
:func:`isolated_rng`, so the caller's global RNG state is the same after training as before.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SparsityConfig
from ..data import LoaderPlacement, make_loader
from ..options import settings_from
from .checkpoint import capture_rng, restore_rng
from .sampling import RandomSparsity, StepConfig

__all__ = [
    "LoaderPlacement",
    "Optimisation",
    "StepSettings",
    "batches",
    "build_optimizer",
    "cosine_schedule",
    "isolated_rng",
    "seg_or_cls_loss",
    "train_step",
]


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run the body with the process's RNGs (torch CPU and CUDA, numpy, python) put back afterwards: a run may
    seed and draw (and resume restores its own recorded states), the caller's streams are left as they were."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


def seg_or_cls_loss(logits: torch.Tensor, target: torch.Tensor, task: str, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy. seg: logits (B, C, H, W), target (B, H, W) with ``ignore_index``; cls: (B, C), (B,)."""
    logits = logits.float()
    if task == "seg":
        if not bool((target != ignore_index).any()):
            return logits.sum() * 0.0  # every pixel ignored: no signal, but keep the graph (DDP)
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    return F.cross_entropy(logits, target)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms (1-D tensors) and relative position bias tables."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("relative_position_bias_table") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from lr/warmup to lr over ``warmup_steps``, then cosine decay to ``min_lr`` at the end."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Optimisation:
    """AdamW with warm-up and cosine decay, and a GradScaler when `scaler` (fp16 autocast on CUDA)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int,
        min_lr: float,
        scaler: bool = False,
        clip_grad: float = 0.0,
    ) -> None:
        self.model = model
        self.optimizer = build_optimizer(model, lr, weight_decay)
        self.scheduler = cosine_schedule(self.optimizer, total_steps, warmup_steps, lr, min_lr)
        self.scaler = torch.amp.GradScaler("cuda") if scaler else None
        self.clip_grad = clip_grad

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> float:
        """Clip, one optimiser step, clear the gradients, one scheduler step; returns the lr the step used."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The "optimizer", "scheduler" and "scaler" entries of a training checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def batches(
    dataset: Any,
    batch: int,
    *,
    seed: int,
    start: int,
    total: int,
    steps_per_epoch: int,
    placement: LoaderPlacement | None = None,
    **overrides: Any,
) -> Iterator[tuple[int, int, Any]]:
    """(step, epoch, (images, targets)) for step in [start, total): `steps_per_epoch` full batches an epoch, the
    order from (seed, epoch) alone (see `data.make_loader`), so a run started at `start` sees the batches an
    uninterrupted run would. `placement` (or its fields by name: ``workers=2, rank=1, world_size=4``) says where
    the batches are loaded."""
    where = settings_from(LoaderPlacement, placement, overrides, "batches")
    loader_iter: Iterator[Any] | None = None
    loader_epoch = -1
    for step in range(start, total):
        epoch, within = divmod(step, steps_per_epoch)
        if loader_iter is None or epoch != loader_epoch:
            loader = make_loader(
                dataset,
                batch,
                shuffle=True,
                seed=seed,
                epoch=epoch,
                skip_batches=within,
                drop_last=True,
                placement=where,
            )
            loader_iter, loader_epoch = iter(loader), epoch
        yield step, epoch, next(loader_iter)


@dataclass
class StepSettings:
    """How a step's passes run: the task's loss, autocast dtype (None: no autocast), distillation weight of the
    soft targets, whether the model is DDP-wrapped (gradients sync on the last pass only); `labels` False: no label
    loss, each pass learns the frozen teacher's output alone (adaptation without labels)."""

    task: str
    ignore_index: int = 255
    amp_dtype: torch.dtype | None = None
    distill_weight: float = 0.0
    distributed: bool = False
    labels: bool = True


def train_step(
    train_model: nn.Module,
    opt: Optimisation,
    passes: list[StepConfig],
    images: torch.Tensor,
    targets: torch.Tensor,
    settings: StepSettings,
    input_size: Callable[[SparsityConfig], tuple[int, int] | None] = lambda cfg: None,
    distill: RandomSparsity | None = None,
) -> tuple[dict[str, float], float]:
    """Forward/backward every pass (gradients add up; DDP syncs on the last), then one optimiser step.

    images (B, 3, H, W), targets (B, H, W) ("seg") or (B,) ("cls"); a pass whose config asks for another
    `input_size` runs on resized inputs (labels resized nearest). With `distill`, a teacher pass's output is
    the soft target of the passes after it; with its frozen teacher, that teacher's output on the batch is the target
    of every pass (and without `settings.labels` the only loss). Returns (loss per pass role, the lr of the step).
    """
    s = settings
    losses: dict[str, float] = {}
    if distill is not None and distill.frozen_teacher is not None:
        distill.teach(images)
    for i, p in enumerate(passes):
        x, y = images, targets
        res = input_size(p.config)
        if res is not None and tuple(x.shape[-2:]) != res:
            x = F.interpolate(x, size=res, mode="bilinear", align_corners=False)
            if s.task == "seg" and s.labels:
                y = F.interpolate(y[:, None].float(), size=res, mode="nearest")[:, 0].long()
        sync = not s.distributed or i == len(passes) - 1
        no_sync = contextlib.nullcontext() if sync else train_model.no_sync()  # type: ignore[operator]
        amp = torch.autocast(x.device.type, dtype=s.amp_dtype) if s.amp_dtype is not None else contextlib.nullcontext()
        with no_sync:
            with amp:
                logits = train_model(x, config=p.config)
            if not s.labels:
                assert distill is not None, "training without labels needs a teacher"
                loss = distill.distill_loss(logits)
                opt.backward(loss)
                losses[p.role] = float(loss.detach())
                continue
            loss = seg_or_cls_loss(logits, y, s.task, s.ignore_index)
            if distill is not None and distill.teacher is not None and not p.teacher:
                kd = distill.distill_loss(logits, mask=(y != s.ignore_index) if s.task == "seg" else None)
                loss = (1.0 - s.distill_weight) * loss + s.distill_weight * kd
            if distill is not None and p.teacher:
                distill.set_teacher(logits)
            opt.backward(loss)
        losses[p.role] = float(loss.detach())
    return losses, opt.step()
