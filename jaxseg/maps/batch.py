"""Batches of images through the relevance stage: canvases, class padding, one program.

The host packs a batch (:func:`pack_tta`, :func:`pack_queries`): every image on a fixed
canvas, every image's query embeddings padded to a shared power-of-two width
(:func:`class_bucket`), the batch padded to a fixed size, so a new image size or label
count within a bucket never recompiles. :func:`tta_program` is the pure device program:
crop the TTA variants, compute the method's maps, warp them back, average and score them,
in one program. :func:`unpack_tta` turns its outputs into per-image score maps;
``jaxseg.maps.native`` is the single-view counterpart.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.clip.config import CLIPConfig
from jaxseg.maps import tta as tta_lib
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.methods import finite_views, mark_broken, method_maps
from jaxseg.maps.scoring import ScoreConfig, score_maps
from jaxseg.maps.tta import TTAConfig

Params = Any


def class_bucket(num_classes: int) -> int:
    """Padded class count: the next power of two, so K does not recompile per image."""
    return 1 << max(0, num_classes - 1).bit_length()


def tta_program(params: Params, canvases: jax.Array, content_hw: jax.Array,
                queries: jax.Array, owner: jax.Array, background: jax.Array, *,
                config: CLIPConfig, dtype, tta: TTAConfig, relevance: RelevanceConfig,
                scoring: ScoreConfig, num_labels: int):
    """Pure TTA relevance for a batch of canvases: crop, maps, warp back, score, in one program.

    Args:
      params: CLIP parameters.
      canvases: uint8 ``[I, C, C, 3]`` from ``tta.prepare_canvas``.
      content_hw: int32 ``[I, 2]`` content sizes on the canvases.
      queries: ``[I, Q, P]`` query embeddings per image (padding rows allowed).
      owner: int32 ``[I, Q]``: the label of each query (``jaxseg.maps.scoring.score_maps``).
      background: ``[M, P]`` background-name embeddings of clip-es's softmax (M may be 0).
      config, dtype, tta, relevance, scoring, num_labels: static settings.

    Returns:
      ``(scores [I, num_labels, C, C], background [I, C, C], features [I, gh, gw, P])``;
      the features are those of the first variant: the whole image when ``tta.scales``
      holds 1.0 (``SegmentConfig`` asks for it when the refinement uses them). An image with a
      map that is not finite in any variant gets NaN outputs (``methods.mark_broken``).
    """
    images, num_variants = canvases.shape[0], tta_lib.num_variants(tta)
    boxes, flips = jax.vmap(lambda hw: tta_lib.variant_boxes(hw, tta))(content_hw)
    pixels = jax.vmap(lambda canvas, box, flip: tta_lib.crop_variants(
        canvas, box, flip, tta.input_size))(canvases, boxes, flips)
    pixels = pixels.reshape((images * num_variants,) + pixels.shape[2:])
    repeat = functools.partial(jnp.repeat, repeats=num_variants, axis=0)
    maps, features = method_maps(
        params, pixels, repeat(queries), config=config, dtype=dtype, relevance=relevance,
        class_mask=repeat(owner > 0),
        background_embeds=background if relevance.needs_background else None)
    finite = finite_views(maps, repeat(owner >= 0)).reshape(images, num_variants).all(axis=1)
    maps = maps.reshape((images, num_variants) + maps.shape[1:])
    normalise = scoring.rule == "minmax"
    canvas_maps = jax.vmap(lambda m, b, f, hw: tta_lib.warp_back(m, b, f, hw, tta, normalise))(
        maps, boxes, flips, content_hw)
    scores, background_plane = jax.vmap(
        lambda m, own: score_maps(m, own, num_labels, scoring))(canvas_maps, owner)
    features = features.reshape((images, num_variants) + features.shape[1:])[:, 0]
    return mark_broken(finite, scores, background_plane, features)


def pack_queries(queries: Sequence[np.ndarray], owners: Sequence[np.ndarray],
                 batch_size: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image query embeddings ``[Q_i, P]`` and owners ``[Q_i]`` padded to
    ``([batch_size, width, P] float32, [batch_size, width] int32)`` (owner -1: padding)."""
    packed = np.zeros((batch_size, width, queries[0].shape[-1]), np.float32)
    owner = np.full((batch_size, width), -1, np.int32)
    for i, (embeds, own) in enumerate(zip(queries, owners)):
        packed[i, :len(embeds)], owner[i, :len(own)] = embeds, own
    return packed, owner


def pack_tta(images: Sequence[np.ndarray], tta: TTAConfig, batch_size: int):
    """Canvases of several images for :func:`tta_program`: ``(canvases [B, C, C, 3] uint8,
    content_hw [B, 2] int32)`` and each image's content size."""
    canvases = np.zeros((batch_size, tta.canvas_size, tta.canvas_size, 3), np.uint8)
    content_hw = np.ones((batch_size, 2), np.int32)
    content = []
    for i, image in enumerate(images):
        canvases[i], hw = tta_lib.prepare_canvas(image, tta)
        content_hw[i] = hw
        content.append(hw)
    return (canvases, content_hw), content


def unpack_tta(outputs, content: Sequence[tuple[int, int]], images: Sequence[np.ndarray],
               num_labels: Sequence[int]):
    """Per image ``(scores [K_i, H, W], background [H, W], features [gh, gw, P])`` in image
    coordinates from the host copy of :func:`tta_program`'s outputs."""
    scores, background, features = outputs
    return [(tta_lib.finish(scores[i, :num_labels[i]], content[i], images[i].shape[:2]),
             tta_lib.finish(background[i][None], content[i], images[i].shape[:2])[0],
             features[i]) for i in range(len(images))]
