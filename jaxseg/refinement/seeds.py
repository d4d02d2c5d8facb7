"""Reading the coarse maps: confident pixels (pseudo-labels) and per-pixel probabilities.

Each map is first rescaled to [0, 1] by its own minimum and maximum
(:func:`normalize_scores`); thresholds are placed relative to the image's own levels
(:func:`image_levels`, see ``RefineConfig``).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

from jaxseg.refinement.config import RefineConfig


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Rescales each map of ``[K, H, W]`` scores to [0, 1] by its own range (flat maps -> 0)."""
    scores = np.asarray(scores, np.float32)
    low = scores.min(axis=(1, 2), keepdims=True)
    span = scores.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 1e-6, (scores - low) / np.maximum(span, 1e-6), 0.0).astype(np.float32)


def otsu_levels(values: np.ndarray, bins: int = 256) -> tuple[float, float, float]:
    """Otsu's split of values in [0, 1]: (threshold, mean below it, mean above it)."""
    histogram = np.bincount(np.minimum((np.ravel(values) * bins).astype(np.int64), bins - 1),
                            minlength=bins).astype(np.float64)
    centres = (np.arange(bins) + 0.5) / bins
    weight = np.cumsum(histogram)[:-1]
    total = histogram.sum()
    mass = np.cumsum(histogram * centres)
    below, above = weight, total - weight
    valid = (below > 0) & (above > 0)
    if not valid.any():
        return 0.5, 0.0, 1.0
    mean_below = mass[:-1] / np.maximum(below, 1)
    mean_above = (mass[-1] - mass[:-1]) / np.maximum(above, 1)
    cut = int(np.argmax(np.where(valid, below * above * (mean_below - mean_above) ** 2, -1.0)))
    return (cut + 1) / bins, float(mean_below[cut]), float(mean_above[cut])


def image_levels(relative: np.ndarray, config: RefineConfig) -> tuple[float, float, float]:
    """(theta, mu_bg, mu_fg): Otsu's split of the best of the rescaled ``[K, H, W]`` maps
    at each pixel (``threshold_rule`` "otsu"), or (0, 0, 1) for the "fixed" rule."""
    if config.threshold_rule == "fixed" or relative.shape[0] == 0:
        return 0.0, 0.0, 1.0
    return otsu_levels(relative.max(axis=0))


def pseudo_labels(scores: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Confident pixels of the coarse maps.

    Args:
      scores: float ``[K, H, W]`` relevance maps, one per label.
      config: ``threshold_rule``, ``fg_threshold``, ``bg_threshold`` and
        ``background_margin`` (see ``RefineConfig``).

    Returns:
      int32 ``[H, W]``: k >= 1 confident label k (1-based), 0 confident background,
      -1 unknown (not used for training).
    """
    relative = normalize_scores(scores)
    labels = np.full(relative.shape[1:], -1, np.int32)
    if relative.shape[0] == 0:
        labels[:] = 0
        return labels
    top = relative.max(axis=0)
    radius = round(config.background_margin * min(top.shape))
    theta, low, high = image_levels(relative, config)
    if config.threshold_rule == "otsu":
        fg_cut = theta + config.fg_threshold * (high - theta)
        bg_cut = low + config.bg_threshold * (theta - low)
        local = scipy.ndimage.uniform_filter(top, size=2 * radius + 1)
    else:
        fg_cut, bg_cut, local = config.fg_threshold, config.bg_threshold, top
    labels[top >= fg_cut] = relative.argmax(axis=0)[top >= fg_cut] + 1
    labels[scipy.ndimage.maximum_filter(local, size=2 * radius + 1) <= bg_cut] = 0
    return labels


def reestimation_seeds(labels: np.ndarray, pseudo: np.ndarray,
                       config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Training pixels of a re-estimation round (see ``RefineConfig.reestimation_rounds``).

    Args:
      labels: int ``[H, W]`` labels of the last cut (0 background, k label k).
      pseudo: int32 ``[H, W]`` pseudo-labels of the maps (-1 unknown).
      config: ``reestimation_band``.

    Returns:
      int32 ``[H, W]``: the cut's label wherever no other label lies within
      ``reestimation_band`` (square neighbourhood), -1 elsewhere; the confident pixels of
      ``pseudo`` keep their pseudo-label.
    """
    radius = max(1, round(config.reestimation_band * max(labels.shape)))
    size = 2 * radius + 1
    near_boundary = (scipy.ndimage.maximum_filter(labels, size=size)
                     != scipy.ndimage.minimum_filter(labels, size=size))
    seeds = np.where(near_boundary, -1, labels).astype(np.int32)
    return np.where(pseudo >= 0, pseudo, seeds).astype(np.int32)


def score_probabilities(scores: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Probabilities ``[K + 1, H, W]`` (background first) read directly off the coarse maps.

    A softmax over ``[background, rescaled scores]`` with the background at
    ``background_score`` and temperature ``score_temperature``, both relative to the
    image's levels under the "otsu" rule (see ``RefineConfig``); its argmax is the
    thresholded argmax of the maps.
    """
    relative = normalize_scores(scores)
    # The fixed rule's levels (0, 0, 1) leave both settings as they are.
    theta, low, high = image_levels(relative, config)
    temperature = config.score_temperature * (high - low)
    background = np.full((1,) + relative.shape[1:], theta + config.background_score, np.float32)
    logits = np.concatenate([background, relative]) / max(temperature, 1e-3)
    logits -= logits.max(axis=0, keepdims=True)
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=0, keepdims=True)).astype(np.float32)
