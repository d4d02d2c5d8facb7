"""One entry for every relevance method: the maps of a batch of views, and dense features."""

from __future__ import annotations

from typing import Any, Optional

import jax

from jaxseg.clip.config import CLIPConfig
from jaxseg.maps import chefer
from jaxseg.maps.config import RelevanceConfig


def method_maps(params: Any, pixel_values: jax.Array, text_embeds: jax.Array, *,
                config: CLIPConfig, dtype, relevance: RelevanceConfig,
                class_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Pure: the configured method's maps of every view and class, and dense features.

    Args:
      params: CLIP parameters.
      pixel_values: ``[B, H, W, 3]`` CLIP-normalised views (H, W multiples of the patch).
      text_embeds: ``[K, P]`` (shared) or ``[B, K, P]`` (per view) class embeddings.
      config, dtype: the CLIP configuration and compute dtype.
      relevance: the method and its settings.
      class_mask: optional ``[K]`` / ``[B, K]`` validity of classes (False: padding).

    Returns:
      ``(maps [B, K, gh, gw] float32, unnormalised; features [B, gh, gw, P] float32)``,
      the features being the projected patch tokens entering the last block.
    """
    return chefer.relevance_maps(
        params, pixel_values, text_embeds, config=config, dtype=dtype,
        start_layer=relevance.setting("start_layer"), softmax=relevance.setting("softmax"),
        class_mask=class_mask, with_features=True)
