"""Refinement: coarse per-label relevance maps -> a label mask that follows object boundaries.

Two parts: everything before the cut runs in one compiled JAX program
(:mod:`jaxseg.refinement.unaries`: edge-aware smoothing of the maps, pseudo-labels at each
image's own levels, test-time distillation of a per-pixel classifier, its probabilities
mixed with the maps' own), on the accelerator in dataset runs; the host then runs
:func:`graph_cut` (a multi-label Potts energy, unaries ``-log p``, contrast-sensitive
pairwise term on the 8-connected grid, minimised by alpha-expansion, each move a max-flow
cut computed by PyMaxflow) and upsamples the labels (:func:`cut_unaries`).

:func:`refine` chains both for one image (the stage's orchestrator, ``jaxseg.refine``).
The stage is independent of CLIP: it sees an image, K score maps and optionally dense
features.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import numpy as np

from jaxseg.imaging import resize_image, resize_maps
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.graphcut import alpha_expansion
from jaxseg.refinement.unaries import image_unaries

# refine() pads an image's refinement size up to a multiple of this, so that images of
# similar sizes share one compiled program.
_CANVAS_STEP = 64


def graph_cut(image: np.ndarray, probabilities: np.ndarray,
              config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Labels minimising a contrast-sensitive Potts energy by alpha-expansion.

    ``E(f) = sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]`` on the 8-connected
    grid, ``w_pq`` as in GrabCut (see ``jaxseg.refinement.graphcut.grid_edges``). Starting from the
    per-pixel argmax, each label in turn is expanded by an optimal max-flow move
    (PyMaxflow), for at most ``max_cycles`` sweeps or until a sweep changes nothing.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image (sets the pairwise contrast).
      probabilities: float ``[L, H, W]`` per-pixel label probabilities.
      config: ``pairwise_weight`` and ``max_cycles``.

    Returns:
      int32 ``[H, W]`` labels in ``0 .. L - 1``.
    """
    return alpha_expansion(image, probabilities, config.pairwise_weight, config.max_cycles,
                           config.move_margin)


def validate_inputs(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None,
                    caller: str = "refine") -> None:
    """Raises ValueError, naming ``caller`` and the input, unless ``image`` is uint8
    ``[H, W, 3]``, ``scores`` float ``[K, H, W]`` of the same (H, W) and ``features`` None
    or float ``[h, w, C]``, all finite."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{caller}: image must be uint8 [H, W, 3] RGB, got {image.dtype} "
                         f"{image.shape}; convert it with jaxseg.imaging.as_rgb_uint8")
    if scores.ndim != 3 or scores.shape[1:] != image.shape[:2]:
        raise ValueError(f"{caller}: scores must be float [K, H, W] with (H, W) = {image.shape[:2]} "
                         f"of the image, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"{caller}: scores must be a float array in [0, 1], got dtype {scores.dtype}")
    if features is not None and (features.ndim != 3 or not np.issubdtype(features.dtype, np.floating)
                                 or features.size == 0):
        raise ValueError(f"{caller}: features must be non-empty float [h, w, C] or None, got "
                         f"{features.dtype} {features.shape}")
    # A NaN or infinite map would otherwise be rescaled to nothing and come back as all
    # background, hiding the fault upstream (e.g. a float16 relevance that overflowed).
    # Checked in float32, the stage's precision: a float64 value beyond its range is inf.
    for name, array in (("scores", scores), ("features", features)):
        if array is None:
            continue
        with np.errstate(over="ignore"):
            finite = np.isfinite(array.astype(np.float32, copy=False))
        if not finite.all():
            raise ValueError(f"{caller}: {name} hold {array.size - finite.sum()} NaN or infinite "
                             f"values (in float32); pass finite {name} (compute them in float32 "
                             f"if float16 overflowed)")


def _resize_labels(labels: np.ndarray, small_image: np.ndarray, image: np.ndarray,
                   colour_range: float) -> np.ndarray:
    """Resizes ``[h, w]`` labels of ``small_image`` to the ``[H, W, 3]`` image along its edges.

    "Small" is the refinement grid, which is larger than the image when the image was
    enlarged (then this is a label-preserving downsampling by the same rule).

    A pixel whose four bilinear taps in the small grid (pixel centres aligned) share a
    label keeps it; a pixel where they differ takes, among the taps' labels, the one with
    the most votes of the 4 x 4 small pixels around it, each vote weighed by distance
    (Gaussian, one small pixel) and by colour similarity to the full-size pixel (Gaussian,
    ``colour_range`` in RGB units): joint bilateral upsampling (Kopf et al., SIGGRAPH
    2007), which puts the boundary on the full-size colour edge. Only that band of pixels
    costs more than a look-up.
    """
    height, width = image.shape[:2]
    small_h, small_w = labels.shape

    def axis(out_size, in_size):
        source = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        base = np.floor(source).astype(int)
        return source, base, np.clip(base, 0, in_size - 1), np.clip(base + 1, 0, in_size - 1)

    source_y, base_y, y0, y1 = axis(height, small_h)
    source_x, base_x, x0, x1 = axis(width, small_w)
    taps = np.stack([labels[y0][:, x0], labels[y0][:, x1], labels[y1][:, x0], labels[y1][:, x1]])
    upsampled = taps[0].reshape(-1)
    band = np.flatnonzero((taps != taps[:1]).any(axis=0))
    if len(band):
        rows, cols = np.divmod(band, width)
        count = int(labels.max()) + 1
        candidates = np.zeros((count, len(band)), bool)
        for tap in taps.reshape(4, -1)[:, band]:
            candidates[tap, np.arange(len(band))] = True
        colour = image.reshape(-1, 3)[band].astype(np.float32)
        small_colour = small_image.astype(np.float32)
        votes = np.zeros((count, len(band)), np.float32)
        for offset_y in (-1, 0, 1, 2):
            near_y = np.clip(base_y[rows] + offset_y, 0, small_h - 1)
            for offset_x in (-1, 0, 1, 2):
                near_x = np.clip(base_x[cols] + offset_x, 0, small_w - 1)
                colour_step = ((small_colour[near_y, near_x] - colour) ** 2).sum(axis=1)
                weight = np.exp(-0.5 * ((source_y[rows] - near_y) ** 2 + (source_x[cols] - near_x) ** 2)
                                - colour_step / (2 * colour_range ** 2))
                votes[labels[near_y, near_x], np.arange(len(band))] += weight
        upsampled[band] = np.where(candidates, votes + 1e-12, 0.0).argmax(axis=0)
    return upsampled.reshape(height, width).astype(np.int32)


def refinement_size(height: int, width: int, config: RefineConfig) -> tuple[int, int]:
    """(h, w) the stage works at: the image's size scaled to a ``long_side`` long side.

    Small images are enlarged as large ones are shrunk: the graph cut's pairwise term
    weighs an object's outline (pixels along it) against its area (pixels in it), so at
    a smaller size it would erase what it keeps at a larger one (64 px images refined at
    their own size lost 2.1 mean mIoU over the recipe family to the same images refined
    at 192 px; a textureless image under ~96 px came back empty).
    """
    scale = config.long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


class Canvas(NamedTuple):
    """One image laid out for the unaries program (:func:`lay_on_canvas`).

    Attributes:
      image: uint8 ``[Hc, Wc, 3]`` the image at refinement size, at the top left.
      maps: float32 ``[L, Hc, Wc]`` its K maps likewise, L = K rounded up to a power of
        two; maps K .. L - 1 are zero.
      size_hw: int32 ``[2]`` the refinement size (h, w).
      label_mask: bool ``[L]`` True for the K real labels.
    """

    image: np.ndarray
    maps: np.ndarray
    size_hw: np.ndarray
    label_mask: np.ndarray


def lay_on_canvas(image: np.ndarray, scores: np.ndarray, config: RefineConfig) -> Canvas:
    """Resizes an image and its maps to the refinement size and lays them on a canvas.

    The canvas is padded to a multiple of 64 pixels and the labels to a power of two, so
    that images of similar sizes and label counts share one compiled program.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` relevance maps, K >= 1.
      config: ``long_side``, the refinement size's long side.

    Returns:
      The :class:`Canvas`.
    """
    num_labels = scores.shape[0]
    small_hw = refinement_size(*image.shape[:2], config)
    canvas_hw = tuple(-(-side // _CANVAS_STEP) * _CANVAS_STEP for side in small_hw)
    padded_labels = 1 << (num_labels - 1).bit_length()
    canvas = np.zeros(canvas_hw + (3,), np.uint8)
    canvas[:small_hw[0], :small_hw[1]] = resize_image(image, small_hw)
    maps = np.zeros((padded_labels,) + canvas_hw, np.float32)
    maps[:num_labels, :small_hw[0], :small_hw[1]] = resize_maps(scores, small_hw)
    return Canvas(canvas, maps, np.array(small_hw, np.int32),
                  np.arange(padded_labels) < num_labels)


def lay_batch(images: Sequence[np.ndarray], batch_size: int,
              config: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Images resized to the refinement size on ``long_side`` square canvases, the input of
    :func:`jaxseg.refinement.unaries.batch_unaries`.

    Args:
      images: uint8 ``[H, W, 3]`` RGB images, at most ``batch_size``.
      batch_size: the batch's size (the rest is padding).
      config: ``long_side``.

    Returns:
      uint8 ``[batch_size, S, S, 3]`` canvases (S = ``long_side``), each image at the top
      left, and int32 ``[batch_size, 2]`` the refinement sizes (1 x 1 for padding).
    """
    canvases = np.zeros((batch_size, config.long_side, config.long_side, 3), np.uint8)
    size_hw = np.ones((batch_size, 2), np.int32)
    for i, image in enumerate(images):
        size_hw[i] = height, width = refinement_size(*image.shape[:2], config)
        canvases[i, :height, :width] = resize_image(image, (height, width))
    return canvases, size_hw


def cut_unaries(image: np.ndarray, unaries: np.ndarray, config: RefineConfig = RefineConfig()
                ) -> np.ndarray:
    """The host part of refinement: graph cut at refinement size, labels resized.

    The labels are resized to the image along its edges (joint bilateral upsampling,
    ``upsample_colour``; see ``_resize_labels``).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      unaries: float ``[K + 1, h, w]`` probabilities at the refinement size
        (:func:`refinement_size`) from :func:`jaxseg.refinement.unaries.image_unaries`.
      config: the refinement settings.

    Returns:
      int32 ``[H, W]``: 0 background, k the k-th label (1-based).

    Raises:
      ValueError: when ``unaries`` is None (an empty mask would hide the mistake).
    """
    if unaries is None:
        raise ValueError("cut_unaries: no unaries to cut; a device output made with "
                         "unaries=False or in another refine mode has none, so compute it "
                         "with a Segmenter in graphcut mode")
    height, width = image.shape[:2]
    small_hw = unaries.shape[1:]
    unaries = np.asarray(unaries, np.float32)
    small_image = resize_image(image, small_hw)
    labels = graph_cut(small_image, unaries, config)
    if small_hw == (height, width):
        return labels
    return _resize_labels(labels, small_image, image, config.upsample_colour)


# One compiled program per config, canvas and label bucket (it holds no model).
_image_unaries = jax.jit(image_unaries, static_argnames=("config",))


def refine(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None = None,
           config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Turns coarse relevance maps into a label mask that follows object boundaries.

    Image and scores are resized to the refinement size (:func:`refinement_size`,
    ``long_side`` long), the unaries computed by one compiled program
    (:func:`jaxseg.refinement.unaries.image_unaries` on the canvas of
    :func:`lay_on_canvas`, which similar images share), then cut and upsampled on the host
    (:func:`cut_unaries`).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` relevance in [0, 1], one map per label.
      features: optional float ``[h, w, C]`` dense features (e.g. CLIP patch tokens).
      config: the refinement settings.

    Returns:
      int32 ``[H, W]``: 0 background, k the k-th label (1-based).

    Raises:
      ValueError: when an input's shape or dtype does not match, or scores or features
        hold NaN or infinite values.
    """
    image, scores = np.asarray(image), np.asarray(scores)
    features = None if features is None else np.asarray(features, np.float32)
    validate_inputs(image, scores, features)
    height, width = image.shape[:2]
    num_labels = scores.shape[0]
    if num_labels == 0:
        return np.zeros((height, width), np.int32)
    laid = lay_on_canvas(image, scores, config)
    grid = None if features is None else np.array(features.shape[:2], np.int32)
    unaries = _image_unaries(laid.image, laid.size_hw, laid.maps, laid.label_mask, features, grid,
                             config)
    small_h, small_w = laid.size_hw
    return cut_unaries(image, np.asarray(unaries)[:num_labels + 1, :small_h, :small_w], config)
