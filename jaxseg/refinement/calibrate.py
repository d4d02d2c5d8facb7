"""Levels calibrated on a dataset's maps: every image read at the same levels.

By default the stage reads each image at its own levels, Otsu's split of its best map
(``RefineConfig.threshold_rule`` "otsu"). Maps made by one method on one dataset put the
object/background boundary at similar rescaled scores from image to image, and one
image's Otsu split scatters around that (standard deviation 0.05-0.09 of the rescaled
range per recipe of ``scripts/refine_recipes.py``), while different methods' boundaries
lie far apart (median split 0.31 for sparse gradient relevance, 0.50 for dense CLIP
similarities). When many images of one kind are refined, as in a dataset run, the median
of their Otsu levels is a steadier reading than each image's own and still follows the
method: :func:`calibrate_levels` turns a sample's levels into a ``RefineConfig`` with
``threshold_rule="dataset"``. On the recipes of ``scripts/eval_refine.py`` this gained 3.0
mIoU on the mean of the six main ones (on which the background score 0.08 was chosen)
and lost 0.4 on the mean of the two held-out ones (BENCHMARKS.md, issue 14), so the
stage's default stays each image's own levels.

Calibration reads only the maps (no labels or masks), so it can run on the very images
being refined; a sample of about 30 images is enough (see :func:`calibrate_levels`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import lay_on_canvas
from jaxseg.refinement.unaries import read_maps

# Where the background competes under calibrated levels (``RefineConfig.background_score``,
# relative to the median theta): the best on the mean over the six recipes of
# scripts/refine_recipes.py among 0, 0.04, 0.08, 0.12 and 0.16 (every second coco-dev
# image); leave-one-recipe-out picks 0.08 or 0.12 (BENCHMARKS.md).
DATASET_BACKGROUND_SCORE = 0.08


def _otsu_levels(image, size_hw, scores, label_mask, config):
    return jnp.stack(read_maps(image, size_hw, scores, label_mask, config)[1])


# One compiled program per config, canvas and label bucket (it holds no model).
_levels_program = jax.jit(_otsu_levels, static_argnames=("config",))


def map_levels(image: np.ndarray, scores: np.ndarray,
               config: RefineConfig = RefineConfig()) -> np.ndarray:
    """One image's own levels, as the stage's "otsu" rule reads its maps.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` relevance maps, K >= 1.
      config: the refinement settings (smoothing, ``max_size``); its rule is ignored.

    Returns:
      float64 ``[3]``: (theta, mu_bg, mu_fg) of the smoothed, rescaled maps.
    """
    config = dataclasses.replace(config, threshold_rule="otsu")
    laid = lay_on_canvas(np.asarray(image), np.asarray(scores), config)
    levels = _levels_program(laid.image, laid.size_hw, laid.maps, laid.label_mask, config)
    return np.asarray(jax.device_get(levels), np.float64)


def calibrate_levels(levels: Iterable[np.ndarray], config: RefineConfig = RefineConfig(),
                     background_score: float = DATASET_BACKGROUND_SCORE) -> RefineConfig:
    """The settings that read every image at the median of a sample's levels.

    The median of each level over the sample; on the recipes of coco-dev its standard
    deviation over random samples of 32 images was 0.006-0.025 of the rescaled range,
    about a fifth of one image's (16 images: 0.010-0.037).

    Args:
      levels: :func:`map_levels` of a sample of the images to refine, float ``[3]`` each.
      config: the other settings, kept.
      background_score: ``RefineConfig.background_score`` under the calibrated levels.

    Returns:
      ``config`` with ``threshold_rule="dataset"``, ``levels`` the medians (Python
      floats, so the config stays hashable) and ``background_score``.

    Raises:
      ValueError: when ``levels`` is empty or not ``[N, 3]``.
    """
    sample = np.asarray(list(levels), np.float64)
    if sample.ndim != 2 or sample.shape[0] == 0 or sample.shape[1] != 3:
        raise ValueError(f"calibrate_levels: levels must be a non-empty list of (theta, mu_bg, "
                         f"mu_fg) from map_levels, got shape {sample.shape}")
    theta, low, high = (float(value) for value in np.median(sample, axis=0))
    return dataclasses.replace(config, threshold_rule="dataset", levels=(theta, low, high),
                               background_score=background_score)
