"""``jaxseg.relevance`` and ``jaxseg.relevance_tta``: the relevance stage on a CLIP handle.

Thin, jit-compiled entry points over the pure functions (``jaxseg.maps.methods``,
``jaxseg.maps.batch``); the compiled programs belong to the CLIP handle. A pipeline that
segments many images uses a ``jaxseg.Segmenter`` instead.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.clip.vision import check_pixel_values
from jaxseg.maps import batch as batch_lib
from jaxseg.maps.chefer import resolve_start_layer
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.methods import method_maps
from jaxseg.maps.scoring import ScoreConfig
from jaxseg.maps.tta import TTAConfig


def _maps_only(params, pixel_values, text_embeds, background_embeds, **settings):
    return method_maps(params, pixel_values, text_embeds, background_embeds=background_embeds,
                       **settings)[0]


def resolve_config(config: Optional[RelevanceConfig], start_layer: Optional[int],
                   softmax: Optional[bool]) -> RelevanceConfig:
    """``config``, or the Chefer config the legacy keyword arguments describe."""
    if config is None:
        return RelevanceConfig(start_layer=start_layer, softmax=softmax)
    if start_layer is not None or softmax is not None:
        raise ValueError("pass start_layer and softmax inside RelevanceConfig(...) or as "
                         "keyword arguments, not both")
    return config


def _check(clip, text_embeds: jax.Array, background_embeds, relevance: RelevanceConfig,
           caller: str) -> Optional[jax.Array]:
    """Raises ValueError for embeddings the method cannot take; returns the background
    embeddings as float32 ``[M, P]`` (None for methods that take none)."""
    if text_embeds.ndim != 2 or text_embeds.shape[1] != clip.config.projection_dim:
        raise ValueError(f"{caller} expects text_embeds [K, {clip.config.projection_dim}], "
                         f"got {tuple(text_embeds.shape)}")
    if relevance.method == "chefer":
        resolve_start_layer(relevance.setting("start_layer"), clip.config.vision.num_hidden_layers)
    if not relevance.needs_background:
        if background_embeds is not None:
            raise ValueError(f"{caller}: background_embeds mean nothing for method "
                             f"{relevance.method!r}; leave them out")
        return None
    if background_embeds is None:
        raise ValueError(f"{caller}: clip-es needs background_embeds [M, P]: the embeddings of "
                         f"its background names (jaxseg.labels.presets.CLIP_ES_VOC_BACKGROUND)")
    background_embeds = jnp.asarray(background_embeds, jnp.float32)
    if background_embeds.ndim != 2 or background_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(f"{caller} expects background_embeds [M, {text_embeds.shape[1]}], "
                         f"got {tuple(background_embeds.shape)}")
    return background_embeds


def relevance(clip, pixel_values, text_embeds, start_layer: Optional[int] = None,
              softmax: Optional[bool] = None, *, config: Optional[RelevanceConfig] = None,
              background_embeds=None) -> jax.Array:
    """Relevance maps of each class for each image (jit-compiled, cached per shape).

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      pixel_values: ``[B, H, W, 3]`` CLIP-normalised pixels (H, W multiples of the patch).
      text_embeds: ``[K, P]`` class embeddings from ``clip.encode_text`` (any norm).
      start_layer, softmax: Chefer's settings, as a shorthand for
        ``config=RelevanceConfig(start_layer=..., softmax=...)``.
      config: the method(s) and settings (default Chefer, last block, raw logits).
      background_embeds: ``[M, P]`` background-name embeddings (any norm); clip-es only,
        where they share the softmax with the present classes.

    Returns:
      ``[B, K, gh, gw]`` float32 maps: Chefer's relevance (unnormalised), CLIP-ES's map in
      [0, 1) (``caa=False``: its Grad-CAM), NACLIP's cosine similarities, or an ensemble's
      mean of per-map normalised maps. Differentiable: ``jax.grad`` through
      ``jaxseg.maps.methods.method_maps`` works w.r.t. pixel values and params.
    """
    relevance_config = resolve_config(config, start_layer, softmax)
    pixel_values = jnp.asarray(pixel_values, jnp.float32)
    text_embeds = jnp.asarray(text_embeds)
    check_pixel_values(pixel_values.shape, clip.config.vision.patch_size, "relevance")
    background_embeds = _check(clip, text_embeds, background_embeds, relevance_config,
                               "relevance")
    batch, height, width = pixel_values.shape[:3]
    if batch == 0 or len(text_embeds) == 0:  # no image or no class: the programs need both
        patch = clip.config.vision.patch_size
        return jnp.zeros((batch, len(text_embeds), height // patch, width // patch), jnp.float32)
    return clip.compiled(_maps_only, relevance=relevance_config)(
        clip.params, pixel_values, text_embeds, background_embeds)


def relevance_tta(clip, image: np.ndarray, text_embeds, tta: TTAConfig = TTAConfig(),
                  start_layer: Optional[int] = None, softmax: Optional[bool] = None, *,
                  config: Optional[RelevanceConfig] = None,
                  background_embeds=None) -> np.ndarray:
    """Per-class TTA relevance of one image in image coordinates.

    Args:
      clip: a ``jaxseg.CLIP``.
      image: uint8 ``[H, W, 3]`` RGB image.
      text_embeds: ``[K, P]`` class embeddings (e.g. ``class_embeddings``).
      tta: variant set, canvas and input size.
      start_layer, softmax, config, background_embeds: the method, as in :func:`relevance`.

    Returns:
      float32 ``[K, H, W]`` scores, each class's TTA-averaged map normalised to ``[0, 1]``.
    """
    relevance_config = resolve_config(config, start_layer, softmax)
    text_embeds = np.asarray(text_embeds, np.float32)
    background = _check(clip, text_embeds, background_embeds, relevance_config, "relevance_tta")
    if len(text_embeds) == 0:
        return np.zeros((0,) + np.asarray(image).shape[:2], np.float32)
    if background is None:
        background = np.zeros((0, text_embeds.shape[1]), np.float32)
    (canvases, content_hw), content = batch_lib.pack_tta([image], tta, 1)
    owner = np.arange(1, len(text_embeds) + 1, dtype=np.int32)
    queries, owners = batch_lib.pack_queries([text_embeds], [owner], 1,
                                             batch_lib.class_bucket(len(text_embeds)))
    program = clip.compiled(batch_lib.tta_program, tta=tta, relevance=relevance_config,
                            scoring=ScoreConfig(), num_labels=queries.shape[1])
    outputs = jax.device_get(program(clip.params, canvases, content_hw, queries, owners,
                                     background))
    return batch_lib.unpack_tta(outputs, content, [image], [len(text_embeds)])[0][0]
