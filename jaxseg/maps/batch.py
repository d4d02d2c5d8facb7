"""Batches of images through the relevance stage: canvases, class padding, one program.

The host packs a batch (:func:`pack_batch`): every image on a fixed canvas, every image's
class embeddings padded to a shared power-of-two width (:func:`class_bucket`), the batch
padded to a fixed size, so a new image size or label count within a bucket never
recompiles. :func:`tta_program` is the pure device program: crop the TTA variants, compute
the method's maps, warp them back and average, in one program. :func:`unpack_batch` turns
its outputs into per-image score maps. :func:`place` / :func:`replicate` put a batch and
the parameters on a device mesh.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.clip.config import CLIPConfig
from jaxseg.maps import tta as tta_lib
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.methods import method_maps
from jaxseg.maps.tta import TTAConfig

Params = Any


def class_bucket(num_classes: int) -> int:
    """Padded class count: the next power of two, so K does not recompile per image."""
    return 1 << max(0, num_classes - 1).bit_length()


def tta_program(params: Params, canvases: jax.Array, content_hw: jax.Array,
                text_embeds: jax.Array, class_mask: jax.Array, *, config: CLIPConfig,
                dtype, tta: TTAConfig, relevance: RelevanceConfig):
    """Pure TTA relevance for a batch of canvases: crop, maps, warp back, in one program.

    Args:
      params: CLIP parameters.
      canvases: uint8 ``[I, C, C, 3]`` from ``tta.prepare_canvas``.
      content_hw: int32 ``[I, 2]`` content sizes on the canvases.
      text_embeds: ``[I, K, P]`` class embeddings per image (padding rows allowed).
      class_mask: bool ``[I, K]``, False for padding classes.
      config, dtype, tta, relevance: static settings.

    Returns:
      ``(scores [I, K, C, C] in [0, 1], features [I, gh, gw, P])``; the features are
      those of the first variant (the whole image).
    """
    images, num_variants = canvases.shape[0], tta_lib.num_variants(tta)
    boxes, flips = jax.vmap(lambda hw: tta_lib.variant_boxes(hw, tta))(content_hw)
    pixels = jax.vmap(lambda canvas, box, flip: tta_lib.crop_variants(
        canvas, box, flip, tta.input_size))(canvases, boxes, flips)
    pixels = pixels.reshape((images * num_variants,) + pixels.shape[2:])
    repeat = functools.partial(jnp.repeat, repeats=num_variants, axis=0)
    maps, features = method_maps(params, pixels, repeat(text_embeds), config=config, dtype=dtype,
                                 relevance=relevance, class_mask=repeat(class_mask))
    maps = maps.reshape((images, num_variants) + maps.shape[1:])
    scores = jax.vmap(lambda m, b, f, hw: tta_lib.warp_back(m, b, f, hw, tta))(
        maps, boxes, flips, content_hw)
    features = features.reshape((images, num_variants) + features.shape[1:])[:, 0]
    return scores, features


def pack_batch(images: Sequence[np.ndarray], text_embeds: Sequence[np.ndarray],
               tta: TTAConfig, batch_size: Optional[int] = None):
    """Host arrays of :func:`tta_program` for several images.

    Args:
      images: uint8 ``[H, W, 3]`` RGB images (sizes may differ).
      text_embeds: per image, ``[K_i, P]`` class embeddings.
      tta: canvas and variant settings.
      batch_size: pad the batch to this many images (default ``len(images)``).

    Returns:
      ``(inputs, content)``: ``inputs`` = ``(canvases [B, C, C, 3] uint8, content_hw
      [B, 2] int32, text_embeds [B, W, P] float32, class_mask [B, W] bool)`` with ``W`` the
      :func:`class_bucket` of the largest K; ``content`` the content size of each image.
    """
    count = len(images)
    batch = batch_size or count
    if count == 0 or count > batch or len(text_embeds) != count:
        raise ValueError(f"a relevance batch got {count} images, {len(text_embeds)} class "
                         f"embedding sets and batch_size {batch_size}")
    width = class_bucket(max(1, max(len(t) for t in text_embeds)))
    dims = text_embeds[0].shape[-1]
    canvases = np.zeros((batch, tta.canvas_size, tta.canvas_size, 3), np.uint8)
    content_hw = np.ones((batch, 2), np.int32)
    padded = np.zeros((batch, width, dims), np.float32)
    class_mask = np.zeros((batch, width), bool)
    content = []
    for i, (image, embeds) in enumerate(zip(images, text_embeds)):
        canvases[i], hw = tta_lib.prepare_canvas(image, tta)
        content_hw[i] = hw
        content.append(hw)
        padded[i, :len(embeds)], class_mask[i, :len(embeds)] = embeds, True
    return (canvases, content_hw, padded, class_mask), content


def unpack_batch(outputs, content: Sequence[tuple[int, int]], images: Sequence[np.ndarray],
                 num_classes: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image ``(scores [K_i, H, W] float32 in [0, 1], features [gh, gw, P])`` from the
    host copy of :func:`tta_program`'s outputs."""
    scores, features = outputs
    return [(tta_lib.finish(scores[i, :num_classes[i]], content[i], images[i].shape[:2]),
             features[i]) for i in range(len(images))]


def place(inputs, mesh: Mesh):
    """Splits a batch's arrays over the ``"data"`` axis of ``mesh`` (their leading axis, a
    multiple of the mesh size)."""
    if inputs[0].shape[0] % mesh.size:
        raise ValueError(f"batch size {inputs[0].shape[0]} must be a multiple of the "
                         f"{mesh.size} devices")
    return jax.device_put(inputs, NamedSharding(mesh, PartitionSpec("data")))


def replicate(params: Params, mesh: Mesh) -> Params:
    """The parameters copied to every device of ``mesh``."""
    return jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
