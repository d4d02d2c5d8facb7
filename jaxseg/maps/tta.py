"""Test-time augmentation geometry: variant boxes, cropping, and warping maps back.

One image is handled as follows:

1. ``prepare_canvas`` (host): resize so the long side equals ``canvas_size`` and put
   it at the top-left of a fixed square canvas. Every image becomes the same array
   shape, so nothing downstream recompiles for a new image size.
2. ``variant_boxes`` -> ``crop_variants`` -> (relevance, written elsewhere) ->
   ``warp_back``: one jit-able program with static ``TTAConfig`` and traced
   ``content_hw``. It yields ``[K, C, C]`` scores in ``[0, 1]`` on the canvas.
3. ``finish`` (host): crop the content region and resize to the image size.

Boxes are ``(y0, x0, y1, x1)`` in canvas pixels with pixel ``i`` spanning
``[i, i + 1)``; the content region is ``[0, h) x [0, w)``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxseg.checks import check_numbers, store_tuple
from jaxseg.clip.preprocess import normalize
from jaxseg.imaging import resize_image, resize_maps

# Box edges closer than this (canvas pixels) to the content border count as on it.
_BORDER_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation settings (hashable: usable as a static jit argument).

    The variant set is the full image resized to a square (no part cropped away,
    unlike CLIP's centre crop), its horizontal mirror, and a grid of overlapping
    crops per scale below 1. With the defaults that is 1 + 1 + 2 x 3 = 8 variants:
    crops at scale 0.6 are the smallest whose 2 rows still overlap by >= 25 %
    (a 2-across grid needs ``scale >= 1 / (2 - overlap)``), and on a 640 x 480
    COCO image they are seen at ~1.3x downsampling instead of ~2.9x for the full
    image, i.e. small objects get about 2.2x more CLIP pixels per side. A second
    smaller scale would need a 3 x 4 grid (12 more variants): 2.5x the cost.
    ``canvas_size`` 512 keeps those crops at >= 224 canvas pixels on 4:3 images,
    so the canvas does not cap their resolution (448 would: 202 pixels).

    Attributes:
      input_size: CLIP input side ``S`` of every variant.
      scales: crop sides relative to the image's short side, each in ``(0, 1]``.
        ``1.0`` is the full image (its whole content box squashed to ``S x S``).
        A scale ``s < 1`` gives square crops of side ``s * short_side`` on an
        evenly spaced grid that spans the image: ``n_short`` rows across the short
        side (the fewest that overlap by ``overlap``) times ``n_long`` across the
        long side (planned for an image of aspect ``grid_aspect``). For images more
        elongated than ``grid_aspect`` the crops widen along the long side just
        enough to keep the overlap, so the variant count never depends on the image.
      overlap: minimum overlap between neighbouring crops, as a fraction of the
        crop side, in ``[0, 1)``.
      grid_aspect: long/short image aspect (>= 1) for which the long-side crop
        count is chosen; 4/3 is the commonest photo (and COCO) aspect.
      flip: add a horizontally mirrored copy of the full image (needs 1.0 in
        ``scales``). Crops are not flipped: the crop grid is already mirror
        symmetric as a set, and flipping it would double the cost.
      canvas_size: side ``C`` of the fixed working canvas; the image's long side
        is resized to it.
      feather: fraction of a crop's side over which its weight ramps from 0 to 1
        inward from each crop edge that lies inside the image, so crop borders
        leave no seams in the averaged map. 0 gives a plain coverage mean.
    """

    input_size: int = 224
    scales: tuple[float, ...] = (1.0, 0.6)
    overlap: float = 0.25
    grid_aspect: float = 4 / 3
    flip: bool = True
    canvas_size: int = 512
    feather: float = 0.2

    def __post_init__(self):
        check_numbers(self)
        store_tuple(self, "scales", "float")
        if self.input_size < 1 or self.canvas_size < 1:
            raise ValueError(
                f"TTAConfig sizes must be positive, got input_size={self.input_size}, "
                f"canvas_size={self.canvas_size}")
        if not self.scales or len(set(self.scales)) != len(self.scales) or not all(
                0.0 < s <= 1.0 for s in self.scales):
            raise ValueError(
                f"TTAConfig.scales must be distinct values in (0, 1], got {self.scales}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"TTAConfig.overlap must be in [0, 1), got {self.overlap}")
        if self.grid_aspect < 1.0:
            raise ValueError(f"TTAConfig.grid_aspect must be >= 1, got {self.grid_aspect}")
        if self.flip and 1.0 not in self.scales:
            raise ValueError("TTAConfig.flip mirrors the full image: add 1.0 to scales or set "
                             "flip=False")
        if not 0.0 <= self.feather <= 0.5:
            raise ValueError(f"TTAConfig.feather must be in [0, 0.5], got {self.feather}")


def _grid_counts(scale: float, config: TTAConfig) -> tuple[int, int]:
    """Crops across the short and the long side for one scale below 1.

    Crops of side ``scale`` (short side = 1) spaced by ``step`` overlap by
    ``1 - step / scale``; ``n`` crops spanning a length ``L`` have
    ``step = (L - scale) / (n - 1)``, so the overlap holds when
    ``n >= 1 + (L - scale) / (scale * (1 - overlap))``.
    """
    max_step = scale * (1.0 - config.overlap)
    # The small epsilon keeps e.g. an exact 2.0 from rounding up to 3.
    n_short = math.ceil(1.0 + (1.0 - scale) / max_step - 1e-9)
    n_long = math.ceil(1.0 + (config.grid_aspect - scale) / max_step - 1e-9)
    return n_short, n_long


def num_variants(config: TTAConfig) -> int:
    """Number of variants ``V``; it depends on the config only."""
    full = (1 + int(config.flip)) if 1.0 in config.scales else 0
    crops = sum(math.prod(_grid_counts(s, config)) for s in config.scales if s < 1.0)
    return full + crops


def prepare_canvas(image: np.ndarray, config: TTAConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """Resizes an image onto the fixed canvas (host side).

    The long side becomes ``canvas_size`` (PIL bicubic, antialiased when
    shrinking, as CLIP's own preprocessing); the image sits at the top-left and
    the rest of the canvas repeats its last row and column, so resampling near
    the content border sees no artificial edge.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      config: TTA settings.

    Returns:
      ``(canvas, (h, w))``: uint8 ``[C, C, 3]`` canvas and the content size in it.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"TTA views need a non-empty uint8 [H, W, 3] RGB image, got "
                         f"{image.dtype} {image.shape}; convert it with "
                         f"jaxseg.imaging.as_rgb_uint8 (as jaxseg.segment does)")
    side = config.canvas_size
    height, width = image.shape[:2]
    ratio = side / max(height, width)
    content_h = min(side, max(1, round(height * ratio)))
    content_w = min(side, max(1, round(width * ratio)))
    resized = resize_image(image, (content_h, content_w), Image.BICUBIC)
    canvas = np.pad(resized, ((0, side - content_h), (0, side - content_w), (0, 0)), mode="edge")
    return canvas, (content_h, content_w)


def _axis_spans(length, side, count: int):
    """Starts and ends of ``count`` spans of ``side`` evenly spread over ``[0, length]``.

    Spans are placed symmetrically about the centre, so the set is its own
    mirror image (``length - end`` of one is the ``start`` of another).
    """
    if count == 1:
        offsets = jnp.zeros((1,), jnp.float32)
    else:
        offsets = (jnp.arange(count, dtype=jnp.float32) - (count - 1) / 2) * (
            (length - side) / (count - 1))
    centres = length / 2 + offsets
    return centres - side / 2, centres + side / 2


def variant_boxes(content_hw, config: TTAConfig) -> tuple[jax.Array, jax.Array]:
    """Variant crop boxes for a content region (traceable: ``content_hw`` may be traced).

    Args:
      content_hw: ``(h, w)`` content size on the canvas (ints or int array ``[2]``).
      config: TTA settings.

    Returns:
      ``(boxes, flips)``: float32 ``[V, 4]`` boxes ``(y0, x0, y1, x1)`` in canvas
      pixels and bool ``[V]`` horizontal-flip flags.
    """
    hw = jnp.asarray(content_hw, jnp.float32)
    height, width = hw[0], hw[1]
    boxes, flips = [], []
    if 1.0 in config.scales:
        full = jnp.stack([0.0, 0.0, height, width]).astype(jnp.float32)
        boxes += [full] * (1 + int(config.flip))
        flips += [False, True][:1 + int(config.flip)]
    landscape = width >= height
    short, long = jnp.minimum(height, width), jnp.maximum(height, width)
    for scale in config.scales:
        if scale == 1.0:
            continue
        n_short, n_long = _grid_counts(scale, config)
        crop_short = scale * short
        # Square crops unless the image is too elongated for n_long of them to
        # overlap: then widen them just enough, never beyond the image.
        needed = long / (n_long - (n_long - 1) * config.overlap)
        crop_long = jnp.minimum(long, jnp.maximum(crop_short, needed))
        short0, short1 = _axis_spans(short, crop_short, n_short)
        long0, long1 = _axis_spans(long, crop_long, n_long)
        s0, s1 = jnp.repeat(short0, n_long), jnp.repeat(short1, n_long)
        l0, l1 = jnp.tile(long0, n_short), jnp.tile(long1, n_short)
        boxes.append(jnp.where(landscape, jnp.stack([s0, l0, s1, l1], -1),
                               jnp.stack([l0, s0, l1, s1], -1)))
        flips += [False] * (n_short * n_long)
    boxes = jnp.concatenate([jnp.reshape(b, (-1, 4)) for b in boxes], axis=0)
    return boxes, jnp.asarray(flips, bool)


def crop_variants(canvas: jax.Array, boxes: jax.Array, flips: jax.Array,
                  input_size: int) -> jax.Array:
    """Resamples every box of the canvas to CLIP's input (JAX, jit-able).

    Args:
      canvas: uint8 ``[C, C, 3]`` canvas from ``prepare_canvas``.
      boxes: float32 ``[V, 4]`` boxes from ``variant_boxes``.
      flips: bool ``[V]``: mirror the crop horizontally.
      input_size: output side ``S``.

    Returns:
      float32 ``[V, S, S, 3]`` CLIP-normalised pixel values.
    """
    if canvas.ndim != 3 or canvas.shape[0] != canvas.shape[1] or canvas.shape[2] != 3:
        raise ValueError(f"crop_variants expects a square [C, C, 3] canvas, got {canvas.shape}")
    side = canvas.shape[0]
    # The antialiasing kernel reaches up to C / S pixels past a box edge.
    # scale_and_translate renormalises weights that fall off the array, while
    # the canvas repeats edge pixels beyond the content; padding every side the
    # same way makes left and right borders behave alike (exact flip symmetry).
    margin = math.ceil(side / input_size) + 1
    padded = jnp.pad(canvas.astype(jnp.float32) / 255.0,
                     ((margin, margin), (margin, margin), (0, 0)), mode="edge")

    def crop_one(box, flip):
        y0, x0, y1, x1 = box[0] + margin, box[1] + margin, box[2] + margin, box[3] + margin
        scale = jnp.stack([input_size / (y1 - y0), input_size / (x1 - x0)])
        out = jax.image.scale_and_translate(
            padded, (input_size, input_size, 3), (0, 1), scale,
            jnp.stack([-y0, -x0]) * scale, method="linear", antialias=True)
        return jnp.where(flip, out[:, ::-1], out)

    return normalize(jax.vmap(crop_one)(boxes, flips)).astype(jnp.float32)


def _box_to_canvas(start, end, cells: int, side: int):
    """Bilinear weights from a box's map cells to canvas pixels along one axis.

    Returns ``[V, side, cells]`` interpolation weights (edge cells extended to
    the box border; antialiased when the box is smaller than the grid).
    """
    centres = jnp.arange(side, dtype=jnp.float32) + 0.5
    length = (end - start)[:, None]
    cell_pos = jnp.clip((centres[None, :] - start[:, None]) * cells / length - 0.5,
                        0.0, cells - 1.0)
    radius = jnp.maximum(1.0, cells / length)[..., None]
    weights = jnp.maximum(
        0.0, 1.0 - jnp.abs(cell_pos[..., None] - jnp.arange(cells, dtype=jnp.float32)) / radius)
    return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _box_weights(start, end, centres, content_len, feather: float):
    """Weight ``[V, side]`` of each variant at each canvas pixel along one axis.

    Zero outside the box; inside, it ramps up over ``feather * box side`` from
    box edges that lie inside the content (edges on the content border need no
    blending, every variant ends there).
    """
    start, end = start[:, None], end[:, None]
    inside = (centres > start) & (centres < end)
    if feather == 0.0:
        return inside.astype(jnp.float32)
    ramp_len = feather * (end - start)
    from_start = jnp.where(start <= _BORDER_TOLERANCE, 1.0, (centres - start) / ramp_len)
    to_end = jnp.where(end >= content_len - _BORDER_TOLERANCE, 1.0, (end - centres) / ramp_len)
    return jnp.where(inside, jnp.clip(jnp.minimum(from_start, to_end), 0.0, 1.0), 0.0)


def coverage_weights(boxes: jax.Array, content_hw,
                     config: TTAConfig) -> tuple[jax.Array, jax.Array]:
    """Separable per-variant weights on the canvas: weight(v, y, x) = wy[v, y] * wx[v, x].

    Args:
      boxes: float32 ``[V, 4]`` boxes.
      content_hw: ``(h, w)`` content size on the canvas.
      config: TTA settings (``canvas_size``, ``feather``).

    Returns:
      ``(wy, wx)``: float32 ``[V, C]`` each; zero where a variant did not see the pixel.
    """
    hw = jnp.asarray(content_hw, jnp.float32)
    centres = jnp.arange(config.canvas_size, dtype=jnp.float32) + 0.5
    wy = _box_weights(boxes[:, 0], boxes[:, 2], centres, hw[0], config.feather)
    wx = _box_weights(boxes[:, 1], boxes[:, 3], centres, hw[1], config.feather)
    return wy, wx


def warp_back(maps: jax.Array, boxes: jax.Array, flips: jax.Array, content_hw,
              config: TTAConfig, normalise: bool = True) -> jax.Array:
    """Combines per-variant maps on the canvas (JAX, jit-able).

    Each map is unflipped, resampled bilinearly into its box, and averaged with
    the other variants that saw the pixel (weights from ``coverage_weights``).
    Pixels outside the content are 0; with ``normalise``, each class is min-max
    normalised to ``[0, 1]`` over the content (a constant class map, up to float32
    rounding, becomes 0).

    Args:
      maps: float ``[V, K, gh, gw]`` relevance of each variant on its patch grid.
      boxes: float32 ``[V, 4]`` boxes from ``variant_boxes``.
      flips: bool ``[V]``: the variant was mirrored before relevance.
      content_hw: ``(h, w)`` content size on the canvas.
      config: TTA settings (``canvas_size``, ``feather``).
      normalise: min-max normalise each class (else the weighted mean itself).

    Returns:
      float32 ``[K, C, C]`` scores (in ``[0, 1]`` with ``normalise``).
    """
    if maps.ndim != 4 or maps.shape[0] != boxes.shape[0]:
        raise ValueError(f"warp_back expects maps [V, K, gh, gw] with V={boxes.shape[0]} "
                         f"boxes, got {maps.shape}")
    maps = jnp.where(flips[:, None, None, None], maps[..., ::-1], maps).astype(jnp.float32)
    side = config.canvas_size
    interp_y = _box_to_canvas(boxes[:, 0], boxes[:, 2], maps.shape[2], side)
    interp_x = _box_to_canvas(boxes[:, 1], boxes[:, 3], maps.shape[3], side)
    wy, wx = coverage_weights(boxes, content_hw, config)
    # Folding the weights into the separable interpolation avoids a [V, K, C, C] buffer.
    total = jnp.einsum("vyi,vkij,vxj->kyx", interp_y * wy[..., None], maps,
                       interp_x * wx[..., None], precision=jax.lax.Precision.HIGHEST)
    weight_sum = jnp.einsum("vy,vx->yx", wy, wx)
    hw = jnp.asarray(content_hw)
    centres = jnp.arange(side)
    content = (centres[:, None] < hw[0]) & (centres[None, :] < hw[1]) & (weight_sum > 0)
    mean = jnp.where(content, total / jnp.where(content, weight_sum, 1.0), 0.0)
    if not normalise:
        return mean
    low = jnp.min(jnp.where(content, mean, jnp.inf), axis=(1, 2), keepdims=True)
    high = jnp.max(jnp.where(content, mean, -jnp.inf), axis=(1, 2), keepdims=True)
    spread = high - low
    # A spread at float32 rounding level means a constant map: no information.
    informative = spread > 1e-5 * jnp.maximum(jnp.abs(low), jnp.abs(high))
    scaled = jnp.where(informative, (mean - low) / jnp.where(informative, spread, 1.0), 0.0)
    return jnp.where(content, scaled, 0.0)


def finish(scores_canvas: np.ndarray, content_hw: tuple[int, int],
           image_hw: tuple[int, int]) -> np.ndarray:
    """Crops the content from canvas scores and resizes to the image (host side).

    Args:
      scores_canvas: ``[K, C, C]`` scores from ``warp_back``.
      content_hw: ``(h, w)`` from ``prepare_canvas``.
      image_hw: original image ``(H, W)``.

    Returns:
      float32 ``[K, H, W]`` scores (bilinear, antialiased when shrinking; stays in
      the input's range since the filter weights are positive).
    """
    scores_canvas = np.asarray(scores_canvas, np.float32)
    content_h, content_w = content_hw
    if (scores_canvas.ndim != 3 or content_h > scores_canvas.shape[1]
            or content_w > scores_canvas.shape[2]):
        raise ValueError(f"finish expects [K, C, C] scores holding the content {content_hw}, got "
                         f"{scores_canvas.shape}")
    return resize_maps(scores_canvas[:, :content_h, :content_w], image_hw)
