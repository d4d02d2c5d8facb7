"""Native views: one view of the whole image at about its own resolution (CLIP-ES, NACLIP).

The host resizes each image by the method's rule (:func:`view_size`) and puts the view at
the top-left of a padded array whose patch grid is rounded up to a multiple of
``grid_bucket``; the view's real patch grid travels with it, padded tokens are masked out
of attention, and the position embeddings are resized to the real grid inside the program,
so images of different sizes share a compiled program. :func:`native_program` then maps the
grid to the image's own size (bilinear, align_corners=False, no antialiasing, as both
authors' code does; NACLIP through the view size, in two steps), optionally refines the
maps with PAMR guided by the view, and scores them (``jaxseg.maps.scoring``), all on a
padded image-size canvas; the host only crops it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxseg.checks import check_numbers
from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.preprocess import normalize
from jaxseg.clip.vision import bilinear_matrix, traced_bilinear_matrix
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.methods import finite_views, mark_broken, method_maps, normalise_maps
from jaxseg.maps.pamr import pamr
from jaxseg.maps.scoring import ScoreConfig, score_maps

Params = Any


@dataclasses.dataclass(frozen=True)
class NativeConfig:
    """How an image becomes its native view (hashable).

    Attributes:
      resize: ``"ceil"``: each side rounded up to a multiple of the patch, PIL bicubic
        (CLIP-ES); ``"short_side"``: aspect kept, short side ``short_side`` unless the long
        side would pass ``max_long``, bilinear without antialiasing, and the patch grid
        floored (NACLIP, mmcv's rescale rule).
      short_side: the view's short side for ``"short_side"`` (NACLIP: 336).
      max_long: the long-side cap of ``"short_side"`` (mmcv: 2048).
      max_side: images whose view would be longer than this are first shrunk to it (an
        attention over thousands of tokens would not fit; VOC and COCO never reach it).
      two_step: maps go grid -> view size -> image size in two bilinear steps (NACLIP)
        instead of one (CLIP-ES).
      grid_bucket: padded grids are multiples of this many patches per side.
      canvas_bucket: padded image-size canvases are multiples of this many pixels.
    """

    resize: str = "ceil"
    short_side: int = 336
    max_long: int = 2048
    max_side: int = 1024
    two_step: bool = False
    grid_bucket: int = 8
    canvas_bucket: int = 128

    def __post_init__(self):
        check_numbers(self)
        if self.resize not in ("ceil", "short_side"):
            raise ValueError(f"NativeConfig.resize must be 'ceil' or 'short_side', got "
                             f"{self.resize!r}")
        if min(self.short_side, self.max_long, self.max_side, self.grid_bucket,
               self.canvas_bucket) < 1:
            raise ValueError("NativeConfig sizes must be positive")


def view_size(height: int, width: int, patch: int, config: NativeConfig) -> tuple[int, int]:
    """The view's ``(h, w)`` in pixels for an ``height x width`` image."""
    scale = min(1.0, config.max_side / max(height, width))
    if config.resize == "ceil":
        return (math.ceil(height * scale / patch) * patch, math.ceil(width * scale / patch) * patch)
    factor = min(config.max_long / max(height, width), config.short_side / min(height, width),
                 config.max_side / max(height, width))
    return max(patch, int(height * factor + 0.5)), max(patch, int(width * factor + 0.5))


def make_view(image: np.ndarray, size_hw: tuple[int, int], config: NativeConfig) -> np.ndarray:
    """uint8 ``[h, w, 3]`` view: PIL bicubic (``"ceil"``), or bilinear without antialiasing,
    rounded to uint8 (``"short_side"``, as OpenCV's INTER_LINEAR)."""
    if image.shape[:2] == tuple(size_hw):
        return image
    if config.resize == "ceil":
        return np.asarray(Image.fromarray(image).resize(size_hw[::-1], Image.BICUBIC))
    rows = bilinear_matrix(image.shape[0], size_hw[0])
    cols = bilinear_matrix(image.shape[1], size_hw[1])
    # optimize: without it a three-operand einsum loops over every pair of output and input
    # pixels (21 s for a 160 x 120 image) instead of two matrix products.
    resized = np.einsum("yi,ijc,xj->yxc", rows, image.astype(np.float32), cols, optimize=True)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def pack_native(images: Sequence[np.ndarray], queries: Sequence[np.ndarray],
                owners: Sequence[np.ndarray], patch: int, config: NativeConfig,
                batch_size: int, width: int):
    """Host arrays of :func:`native_program`.

    Args:
      images: uint8 ``[H, W, 3]`` images.
      queries: per image, ``[Q_i, P]`` query embeddings.
      owners: per image, int ``[Q_i]`` (see ``jaxseg.maps.scoring.score_maps``).
      patch: the model's patch size.
      config: the view rule.
      batch_size: pad the batch to this many images.
      width: pad the queries to this many.

    Returns:
      ``(views uint8 [B, Vh, Vw, 3], grid_hw [B, 2], view_hw [B, 2], image_hw [B, 2],
      queries [B, width, P] float32, owners [B, width] int32)``.
    """
    sizes = [view_size(*image.shape[:2], patch, config) for image in images]
    step = patch * config.grid_bucket
    view_h = _round_up(max(h for h, _ in sizes), step)
    view_w = _round_up(max(w for _, w in sizes), step)
    views = np.zeros((batch_size, view_h, view_w, 3), np.uint8)
    view_hw = np.full((batch_size, 2), patch, np.int32)
    image_hw = np.ones((batch_size, 2), np.int32)
    packed = np.zeros((batch_size, width, queries[0].shape[-1]), np.float32)
    owner = np.full((batch_size, width), -1, np.int32)
    for i, (image, size, embeds, own) in enumerate(zip(images, sizes, queries, owners)):
        views[i, :size[0], :size[1]] = make_view(image, size, config)
        view_hw[i], image_hw[i] = size, image.shape[:2]
        packed[i, :len(embeds)], owner[i, :len(own)] = embeds, own
    grid_hw = view_hw // patch
    return views, grid_hw, view_hw, image_hw, packed, owner


def canvas_shape(images: Sequence[np.ndarray], config: NativeConfig) -> tuple[int, int]:
    """The padded image-size canvas of a batch: its largest height and width, rounded up."""
    return (_round_up(max(image.shape[0] for image in images), config.canvas_bucket),
            _round_up(max(image.shape[1] for image in images), config.canvas_bucket))


def _to_image(values: jax.Array, source_hw: jax.Array, target_hw: jax.Array,
              out_shape: tuple[int, int], view_hw=None, view_shape=None) -> jax.Array:
    """``[C, h, w]`` values whose top-left ``source_hw`` is real, resized bilinearly to the
    top-left ``target_hw`` of an ``out_shape`` canvas; with ``view_hw`` in two steps, through
    that size (on a ``view_shape`` canvas): ``[C, *out_shape]``."""
    axes = []
    for axis in range(2):
        matrix = traced_bilinear_matrix(values.shape[1 + axis], out_shape[axis], target_hw[axis],
                                        source_hw[axis])
        if view_hw is not None:
            first = traced_bilinear_matrix(values.shape[1 + axis], view_shape[axis],
                                           view_hw[axis], source_hw[axis])
            second = traced_bilinear_matrix(view_shape[axis], out_shape[axis], target_hw[axis],
                                            view_hw[axis])
            matrix = jnp.matmul(second, first, precision=jax.lax.Precision.HIGHEST)
        axes.append(matrix)
    return jnp.einsum("yi,cij,xj->cyx", axes[0], values, axes[1],
                      precision=jax.lax.Precision.HIGHEST)


def native_program(params: Params, views: jax.Array, grid_hw: jax.Array, view_hw: jax.Array,
                   image_hw: jax.Array, queries: jax.Array, owner: jax.Array,
                   background: jax.Array, *, config: CLIPConfig, dtype,
                   relevance: RelevanceConfig, native: NativeConfig, scoring: ScoreConfig,
                   num_labels: int, out_shape: tuple[int, int]):
    """Pure native-view program: maps, image-size scores and dense features of a batch.

    Args:
      params: CLIP parameters.
      views, grid_hw, view_hw, image_hw, queries, owner: from :func:`pack_native`.
      background: ``[M, P]`` background-name embeddings of clip-es's softmax (M may be 0).
      config, dtype, relevance, native, scoring: static settings.
      num_labels: padded label count of the scores.
      out_shape: the padded image-size canvas ``(Hc, Wc)``.

    Returns:
      ``(scores [B, num_labels, Hc, Wc], background [B, Hc, Wc], features [B, gh, gw, P])``,
      real in each image's top-left ``image_hw``; NaN for an image whose maps are not
      finite (``methods.mark_broken``).
    """
    pixels = normalize(views.astype(jnp.float32) / 255.0).astype(jnp.float32)
    maps, features = method_maps(params, pixels, queries, config=config, dtype=dtype,
                                 relevance=relevance, class_mask=owner > 0,
                                 background_embeds=background if relevance.needs_background
                                 else None, grid_hw=grid_hw)
    finite = finite_views(maps, owner >= 0)
    if scoring.rule == "minmax":
        maps = normalise_maps(maps, grid_hw)

    def one_image(image_maps, pixels_i, grid, view, image, own):
        full = _to_image(image_maps, grid, image, out_shape,
                         view if native.two_step else None, views.shape[1:3])
        if scoring.pamr_steps:
            guide = _to_image(jnp.moveaxis(pixels_i, -1, 0), view, image, out_shape)
            full = pamr(guide, full, image, scoring.pamr_steps, scoring.pamr_dilations)
        return score_maps(full, own, num_labels, scoring)

    scores, backgrounds = jax.vmap(one_image)(maps, pixels, grid_hw, view_hw, image_hw, owner)
    return mark_broken(finite, scores, backgrounds, features)


def unpack_native(outputs, images: Sequence[np.ndarray], num_labels: Sequence[int]):
    """Per image ``(scores [K_i, H, W], background [H, W], features [gh, gw, P])`` from the
    host copy of :func:`native_program`'s outputs (``features`` cropped to the real grid
    by the caller, who knows it)."""
    scores, background, features = outputs
    return [(scores[i, :num_labels[i], :image.shape[0], :image.shape[1]],
             background[i, :image.shape[0], :image.shape[1]], features[i])
            for i, image in enumerate(images)]
