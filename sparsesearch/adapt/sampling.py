"""Which configs a training step runs: the sampling rules of supernet adaptation, and :class:`RandomSparsity`,
the object a user's own training loop calls each step (``sparsesearch adapt`` uses it too).

Every rule is a pure function of (space, seed, step): DDP ranks that share the seed agree on each step's
configs without communicating, and a resumed run samples exactly what the uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import SparsityConfig
from ..errors import ConfigError
from ..models.layers import config_applied
from ..space import SearchSpace

__all__ = [
    "SAMPLERS",
    "DISTILL_KINDS",
    "StepConfig",
    "ConfigSampler",
    "RandomSparsity",
    "input_resolution",
    "kl_distill",
    "cosine_distill",
    "TEACHERS",
]

#: "uniform": one random config per step; "sandwich": the densest, the sparsest and one random config;
#: "dense": the densest config only (a dense fine-tuning baseline with the same loop).
SAMPLERS = ("uniform", "sandwich", "dense")


@dataclass(frozen=True)
class StepConfig:
    """One forward/backward pass of a step: its role ("dense", "sparsest", "sampled") and config; `teacher`:
    its output is the soft target of the step's other passes (in-place distillation)."""

    role: str
    config: SparsityConfig
    teacher: bool = False


def input_resolution(space: SearchSpace, config: SparsityConfig) -> tuple[int, int] | None:
    """The input size a config asks for: its resolution gene when the space offers several resolutions,
    else None (train and evaluate at the data set's image size)."""
    if len(space.resolutions) > 1 and config.resolution is not None:
        return (int(config.resolution[0]), int(config.resolution[1]))
    return None


class ConfigSampler:
    """The configs of each step under a sampling rule.

    Args:
        space: the search space (``space.sample`` respects its ordering rules).
        rule: one of :data:`SAMPLERS`.
        seed: the run's seed; step t draws from ``numpy.random.default_rng([seed, t])``.
        distill: the densest config runs first every step (its output is the soft target of the others).

    Attributes `densest` and `sparsest`: the extreme configs (with several resolutions, the densest at the
    largest and the sparsest at the smallest).
    """

    def __init__(self, space: SearchSpace, rule: str = "uniform", seed: int = 0, distill: bool = False) -> None:
        if rule not in SAMPLERS:
            raise ConfigError(f"unknown sampler {rule!r}; use one of {', '.join(SAMPLERS)}")
        self.space = space
        self.rule = rule
        self.seed = int(seed)
        self.distill = distill
        by_area = sorted(space.resolutions, key=lambda r: r[0] * r[1])
        self.densest = space.densest(by_area[-1])
        self.sparsest = space.sparsest(by_area[0])

    def sample(self, step: int) -> SparsityConfig:
        """The random config of step ``step`` (0-based)."""
        rng = np.random.default_rng([self.seed, int(step)])
        return self.space.sample(rng)

    def configs(self, step: int) -> list[StepConfig]:
        """The passes of step ``step`` in the order they run (a teacher, if any, first)."""
        if self.rule == "dense":
            return [StepConfig("dense", self.densest)]
        out = []
        if self.rule == "sandwich" or self.distill:
            out.append(StepConfig("dense", self.densest, teacher=self.distill))
        if self.rule == "sandwich":
            out.append(StepConfig("sparsest", self.sparsest))
        out.append(StepConfig("sampled", self.sample(step)))
        return out


#: "kl": KL divergence of softmax distributions over dim 1 (classification logits (B, C), segmentation
#: (B, C, H, W)); "bce": binary cross-entropy against the teacher's sigmoid (heatmaps, multi-label);
#: "mse": mean squared error of the raw outputs (regression, features); "cosine": 1 - the cosine similarity of
#: feature vectors, averaged over positions and levels (a backbone's features, a list of maps; what fidelity scores).
DISTILL_KINDS = ("kl", "bce", "mse", "cosine")
#: "frozen": a frozen copy of the model as it is when RandomSparsity is built (the pretrained weights) teaches every
#: pass, run dense on the same batch (`teach`): adaptation without labels.
TEACHERS = ("frozen",)


class RandomSparsity:
    """Supernet adaptation inside any training loop: the configs each step runs, and in-place distillation.

        rs = ss.RandomSparsity(model, space, sampler="sandwich", seed=0, distill=True)
        for step, (images, targets) in enumerate(loader):
            for sub in rs.configs(step):               # densest, sparsest, random: the same on every rank
                with rs.applied(sub):                  # model.set_config(sub.config) for this block
                    out = model(images)
                loss = my_loss(out, targets)
                if sub.teacher:
                    rs.set_teacher(out)                # the densest run's output: the others' soft target
                else:
                    loss = loss + rs.distill_loss(out)  # 0 without distill
                loss.backward()
            optimizer.step(); optimizer.zero_grad()

    Args:
        model: the supernet (anything with ``set_config``; a DDP wrapper is unwrapped), or None.
        space: the search space the configs come from.
        sampler: "sandwich" (densest, sparsest, one random config per step), "uniform" (one random) or
            "dense" (the densest only).
        seed: step t draws from ``numpy.random.default_rng([seed, t])`` (no global RNG is touched).
        distill: the densest config runs first and its output is the soft target of the others (in-place).
        kind, temperature: the distillation loss (see :data:`DISTILL_KINDS`) and its softmax/sigmoid temperature.
        teacher: "frozen": a frozen copy of `model` as it is now (its pretrained weights) is the teacher of every
            pass, run under the densest config on each batch by `teach(images)`; or a module to use as that frozen
            teacher. No labels are needed: the loss is `distill_loss(out)` alone ("kl" for logits, "cosine" for
            features). Not with `distill` (one teacher at a time).

    Without labels (a pretrained backbone, a folder of images)::

        rs = ss.RandomSparsity(model, space, sampler="sandwich", teacher="frozen", kind="cosine")
        for step, images in enumerate(loader):
            rs.teach(images)                           # the frozen pretrained model, dense: every pass's target
            for sub in rs.configs(step):
                with rs.applied(sub):
                    loss = rs.distill_loss(model(images))
                loss.backward()
            optimizer.step(); optimizer.zero_grad()
    """

    def __init__(
        self,
        model: Any,
        space: SearchSpace,
        sampler: str = "sandwich",
        seed: int = 0,
        *,
        distill: bool = False,
        kind: str = "kl",
        temperature: float = 1.0,
        teacher: str | torch.nn.Module | None = None,
    ) -> None:
        if kind not in DISTILL_KINDS:
            raise ConfigError(f"unknown distillation kind {kind!r}; use one of {', '.join(DISTILL_KINDS)}")
        if not temperature > 0:
            raise ConfigError(f"distillation temperature must be positive, got {temperature!r}")
        module = getattr(model, "module", None)
        self.model = module if isinstance(module, torch.nn.Module) else model
        self.space = space
        self.sampler = ConfigSampler(space, sampler, seed, distill)
        self.distill = bool(distill)
        self.kind = kind
        self.temperature = float(temperature)
        self._teacher: Any = None
        self.frozen_teacher = _frozen_teacher(self.model, teacher, distill)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def densest(self) -> SparsityConfig:
        """The densest config (at the largest resolution of the space)."""
        return self.sampler.densest

    @property
    def sparsest(self) -> SparsityConfig:
        """The sparsest config (at the smallest resolution of the space)."""
        return self.sampler.sparsest

    def configs(self, step: int) -> list[StepConfig]:
        """The passes of step `step` (0-based) in the order to run them; forgets the previous step's in-place
        teacher (a frozen teacher's output is set by `teach`)."""
        if self.frozen_teacher is None:
            self._teacher = None
        return self.sampler.configs(step)

    __call__ = configs

    def resolution(self, sub: StepConfig | SparsityConfig) -> tuple[int, int] | None:
        """The input size a pass asks for (spaces with several resolutions), else None: resize inputs to it."""
        return input_resolution(self.space, sub.config if isinstance(sub, StepConfig) else sub)

    @contextlib.contextmanager
    def applied(self, sub: StepConfig | SparsityConfig) -> Iterator[SparsityConfig]:
        """Apply a pass's config to the model for the block, then restore the previous one."""
        if self.model is None:
            raise ConfigError("RandomSparsity was created without a model: apply the configs yourself")
        cfg = sub.config if isinstance(sub, StepConfig) else sub
        with config_applied(self.model, cfg):
            yield cfg

    def set_teacher(self, output: Any) -> None:
        """Keep the (detached) output of the teacher pass (a tensor or a list of tensors) as this step's target."""
        self._teacher = [t.detach() for t in output] if isinstance(output, (list, tuple)) else output.detach()

    @property
    def teacher(self) -> Any:
        return self._teacher

    @torch.no_grad()
    def teach(self, images: torch.Tensor) -> Any:
        """The frozen teacher's output on `images` (B, 3, H, W), run under the densest config (at the images' own
        size): the target of every pass of this batch (kept until the next `teach`). Needs ``teacher="frozen"``."""
        t = self.frozen_teacher
        if t is None:
            raise ConfigError('teach() needs a frozen teacher: RandomSparsity(..., teacher="frozen")')
        p = next(t.parameters(), None)
        x = images.to(p.device) if p is not None else images
        dense = SparsityConfig(self.densest.sparsity, self.densest.window_size)
        with config_applied(t, dense) if hasattr(t, "set_config") else contextlib.nullcontext():
            self.set_teacher(t(x))
        return self._teacher

    def distill_loss(self, student: Any, teacher: Any = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation term of a student pass: `kind`'s distance to the teacher's output (times T^2 for
        "kl"); zero (with the graph kept) without a teacher (in-place or frozen) or before one ran.

        Args:
            student: this pass's output, (B, C) or (B, C, H, W) (a teacher of another spatial size is resized);
                for "cosine" features of any layout (channels found as `fidelity.feature_channel_dim` does) or a
                list of them.
            teacher: default: the one given to `set_teacher` (or computed by `teach`) this step.
            mask: "kl" on (B, C, H, W) only: (B, H, W) bool, the pixels that count.
        """
        t = teacher if teacher is not None else self._teacher
        if not (self.distill or self.frozen_teacher is not None) or t is None:
            return _zero(student)
        if self.kind == "cosine":
            return cosine_distill(student, t, getattr(self.model, "num_features", None))
        if self.kind == "kl":
            return kl_distill(student, t, self.temperature, mask)
        s, t = student.float(), _resized(t.detach().float(), student)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(s / self.temperature, torch.sigmoid(t / self.temperature))
        return F.mse_loss(s, t)


def _zero(student: Any) -> torch.Tensor:
    """0 that keeps the graph of a student output (a tensor or a list of tensors)."""
    parts = student if isinstance(student, (list, tuple)) else [student]
    return sum((t.sum() * 0.0 for t in parts), torch.zeros((), device=parts[0].device))


def _frozen_teacher(model: Any, teacher: str | torch.nn.Module | None, distill: bool) -> torch.nn.Module | None:
    """The frozen teacher module: a copy of `model` ("frozen"), `teacher` itself (a module), or None."""
    if teacher is None:
        return None
    if distill:
        raise ConfigError(
            "distill (in-place: the densest pass teaches) and a frozen teacher are two teachers: pick one"
        )
    if isinstance(teacher, torch.nn.Module):
        module = teacher
    elif teacher == "frozen":
        if model is None:
            raise ConfigError('teacher="frozen" copies the model: create RandomSparsity with the model')
        module = copy.deepcopy(model)
    else:
        raise ConfigError(f"unknown teacher {teacher!r}; use one of {', '.join(TEACHERS)} or a module")
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def cosine_distill(student: Any, teacher: Any, channels: int | None = None) -> torch.Tensor:
    """1 - cos(student, teacher) of the feature vectors at every position, averaged over positions, then over
    levels: the loss that matches what feature fidelity scores.

    student, teacher: a tensor or a list of tensors (levels), each (B, ...) with its channels where
    `fidelity.feature_channel_dim(t, channels)` finds them (NCHW maps, NHWC when the last size is `channels`,
    (B, N, C) tokens); a teacher map of another spatial size is resized (bilinear) to the student's.
    """
    from ..fidelity import feature_channel_dim, output_tensors  # noqa: PLC0415

    s_levels, t_levels = output_tensors(student, "the student"), output_tensors(teacher, "the teacher")
    if len(s_levels) != len(t_levels):
        raise ConfigError(f"the student gives {len(s_levels)} feature levels but the teacher {len(t_levels)}")
    losses = []
    for s, t in zip(s_levels, t_levels):
        dim = feature_channel_dim(t, channels)
        sv, tv = s.float().movedim(dim, -1), t.detach().float().movedim(dim, -1)
        if sv.shape != tv.shape and sv.dim() == 4:
            size = sv.shape[1:3]
            tv = F.interpolate(tv.movedim(-1, 1), size=size, mode="bilinear", align_corners=False).movedim(1, -1)
        losses.append((1.0 - F.cosine_similarity(sv, tv, dim=-1)).mean())
    return torch.stack(losses).mean()


def _resized(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """A (B, C, h, w) teacher resized (bilinear) to the student's spatial size; other shapes unchanged."""
    if student.dim() == 4 and teacher.shape[-2:] != student.shape[-2:]:
        return F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    return teacher


def kl_distill(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """KL(teacher || student) of the class distributions over dim 1, times T^2.

    student/teacher: (B, C) or (B, C, H, W) logits (a teacher of another size is resized to the student's);
    averaged over B (and pixels); with `mask` (B, H, W) over the pixels where it is true only.
    """
    s = student.float() / temperature
    t = _resized(teacher.detach().float(), student) / temperature
    kl = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="none", log_target=True).sum(1)
    if mask is not None and mask.shape == kl.shape:
        valid = mask.to(kl.dtype)
        return (kl * valid).sum() / valid.sum().clamp(min=1.0) * temperature**2
    return kl.mean() * temperature**2
