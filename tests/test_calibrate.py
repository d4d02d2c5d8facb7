"""Tests of levels calibrated on a dataset's maps (``jaxseg.refinement.calibrate``, and
when a run calibrates: ``jaxseg.run.calibration.plan_calibration``)."""

import dataclasses
import json

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, gaussian_filter

from jaxseg.refinement.calibrate import (DATASET_COVERAGE, SHARE_BINS, CalibrationReading,
                                         calibrate_levels, coverage_cut, dataset_config,
                                         read_calibration)
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


def test_reading_holds_the_otsu_rules_levels_and_the_best_maps_share_curve():
    image, scores, _ = _scene(0)
    config = RefineConfig()
    laid = lay_on_canvas(image, scores, config)
    relative, levels = read_maps(laid.image, laid.size_hw, laid.maps, laid.label_mask, config)
    reading = read_calibration(image, scores)
    np.testing.assert_allclose(reading.levels, np.array(levels, np.float64), rtol=1e-6)
    height, width = laid.size_hw
    best = np.asarray(relative)[0, :height, :width]  # one label: its map is the best
    for index in (0, 40, 100, 200, 255):
        assert reading.share_above[index] == pytest.approx(
            np.mean(best >= index / SHARE_BINS), abs=1e-6)
    assert reading.share_above[0] == 1.0 and (np.diff(reading.share_above) <= 0).all()
    # The rule of the given config does not matter: the image's own reading is measured.
    other = read_calibration(image, scores, RefineConfig(threshold_rule="fixed"))
    np.testing.assert_array_equal(other.levels, reading.levels)
    np.testing.assert_array_equal(other.share_above, reading.share_above)


def test_reading_refuses_maps_that_are_not_finite():
    image, scores, _ = _scene(0)
    scores[0, :2] = np.nan  # NaN maps would give every image of a run NaN levels
    with pytest.raises(ValueError, match=f"read_calibration: scores hold {2 * scores.shape[2]} NaN"):
        read_calibration(image, scores)


def _reading(levels, share_above):
    return CalibrationReading(np.asarray(levels, np.float64), np.asarray(share_above, np.float64))


def test_coverage_cut_interpolates_the_share_curve():
    edges = np.arange(SHARE_BINS) / SHARE_BINS
    assert coverage_cut(1.0 - edges, 0.25) == pytest.approx(0.75)
    assert coverage_cut(1.0 - edges, 0.3) == pytest.approx(0.7)
    step = np.where(edges < 0.5, 1.0, 0.2)  # 20 % of the pixels at 0.5 or more, none above 1
    # Within a bin the share is taken to fall linearly.
    assert coverage_cut(step, 0.6) == pytest.approx(0.5 - 0.5 / SHARE_BINS)
    assert coverage_cut(step, 0.1) == pytest.approx(1.0 - 0.5 / SHARE_BINS)
    assert coverage_cut(np.ones(SHARE_BINS), 0.25) == pytest.approx(1.0 - 0.25 / SHARE_BINS)


def test_calibrate_levels_takes_the_median_levels_and_the_samples_coverage_cut():
    edges = np.arange(SHARE_BINS) / SHARE_BINS
    readings = [_reading([0.3, 0.1, 0.6], 1.0 - edges),
                _reading([0.5, 0.0, 0.9], np.where(edges < 0.6, 1.0, 0.1)),
                _reading([0.4, 0.3, 0.7], np.where(edges < 0.2, 1.0, 0.05))]
    base = RefineConfig(pairwise_weight=7.0)
    config = calibrate_levels(readings, base, coverage=0.5)
    assert config.threshold_rule == "dataset"
    assert config.levels == pytest.approx((0.4, 0.1, 0.7))
    assert all(type(level) is float for level in config.levels)
    # The mean share above x is (2.05 - x) / 3 for 0.2 <= x < 0.6: half the pixels at 0.55.
    assert config.background_score == pytest.approx(0.55 - 0.4)
    assert type(config.background_score) is float
    share = np.mean([reading.share_above for reading in readings], axis=0)
    assert calibrate_levels(readings, base).background_score == pytest.approx(
        coverage_cut(share, DATASET_COVERAGE) - 0.4)
    assert dataclasses.replace(config, threshold_rule="otsu", levels=base.levels,
                               background_score=base.background_score) == base
    hash(config)  # a jit-static argument
    # What a dataset run records (JSON numbers) gives back the very config.
    recorded = json.loads(json.dumps({"levels": config.levels,
                                      "background_score": config.background_score}))
    assert dataset_config(base, recorded["levels"], recorded["background_score"]) == config
    assert all(type(level) is float
               for level in dataset_config(base, np.float32([0.4, 0.1, 0.7]), 0.1).levels)
    assert calibrate_levels(readings, base, background_score=-0.1).background_score == -0.1
    for bad in ([], [_reading([0.3, 0.1], np.ones(SHARE_BINS))]):
        with pytest.raises(ValueError, match="calibrate_levels: readings"):
            calibrate_levels(bad)
    for coverage in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="calibrate_levels: coverage"):
            calibrate_levels(readings, coverage=coverage)


def test_flat_maps_and_images_without_maps_carry_no_level():
    image, scores, _ = _scene(0)
    # Flat maps: Otsu finds no split; the reading holds placeholder levels and a share curve
    # of all or nothing, which would pull the median levels and the cut towards nothing.
    flat = read_calibration(image, np.full_like(scores, 0.3))
    assert np.all((flat.share_above == 0.0) | (flat.share_above == 1.0))
    readings = [read_calibration(*_scene(seed)[:2]) for seed in range(3)]
    calibrated = calibrate_levels(readings)
    assert calibrate_levels(readings + [flat, flat, flat]) == calibrated
    with pytest.raises(ValueError, match="calibrate_levels: all 2 readings are of flat maps"):
        calibrate_levels([flat, flat])
    with pytest.raises(ValueError, match=r"read_calibration: scores hold no map \(K = 0\)"):
        read_calibration(image, scores[:0])


def test_calibrated_prior_covers_the_given_share_where_own_levels_take_the_context():
    # Maps that also fire, more weakly, on a ring of context around each object: each
    # image's own Otsu split falls below the ring and takes it as object. Calibrated to
    # the share the objects cover, the prior (its thresholded argmax) covers that share.
    scenes = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        truth = np.zeros((64, 80), bool)
        top, left = rng.integers(14, 26, 2)
        truth[top:top + 20, left:left + 20] = True
        ring = binary_dilation(truth, iterations=10) & ~truth
        scores = truth + 0.4 * ring + rng.normal(0, 0.03, truth.shape)
        scenes.append((np.zeros((64, 80, 3), np.uint8), scores[None].astype(np.float32), truth))
    # As _read_maps reads them: unsmoothed, at the images' own size.
    unsmoothed = RefineConfig(smooth_spatial=0.0, long_side=80)
    readings = [read_calibration(image, scores, unsmoothed) for image, scores, _ in scenes]
    objects = float(np.mean([truth.mean() for _, _, truth in scenes]))

    def prior_objects(config):
        return [_read_maps(scores, config)[2].argmax(0) == 1 for _, scores, _ in scenes]

    own = prior_objects(unsmoothed)
    assert all((mask[truth].all() and mask[~truth].mean() > 0.15)
               for mask, (_, _, truth) in zip(own, scenes))
    for coverage in (objects, 0.3):
        calibrated = prior_objects(calibrate_levels(readings, unsmoothed, coverage))
        assert np.mean([mask.mean() for mask in calibrated]) == pytest.approx(coverage, abs=0.01)
    calibrated = prior_objects(calibrate_levels(readings, unsmoothed, objects))
    agreement = [(mask == truth).mean() for mask, (_, _, truth) in zip(calibrated, scenes)]
    assert np.mean(agreement) > 0.99


def test_dataset_rule_at_an_images_own_levels_is_the_otsu_rule():
    image, scores, truth = _scene(1)
    own = calibrate_levels([read_calibration(image, scores)], background_score=0.0)
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


def test_dataset_runs_of_50_images_or_more_calibrate_by_default_and_resume_alike(tmp_path):
    from jaxseg.run.calibration import plan_calibration

    def plan(requested=None, images=50, record=None, done=0, mode="graphcut", coverage=None):
        return plan_calibration(requested, coverage, mode, images, record, done, str(tmp_path))

    assert [plan(images=n).count for n in (1, 49, 50, 99, 100, 5000)] == [0, 0, 50, 99, 100, 100]
    assert plan(images=5000).coverage == DATASET_COVERAGE
    assert plan(images=3, requested=2, coverage=0.4)[:2] == (2, 0.4)
    assert plan(images=5000, requested=0).count == 0
    assert plan(images=5000, mode="crf").count == 0
    own = plan(images=5000, done=7)  # a folder refined at own levels goes on at them
    assert own.count == 0 and "as the 7 of this run's images" in own.note
    record = {"requested": 100, "coverage": 0.3, "levels": {}, "background_score": 0.1}
    assert plan(images=3, record=record)[:2] == (100, 0.3)  # a resume takes the record
    for refused in (dict(requested=0, record=record), dict(requested=50, record=record),
                    dict(coverage=0.2, record=record), dict(requested=5, done=7),
                    dict(images=10, coverage=0.3), dict(requested=-1),
                    dict(requested=3, mode="none"),
                    dict(record={**record, "overwriting": True})):
        with pytest.raises(ValueError):
            plan(**refused)
