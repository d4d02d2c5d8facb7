"""Levels calibrated on a dataset's maps: every image read at the same levels.

By default the stage reads each image at its own levels, Otsu's split of its best map
(``RefineConfig.threshold_rule`` "otsu"). Maps made by one method on one dataset put the
object/background boundary at similar rescaled scores from image to image, and one
image's Otsu split scatters around that (standard deviation 0.05-0.09 of the rescaled
range per recipe of ``scripts/refine_recipes.py``), while different methods' boundaries
lie far apart (median split 0.31 for sparse gradient relevance, 0.50 for dense CLIP
similarities). When many images of one kind are refined, as in a dataset run, the median
of their Otsu levels is a steadier reading than each image's own and still follows the
method.

Where the background competes (``RefineConfig.background_score``) depends on the method
even more: on the recipe family the best offset from the median split ran from -0.04
(sparse gradient relevance, which under-covers) to +0.28 (blurry halos and maps that
spill onto a co-occurring object), and no fixed offset suits them all. What the
best offsets share is the area they leave to the objects: cut there, each recipe's best
map covers 19-21 % of a sample image's pixels on average, close to the 22 % the objects
of coco-dev's VOC classes cover. So :func:`calibrate_levels` puts the background where
the sample's maps cover a given share of the pixels (``coverage``, the expected share of
object pixels of the dataset; 0.20 by default, chosen on the mean over the recipes).

On the recipes of ``scripts/eval_refine.py`` this gained 5.0 mIoU over each image's own
levels on the mean of the six main ones, 2.1 on the two held-out ones and 3.4 on three
written blind, and lost on one of the eleven (-0.6; BENCHMARKS.md, issue 14). The gain
rests on ``coverage`` being near the dataset's share: on the half of coco-dev whose
objects cover 39 % of the pixels, calibrating to 20 % lost 1.5 on the mean. ``refine()``
of one image reads its own levels, because one image cannot show where a method's
boundary lies; dataset runs of 50 images or more calibrate by default
(``jaxseg.run.calibration``). Calibration reads only the maps (no labels or masks), so it can
run on the very images being refined; the share needs a larger sample than the levels
(see :func:`calibrate_levels`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.refinement import seeds
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import lay_on_canvas, validate_inputs
from jaxseg.refinement.unaries import read_maps

# The share of pixels the calibrated cut leaves to the objects by default (the best on the
# mean over the six recipes of scripts/refine_recipes.py, every second coco-dev image;
# leave-one-recipe-out picks 0.195-0.21; BENCHMARKS.md).
DATASET_COVERAGE = 0.20

# Bins of the share curve (the resolution of Otsu's histogram).
SHARE_BINS = 256


class CalibrationReading(NamedTuple):
    """What calibration reads off one image's maps."""

    levels: np.ndarray  # float64 [3]: the image's own (theta, mu_bg, mu_fg)
    # float64 [SHARE_BINS]: share of the image's pixels whose best rescaled score is
    # >= b / SHARE_BINS, for bin b.
    share_above: np.ndarray


def _reading(image, size_hw, scores, label_mask, config):
    """:class:`CalibrationReading`'s arrays of one image laid on its canvas, on the device."""
    relative, levels = read_maps(image, size_hw, scores, label_mask, config)
    valid = seeds.valid_mask(image.shape[:2], size_hw)
    histogram = seeds.score_histogram(seeds.best_score(relative, label_mask)[0], valid,
                                      SHARE_BINS)
    share_above = jnp.cumsum(histogram[::-1])[::-1] / jnp.maximum(histogram.sum(), 1.0)
    return jnp.stack(levels), share_above


# One compiled program per config, canvas and label bucket (it holds no model).
_reading_program = jax.jit(_reading, static_argnames=("config",))


def read_calibration(image: np.ndarray, scores: np.ndarray,
                     config: RefineConfig = RefineConfig()) -> CalibrationReading:
    """What calibration needs of one image: its own levels and share curve.

    Both are read off the maps as the stage's "otsu" rule reads them (smoothed along the
    image's edges at refinement size, each map rescaled, the best map per pixel).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` relevance maps, K >= 1.
      config: the refinement settings (smoothing, ``long_side``); its rule is ignored.

    Returns:
      The image's :class:`CalibrationReading`.

    Raises:
      ValueError: as ``refine``, when an input's shape or dtype does not match or the
        scores hold NaN or infinite values (they would give every image NaN levels), and
        when they hold no map.
    """
    image, scores = np.asarray(image), np.asarray(scores)
    validate_inputs(image, scores, None, "read_calibration")
    if scores.shape[0] == 0:
        raise ValueError("read_calibration: scores hold no map (K = 0), so there is no level "
                         "to read; leave images without labels out of the sample")
    config = dataclasses.replace(config, threshold_rule="otsu")
    laid = lay_on_canvas(image, scores, config)
    levels, share_above = jax.device_get(_reading_program(
        laid.image, laid.size_hw, laid.maps, laid.label_mask, config))
    return CalibrationReading(np.asarray(levels, np.float64), np.asarray(share_above, np.float64))


def coverage_cut(share_above: np.ndarray, coverage: float) -> float:
    """The rescaled score above which a share ``coverage`` of the pixels lies.

    Args:
      share_above: float ``[SHARE_BINS]`` non-increasing share curve (mean of a sample's
        :attr:`CalibrationReading.share_above`).
      coverage: the share wanted, in (0, 1).

    Returns:
      The cut, interpolated linearly between the bins' edges (the curve is taken to reach
      0 at 1, the top of the last bin).

    Raises:
      ValueError: when ``coverage`` is out of (0, 1).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"calibrate_levels: coverage must be in (0, 1), got {coverage}")
    edges = np.arange(SHARE_BINS + 1) / SHARE_BINS
    curve = np.append(share_above, 0.0)
    last = int(np.nonzero(curve >= coverage)[0][-1])  # curve[0] = 1 > 0 = curve[-1]
    drop = curve[last] - curve[last + 1]
    return float(edges[last] + (curve[last] - coverage) / drop * (edges[last + 1] - edges[last]))


def calibrate_levels(readings: Iterable[CalibrationReading],
                     config: RefineConfig = RefineConfig(),
                     coverage: float = DATASET_COVERAGE,
                     background_score: Optional[float] = None) -> RefineConfig:
    """The settings that read every image at a sample's levels.

    The levels are the medians of the sample's own levels; the background competes at
    the cut above which the sample's best maps cover ``coverage`` of an image's pixels on
    average. Readings of flat maps (one value over the whole image: Otsu finds no split,
    and the reading holds placeholder levels and an all-or-nothing share curve) are left
    out, as they would pull both towards nothing the maps say. On the recipes of coco-dev,
    the standard deviation over random samples of 32 images was 0.006-0.025 of the
    rescaled range for the median levels (about a fifth of one image's) and 0.018-0.043
    for the cut, whose share varies with the objects' sizes: calibrate on 50 images or
    more.

    Args:
      readings: :func:`read_calibration` of a sample of the images to refine.
      config: the other settings, kept.
      coverage: the expected share of object pixels in the dataset's images, in (0, 1).
      background_score: when given, used as ``RefineConfig.background_score`` instead of
        the cut's offset from the median theta.

    Returns:
      ``config`` with ``threshold_rule="dataset"``, ``levels`` the medians and
      ``background_score`` (Python floats, so the config stays hashable).

    Raises:
      ValueError: when ``readings`` is empty, its levels are not ``[3]`` each, every
        reading is of flat maps, or ``coverage`` is out of (0, 1).
    """
    readings = list(readings)
    levels = np.asarray([reading.levels for reading in readings], np.float64)
    if levels.ndim != 2 or levels.shape[0] == 0 or levels.shape[1] != 3:
        raise ValueError(f"calibrate_levels: readings must be a non-empty list of "
                         f"read_calibration results, got levels of shape {levels.shape}")
    flat = np.array([np.all((reading.share_above == 0.0) | (reading.share_above == 1.0))
                     for reading in readings])
    if flat.all():
        raise ValueError(f"calibrate_levels: all {len(levels)} readings are of flat maps (one "
                         f"value over the whole image), which hold no level; calibrate on "
                         f"images whose maps vary")
    readings = [reading for reading, is_flat in zip(readings, flat) if not is_flat]
    levels = levels[~flat]
    theta, low, high = (float(value) for value in np.median(levels, axis=0))
    if background_score is None:
        share_above = np.mean([reading.share_above for reading in readings], axis=0)
        background_score = coverage_cut(share_above, coverage) - theta
    return dataset_config(config, (theta, low, high), background_score)


def dataset_config(config: RefineConfig, levels: Iterable[float],
                   background_score: float) -> RefineConfig:
    """``config`` reading every image at the given levels (the "dataset" rule).

    Args:
      config: the other settings, kept.
      levels: (theta, mu_bg, mu_fg), as :func:`calibrate_levels` gives them.
      background_score: ``RefineConfig.background_score``.

    Returns:
      The config, its levels and score as Python floats (so it stays hashable, and a
      record read back from JSON gives the very config it was written from).
    """
    return dataclasses.replace(config, threshold_rule="dataset",
                               levels=tuple(float(level) for level in levels),
                               background_score=float(background_score))
