"""CLIP in Flax Linen: configs, layers, the two towers and the whole model."""

from jaxseg.models.clip import CLIPModel, encode_image, encode_text, init_params
from jaxseg.models.config import CLIPConfig, TextConfig, VisionConfig

__all__ = ["CLIPModel", "CLIPConfig", "TextConfig", "VisionConfig", "encode_image",
           "encode_text", "init_params"]
