"""Tests of levels calibrated on a dataset's maps (``jaxseg.refinement.calibrate``)."""

import dataclasses

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from jaxseg.refinement.calibrate import DATASET_BACKGROUND_SCORE, calibrate_levels, map_levels
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import lay_on_canvas, refine
from jaxseg.refinement.unaries import read_maps

from test_refine import _read_maps


def _scene(seed):
    """A red square on blue at a random place: image, one blurred noisy map, the truth."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((64, 80), bool)
    top, left = rng.integers(8, 30, 2)
    truth[top:top + 24, left:left + 24] = True
    image = np.where(truth[..., None], np.array((200, 40, 40), np.uint8),
                     np.array((40, 60, 190), np.uint8)).astype(np.uint8)
    scores = gaussian_filter(truth.astype(np.float32), 4) + rng.normal(0, 0.03, truth.shape)
    return image, scores[None].astype(np.float32), truth


def test_map_levels_are_the_levels_the_otsu_rule_reads():
    image, scores, _ = _scene(0)
    config = RefineConfig()
    laid = lay_on_canvas(image, scores, config)
    _, levels = read_maps(laid.image, laid.size_hw, laid.maps, laid.label_mask, config)
    np.testing.assert_allclose(map_levels(image, scores), np.array(levels, np.float64), rtol=1e-6)
    # The rule of the given config does not matter: the image's own split is measured.
    np.testing.assert_array_equal(map_levels(image, scores, RefineConfig(threshold_rule="fixed")),
                                  map_levels(image, scores))


def test_calibrate_levels_takes_each_levels_median_and_keeps_the_other_settings():
    levels = [np.array([0.3, 0.1, 0.6]), np.array([0.5, 0.0, 0.9]), np.array([0.4, 0.3, 0.7])]
    base = RefineConfig(pairwise_weight=7.0)
    config = calibrate_levels(levels, base)
    assert config.threshold_rule == "dataset"
    assert config.levels == pytest.approx((0.4, 0.1, 0.7))
    assert all(type(level) is float for level in config.levels)
    assert config.background_score == DATASET_BACKGROUND_SCORE
    assert dataclasses.replace(config, threshold_rule="otsu", levels=base.levels,
                               background_score=base.background_score) == base
    hash(config)  # a jit-static argument
    assert calibrate_levels(levels, base, background_score=-0.1).background_score == -0.1
    for bad in ([], [np.array([0.3, 0.1])]):
        with pytest.raises(ValueError, match="calibrate_levels: levels"):
            calibrate_levels(bad)


def test_dataset_rule_at_an_images_own_levels_is_the_otsu_rule():
    image, scores, truth = _scene(1)
    own = calibrate_levels([map_levels(image, scores)], background_score=0.0)
    np.testing.assert_array_equal(refine(image, scores, None, own), refine(image, scores))
    np.testing.assert_array_equal(refine(image, scores), truth.astype(np.int32))


def test_dataset_rule_places_seeds_at_the_calibrated_levels():
    # A map whose own Otsu split (0.004: its background of zeros against everything else)
    # seeds a plateau of context at 0.45 as object; read at the levels of maps of the
    # same kind without context (split at 0.5), the plateau is neither an object seed
    # nor object in the prior.
    scores = np.zeros((1, 40, 40), np.float32)
    scores[0, 10:20, 10:20] = 1.0
    scores[0, 25:40, :] = 0.45
    own_levels, own_seeds, own_prior = _read_maps(scores)
    assert own_levels[0] < 0.45 and (own_seeds[30:, :] == 1).all()
    assert (own_prior.argmax(0)[30:, :] == 1).all()
    config = RefineConfig(threshold_rule="dataset", levels=(0.5, 0.05, 0.95))
    levels, pseudo, prior = _read_maps(scores, config)
    assert levels == pytest.approx((0.5, 0.05, 0.95))
    assert (pseudo[30:, :] == -1).all()  # above the background cut, below the object's
    assert (pseudo[10:20, 10:20] == 1).all() and pseudo[2, 30] == 0
    assert (prior.argmax(0)[30:, :] == 0).all() and (prior.argmax(0)[10:20, 10:20] == 1).all()
