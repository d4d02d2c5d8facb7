"""CLIP configurations as frozen dataclasses, read from a checkpoint's ``config.json``.

Field names follow transformers' ``CLIPVisionConfig`` / ``CLIPTextConfig`` so a
config.json maps onto them key for key; defaults are transformers' defaults, used
when an older config.json omits a key.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_attention_heads: int = 12
    num_hidden_layers: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid_size(self) -> int:
        """Patches per side at the checkpoint's native image size."""
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    num_hidden_layers: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # OpenAI checkpoints say 2 (a legacy value): transformers then pools at the
    # argmax token id, which is the EOT token because it has the largest id.
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "CLIPConfig":
        """Builds a config from the parsed ``config.json`` of a transformers CLIPModel."""
        # Older hub configs (e.g. OpenAI's) also carry `*_config_dict`; like transformers,
        # its values take precedence.
        vision = _subconfig(VisionConfig, {**(raw.get("vision_config") or {}),
                                           **(raw.get("vision_config_dict") or {})}, "vision_config")
        text = _subconfig(TextConfig, {**(raw.get("text_config") or {}),
                                       **(raw.get("text_config_dict") or {})}, "text_config")
        return cls(vision=vision, text=text,
                   projection_dim=int(raw.get("projection_dim", cls.projection_dim)))


def _subconfig(kind, raw: Mapping[str, Any], where: str):
    values = {f.name: type(f.default)(raw[f.name])
              for f in dataclasses.fields(kind) if raw.get(f.name) is not None}
    config = kind(**values)
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"config.json {where}.hidden_act={config.hidden_act!r} is not supported; "
                         f"jaxseg implements {', '.join(ACTIVATIONS)}")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"config.json {where}: hidden_size {config.hidden_size} is not divisible "
                         f"by num_attention_heads {config.num_attention_heads}")
    return config
