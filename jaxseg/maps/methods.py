"""One entry for every relevance method: the maps of a batch of views, and dense features.

Ensembles (``RelevanceConfig(method=("chefer", "naclip"))``) run every method in the same
program and average their maps, each min-max normalised per view and class over the real
patches. Each method keeps its authors' exact computation, including how it resizes the
position embeddings (transformers' bicubic rule for Chefer, DINO's for NACLIP, bilinear in
float16 for CLIP-ES), so no image forward is shared between methods: their token
embeddings already differ.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseg.clip.config import CLIPConfig
from jaxseg.maps import chefer, clip_es, naclip
from jaxseg.maps.config import RelevanceConfig


def single_method_maps(method: str, params: Any, pixel_values: jax.Array,
                       text_embeds: jax.Array, *, config: CLIPConfig, dtype,
                       relevance: RelevanceConfig, class_mask: Optional[jax.Array] = None,
                       background_embeds: Optional[jax.Array] = None,
                       grid_hw: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """``(maps [B, K, gh, gw], features [B, gh, gw, P])`` of one method (raw: Chefer's
    relevance, CLIP-ES's map in [0, 1), NACLIP's cosine)."""
    if method == "chefer":
        return chefer.relevance_maps(
            params, pixel_values, text_embeds, config=config, dtype=dtype,
            start_layer=relevance.setting("start_layer"), softmax=relevance.setting("softmax"),
            class_mask=class_mask, with_features=True, grid_hw=grid_hw,
            gradient_budget_mb=relevance.setting("gradient_budget_mb"))
    if method == "clip-es":
        if background_embeds is None:
            raise ValueError("clip-es needs background_embeds [M, P] (the background names' "
                             "embeddings of its softmax); see jaxseg.labels.presets")
        maps, features, _ = clip_es.clip_es_maps(
            params, pixel_values, text_embeds, background_embeds, config=config, dtype=dtype,
            caa=relevance.setting("caa"), box_threshold=relevance.setting("box_threshold"),
            class_mask=class_mask, grid_hw=grid_hw)
        return maps, features
    return naclip.naclip_maps(params, pixel_values, text_embeds, config=config, dtype=dtype,
                              sigma=relevance.setting("sigma"), grid_hw=grid_hw)


def normalise_maps(maps: jax.Array, grid_hw: Optional[jax.Array] = None) -> jax.Array:
    """Each ``[B, K, gh, gw]`` map min-max normalised to [0, 1] over its real patches (the
    top-left ``grid_hw[b]``; all when None); constant maps become 0."""
    grid_h, grid_w = maps.shape[2:]
    valid = jnp.ones(maps.shape[:1] + (1, grid_h, grid_w), bool)
    if grid_hw is not None:
        valid = ((jnp.arange(grid_h)[:, None] < grid_hw[:, None, None, None, 0])
                 & (jnp.arange(grid_w)[None, :] < grid_hw[:, None, None, None, 1]))
    low = jnp.min(jnp.where(valid, maps, jnp.inf), axis=(2, 3), keepdims=True)
    high = jnp.max(jnp.where(valid, maps, -jnp.inf), axis=(2, 3), keepdims=True)
    spread = high - low
    return jnp.where(valid & (spread > 0), (maps - low) / jnp.where(spread > 0, spread, 1.0), 0.0)


def finite_views(maps: jax.Array, class_mask: Optional[jax.Array] = None) -> jax.Array:
    """bool ``[B]``: every real class's map of each ``[B, K, gh, gw]`` view is finite.

    An elementwise test with a boolean reduction: XLA's min and max reductions may drop a
    NaN (on CPU they do), so a NaN map min-max normalised comes out as an empty one, and
    only a test made before any reduction tells a broken model from a blank image.
    """
    if class_mask is not None:
        mask = jnp.broadcast_to(jnp.asarray(class_mask, bool), maps.shape[:2])
        maps = jnp.where(mask[..., None, None], maps, 0.0)
    return jnp.isfinite(maps).reshape(maps.shape[0], -1).all(axis=1)


def mark_broken(finite: jax.Array, *outputs: jax.Array) -> tuple[jax.Array, ...]:
    """Each ``[B, ...]`` output set to NaN for the images whose ``finite`` (bool ``[B]``)
    is False, so that the host sees a broken image's outputs as broken (elementwise: the
    scores' reductions may have turned its NaN into plausible zeros)."""
    return tuple(jnp.where(finite.reshape((-1,) + (1,) * (out.ndim - 1)), out, jnp.nan)
                 for out in outputs)


def method_maps(params: Any, pixel_values: jax.Array, text_embeds: jax.Array, *,
                config: CLIPConfig, dtype, relevance: RelevanceConfig,
                class_mask: Optional[jax.Array] = None,
                background_embeds: Optional[jax.Array] = None,
                grid_hw: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Pure: the configured method's maps of every view and class, and dense features.

    Args:
      params: CLIP parameters.
      pixel_values: ``[B, H, W, 3]`` CLIP-normalised views (H, W multiples of the patch).
      text_embeds: ``[K, P]`` (shared) or ``[B, K, P]`` (per view) class embeddings (any norm).
      config, dtype: the CLIP configuration and compute dtype.
      relevance: the method(s) and their settings.
      class_mask: optional ``[K]`` / ``[B, K]`` validity of classes (False: padding).
      background_embeds: ``[M, P]`` / ``[B, M, P]`` background-name embeddings (clip-es).
      grid_hw: optional int ``[B, 2]`` real patch grid of padded views.

    Returns:
      ``(maps [B, K, gh, gw] float32, features [B, gh, gw, P] float32)``: one method's raw
      maps (Chefer's relevance, CLIP-ES's map in [0, 1), NACLIP's cosine), or an ensemble's
      weighted mean of normalised maps; the first method's dense features. A view where
      a method's map of a real class is not finite (NaN weights, an overflow) gets NaN
      maps, even in an ensemble, whose normalisation would hide it (see
      :func:`finite_views`).
    """
    outputs = [single_method_maps(method, params, pixel_values, text_embeds, config=config,
                                  dtype=dtype, relevance=relevance, class_mask=class_mask,
                                  background_embeds=background_embeds, grid_hw=grid_hw)
               for method in relevance.methods]
    if len(outputs) == 1:
        return outputs[0]
    combined = sum(weight * normalise_maps(maps, grid_hw)
                   for weight, (maps, _) in zip(relevance.ensemble_weights, outputs))
    finite = jnp.stack([finite_views(maps, class_mask) for maps, _ in outputs]).all(axis=0)
    return jnp.where(finite[:, None, None, None], combined, jnp.nan), outputs[0][1]
