"""Prunable backbones, heads, the registry and checkpoint loading."""

from . import zoo  # noqa: F401  (registers the models)
from .checkpoint import convert_state_dict, load_checkpoint, read_state_dict
from .family import ModelFamily, family_of_model, get_family
from .features import FeatureInfo, FeatureListNet, supports_features
from .registry import create_model, list_models, model_defaults, model_family_name, register_model
from .samvit import SamBlock, SamViT
from .swin import SwinBlock, SwinStage, SwinTransformer

__all__ = [
    "SwinTransformer",
    "SwinStage",
    "SwinBlock",
    "SamViT",
    "SamBlock",
    "model_family_name",
    "ModelFamily",
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
