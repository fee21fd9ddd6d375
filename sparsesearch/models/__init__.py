"""Prunable backbones, heads, the registry and checkpoint loading.

Each family's file registers its family and its model names when imported; importing a family file here is all it
takes to add one.
"""

from . import hiera, samvit, swin  # noqa: F401  (the families register themselves)
from .checkpoint import convert_state_dict, load_checkpoint, read_state_dict
from .family import ModelFamily, families, family_of_model, get_family
from .features import FeatureInfo, FeatureListNet, supports_features
from .hiera import HieraBlock, HieraDet
from .registry import create_model, list_models, model_defaults, model_family_name, register_model
from .samvit import SamBlock, SamViT
from .swin import SwinBlock, SwinStage, SwinTransformer
from .window_block import PrunedWindowBlock, WindowPrunableModel

__all__ = [
    "SwinTransformer",
    "SwinStage",
    "SwinBlock",
    "SamViT",
    "SamBlock",
    "HieraDet",
    "HieraBlock",
    "PrunedWindowBlock",
    "WindowPrunableModel",
    "model_family_name",
    "ModelFamily",
    "families",
    "get_family",
    "family_of_model",
    "create_model",
    "list_models",
    "model_defaults",
    "register_model",
    "load_checkpoint",
    "read_state_dict",
    "convert_state_dict",
    "FeatureInfo",
    "FeatureListNet",
    "supports_features",
]
