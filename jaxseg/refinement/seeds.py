"""Reading the coarse maps: confident pixels (pseudo-labels) and per-pixel probabilities.

Thresholds are relative: each map is first rescaled to [0, 1] by its own minimum and
maximum (:func:`normalize_scores`).
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


def pseudo_labels(scores: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Confident pixels of the coarse maps.

    Args:
      scores: float ``[K, H, W]`` relevance maps, one per label.
      config: ``fg_threshold``, ``bg_threshold`` (relative to each map's range) and
        ``background_margin``.

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
    labels[top >= config.fg_threshold] = relative.argmax(axis=0)[top >= config.fg_threshold] + 1
    radius = round(config.background_margin * min(top.shape))
    labels[scipy.ndimage.maximum_filter(top, size=2 * radius + 1) <= config.bg_threshold] = 0
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

    A softmax with temperature ``score_temperature`` over ``[background_score,
    rescaled scores]``; its argmax is the thresholded argmax of the maps.
    """
    relative = normalize_scores(scores)
    background = np.full((1,) + relative.shape[1:], config.background_score, np.float32)
    logits = np.concatenate([background, relative]) / config.score_temperature
    logits -= logits.max(axis=0, keepdims=True)
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=0, keepdims=True)).astype(np.float32)
