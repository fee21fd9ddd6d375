"""Supernet adaptation: train one set of weights under randomly sampled layerwise sparsity.

:func:`adapt` runs the loop (resumable, DDP-ready); :class:`RandomSparsity` gives a training loop (yours or
:func:`adapt`) each step's configs and the distillation loss; :class:`ConfigSampler` holds the sampling rules;
:mod:`.checkpoint` the training checkpoint format; :mod:`.distributed` the torchrun helpers; :mod:`.loop` the
training loop (batches, optimiser step, passes) that export's fine-tune shares.
"""

from .checkpoint import capture_rng, inspect_run, load_train_checkpoint, restore_rng
from .options import RUNTIME_FIELDS, AdaptOptions, parse_image_size
from .sampling import DISTILL_KINDS, SAMPLERS, ConfigSampler, RandomSparsity, StepConfig, input_resolution, kl_distill
from .trainer import AdaptResult, adapt, build_optimizer, cosine_schedule, seg_or_cls_loss

__all__ = [
    "AdaptOptions",
    "AdaptResult",
    "adapt",
    "ConfigSampler",
    "RandomSparsity",
    "DISTILL_KINDS",
    "kl_distill",
    "StepConfig",
    "SAMPLERS",
    "RUNTIME_FIELDS",
    "input_resolution",
    "parse_image_size",
    "seg_or_cls_loss",
    "build_optimizer",
    "cosine_schedule",
    "capture_rng",
    "restore_rng",
    "inspect_run",
    "load_train_checkpoint",
]
