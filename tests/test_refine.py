"""Tests of the refinement stage on small synthetic images with exact expected answers."""

import itertools

import jax
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, shift

from jaxseg.refinement import seeds
from jaxseg.refinement.classifier import ClassifierConfig
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement import graphcut
from jaxseg.imaging import resize_image, resize_maps
from jaxseg.refinement.refine import graph_cut, lay_on_canvas, refine
from jaxseg.refinement.smoothing import edge_aware_smooth
from jaxseg.refinement.unaries import (batch_unaries, distil, image_unaries, mix_unaries,
                                      unary_parts)

RED, BLUE, GREEN = (200, 40, 40), (40, 60, 190), (50, 170, 60)


def _two_colour_scene(height=48, width=64):
    """A red rectangle on blue: image [H, W, 3] uint8 and the true mask [H, W] bool."""
    truth = np.zeros((height, width), bool)
    truth[12:36, 16:44] = True
    image = np.where(truth[..., None], np.array(RED, np.uint8), np.array(BLUE, np.uint8))
    return image.astype(np.uint8), truth


def _read_maps(scores, config=RefineConfig()):
    """The seeds module on a whole (unpadded) image: (levels, pseudo-labels, probabilities)."""
    scores = np.asarray(scores, np.float32)
    valid = np.ones(scores.shape[1:], bool)
    labels = np.ones(len(scores), bool)
    relative = seeds.normalize_scores(scores, valid, labels)
    levels = seeds.image_levels(relative, valid, labels, config)
    pseudo = seeds.pseudo_labels(relative, valid, labels, levels, np.array(scores.shape[1:]), config)
    probabilities = seeds.score_probabilities(relative, labels, levels, config)
    return tuple(float(level) for level in levels), np.asarray(pseudo), np.asarray(probabilities)


def _pseudo(scores, config=RefineConfig()):
    return _read_maps(scores, config)[1]


def _coarse(mask, offset, seed, sigma=3.0, noise=0.05):
    """A blurred, shifted, noisy version of ``mask`` in [0, 1] (a coarse relevance map)."""
    rng = np.random.default_rng(seed)
    coarse = gaussian_filter(shift(mask.astype(np.float32), offset, order=0), sigma)
    coarse = np.clip(coarse + rng.normal(0, noise, mask.shape), 0, None)
    return (coarse / coarse.max()).astype(np.float32)


def test_two_colour_image_with_noisy_offset_map_recovers_true_region_exactly():
    image, truth = _two_colour_scene()
    scores = _coarse(truth, offset=(3, -3), seed=0)[None]
    theta = _read_maps(scores)[0][0]
    coarse_argmax = scores[0] > theta + RefineConfig().background_score
    assert (coarse_argmax != truth).sum() > 50  # the coarse map alone is clearly off
    np.testing.assert_array_equal(refine(image, scores), truth.astype(np.int32))


def test_two_labels_follow_score_order():
    image, truth = _two_colour_scene()
    image[:, 54:] = GREEN  # a second object: a green stripe on the right
    second = np.zeros_like(truth)
    second[:, 54:] = True
    scores = np.stack([_coarse(truth, (2, 2), 1), _coarse(second, (0, -2), 2)])
    expected = np.where(truth, 1, np.where(second, 2, 0)).astype(np.int32)
    labels = refine(image, scores)
    assert labels.dtype == np.int32 and labels.shape == truth.shape
    np.testing.assert_array_equal(labels, expected)
    # Swapping the maps swaps the 1-based label ids.
    np.testing.assert_array_equal(refine(image, scores[::-1]), np.array([0, 2, 1])[expected])


def test_large_image_is_refined_at_capped_size_and_upsampled_along_edges():
    image, truth = _two_colour_scene(96, 128)
    scores = _coarse(truth, offset=(4, -4), seed=3, sigma=5.0)[None]
    labels = refine(image, scores, config=RefineConfig(long_side=48))
    assert labels.shape == truth.shape
    # The cut runs 2.7x coarser (48 x 36); upsampling along edges puts the boundary back
    # on the full-size colour edge except where the coarse cut itself is one pixel off.
    coarse_nearest = np.kron(truth[::8, ::8], np.ones((8, 8), bool))  # what a 16 x 12 grid gives
    assert (coarse_nearest != truth).sum() > 100
    assert (labels != truth).sum() <= 16


def test_small_images_are_refined_at_the_long_side_like_large_ones():
    # A grey 40 x 40 image with a clear blob in its map: at its own size the Potts term,
    # at full strength on a textureless image, outweighed the blob's unaries and erased it.
    image = np.full((40, 40, 3), 128, np.uint8)
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 < 10 ** 2
    scores = gaussian_filter(disc.astype(np.float32), 2.0)[None]
    labels = refine(image, scores)
    # No colour edge to snap to: the mask is the core of the blob, as at any size.
    assert labels.shape == disc.shape
    assert labels.astype(bool).sum() > 0.5 * disc.sum() and not (labels.astype(bool) & ~disc).any()
    # The same scene at 4x the size gives the same mask, up to the resizing.
    large = refine(resize_image(image, (160, 160)), resize_maps(scores, (160, 160)))
    assert (large[::4, ::4] != labels).mean() < 0.02


def test_pseudo_labels_thresholds_are_relative_to_each_map():
    scores = np.array([[[0.0, 0.1, 0.5, 1.0]],
                       [[0.0, 0.02, 0.1, 0.2]]], np.float32)  # second map: same shape, 1/5 the scale
    config = RefineConfig(threshold_rule="fixed", fg_threshold=0.5, bg_threshold=0.2)
    # Rescaled: map 1 = [0, .1, .5, 1], map 2 = [0, .1, .5, 1]; ties go to the first label.
    np.testing.assert_array_equal(_pseudo(scores, config), [[0, 0, 1, 1]])
    scores[1, 0, 2] = 0.15  # map 2 now wins the third pixel (0.75 > 0.5)
    np.testing.assert_array_equal(_pseudo(scores, config), [[0, 0, 2, 1]])
    scores[:, 0, 1] = [0.3, 0.06]  # both 0.3 of their range: neither confident nor background
    np.testing.assert_array_equal(_pseudo(scores, config), [[0, -1, 2, 1]])


def test_background_needs_low_scores_all_around_it():
    scores = np.zeros((1, 40, 40), np.float32)
    scores[0, 10:20, 10:20] = 1.0
    # 0.035 of the short side rounds to a 1-pixel margin: a 3 x 3 neighbourhood.
    # The fixed rule tests the scores themselves; the Otsu rule their local mean over the
    # same window, so its margin reaches one window further.
    for rule, first_background_row in (("fixed", 8), ("otsu", 7)):
        labels = _pseudo(scores, RefineConfig(threshold_rule=rule, background_margin=0.035))
        assert labels[9, 15] == -1 and labels[9, 9] == -1  # touches the object's scores
        assert (labels[first_background_row + 1:10, 15] == -1).all()
        assert labels[first_background_row, 15] == 0 and labels[30, 30] == 0
        assert (labels[10:20, 10:20] == 1).all()
        without_margin = _pseudo(scores, RefineConfig(threshold_rule=rule, background_margin=0.0))
        assert without_margin[9, 15] == 0 and without_margin[9, 9] == 0


def test_otsu_levels_split_two_modes_and_report_their_means():
    values = np.concatenate([np.full(300, 0.2), np.full(100, 0.7), np.full(50, 0.95)])
    weights = np.r_[np.ones(400), np.zeros(50)]  # the last values are not counted
    theta, low, high = map(float, seeds.otsu_levels(values, weights))
    assert 0.2 < theta <= 0.7
    assert low == pytest.approx(0.2, abs=1 / 256) and high == pytest.approx(0.7, abs=1 / 256)
    one_value = tuple(map(float, seeds.otsu_levels(np.full(10, 0.4), np.ones(10))))
    assert one_value == (0.5, 0.0, 1.0)  # no split


def test_otsu_rule_places_seeds_at_each_images_own_levels():
    # Two images whose maps differ only by where the object/background levels lie (a
    # low-contrast dense map: background 0.6, object 0.9 after rescaling by a speck at 0
    # and 1). A fixed rule seeds the first image's background as object; the Otsu rule
    # seeds both alike.
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 40), bool)
    truth[10:30, 10:30] = True
    for background, obj in ((0.6, 0.9), (0.1, 0.6)):
        scores = np.where(truth, obj, background) + rng.normal(0, 0.02, truth.shape)
        scores[0, 0], scores[20, 20] = 0.0, 1.0
        scores = scores[None].astype(np.float32)
        labels = _pseudo(scores)
        assert (labels[truth] != 0).all() and (labels[~truth] != 1).all()
        assert (labels[13:27, 13:27] == 1).mean() > 0.9
        assert (labels[~truth] == 0).sum() > 0.5 * (~truth).sum()
        prior = _read_maps(scores)[2].argmax(axis=0)
        assert (prior[1:-1, 1:-1] == truth[1:-1, 1:-1]).all()
        if background == 0.6:
            fixed = _pseudo(scores, RefineConfig(threshold_rule="fixed", fg_threshold=0.4))
            assert (fixed[~truth] == 1).mean() > 0.9  # the background seeded as the object
    with pytest.raises(ValueError, match="threshold_rule"):
        RefineConfig(threshold_rule="mean")


@pytest.mark.parametrize("field, value", [
    ("long_side", 1), ("long_side", 15), ("max_cycles", 0), ("pairwise_weight", -1.0),
    ("score_temperature", 0.0), ("upsample_colour", float("nan")),
    # These gave an empty mask without an error, or failed deep in the compiled program.
    ("fg_threshold", float("nan")), ("background_score", float("nan")),
    ("smooth_spatial", float("inf")), ("prior_weight", float("inf")), ("background_margin", -0.1),
    ("feature_dims", -1), ("max_cycles", 2.5), ("long_side", 17.5), ("seed", True),
    ("move_margin", float("nan")), ("classifier", None)])
def test_settings_outside_their_range_are_refused(field, value):
    # long_side 1 crashed the batched unaries program with a broadcasting error.
    with pytest.raises(ValueError, match=f"RefineConfig.{field} must be"):
        RefineConfig(**{field: value})
    RefineConfig(long_side=16, pairwise_weight=0.0, local_radius=0.0, move_margin=0.0)


def test_numbers_are_stored_as_their_fields_types():
    # An int weight or a numpy integer size keeps the config equal to, and printed like, the
    # one written with the field's own type (levels.json's settings digest reads the repr).
    config = RefineConfig(pairwise_weight=12, long_side=np.int64(192), move_margin=float("inf"))
    assert repr(config) == repr(RefineConfig(move_margin=float("inf")))
    assert type(config.long_side) is int and type(config.pairwise_weight) is float


@pytest.mark.parametrize("field, value", [("num_samples", 0), ("class_bucket", 0), ("steps", -5),
                                          ("hidden_size", 3.0), ("learning_rate", float("nan")),
                                          ("learning_rate", 0.0), ("class_balance", 2.0)])
def test_classifier_settings_outside_their_range_are_refused(field, value):
    # Each crashed the compiled fit (gather, division, MLIR type) or trained to NaN.
    with pytest.raises(ValueError, match=f"ClassifierConfig.{field} must be"):
        ClassifierConfig(**{field: value})


def test_dataset_rule_needs_calibrated_levels_and_keeps_them_hashable():
    # The default levels (0, 0, 1) put the background cut at 0: every pixel would be seeded
    # and cut as foreground.
    with pytest.raises(ValueError, match="calibrated levels"):
        RefineConfig(threshold_rule="dataset")
    with pytest.raises(ValueError, match="calibrated levels"):
        RefineConfig(threshold_rule="dataset", levels=(0.2, 0.5, 0.9))
    with pytest.raises(ValueError, match="levels must be"):
        RefineConfig(levels=(0.4, 0.1))
    config = RefineConfig(threshold_rule="dataset", levels=np.array([0.4, 0.1, 0.7]))
    assert config.levels == (0.4, 0.1, 0.7) and all(type(level) is float for level in config.levels)
    assert hash(config) == hash(RefineConfig(threshold_rule="dataset", levels=(0.4, 0.1, 0.7)))


@pytest.mark.parametrize("rule", ["fixed", "otsu", "dataset"])
def test_score_probabilities_argmax_is_thresholded_argmax(rule):
    scores = np.random.default_rng(0).random((3, 9, 9)).astype(np.float32)
    config = RefineConfig(threshold_rule=rule, background_score=0.05, levels=(0.7, 0.2, 0.9))
    levels, _, probabilities = _read_maps(scores, config)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, rtol=1e-5)
    relative = (scores - scores.min((1, 2), keepdims=True)) / np.ptp(scores, (1, 2), keepdims=True)
    background = levels[0] + config.background_score
    assert (background > 0.05) == (rule != "fixed")
    # The dataset rule reads the image at the config's levels, not at its own split.
    assert (levels == pytest.approx((0.7, 0.2, 0.9))) == (rule == "dataset")
    expected = np.where(relative.max(0) > background, relative.argmax(0) + 1, 0)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), expected)


def _energy(image, probabilities, labels, config):
    """The Potts energy written out pair by pair (independent of grid_edges)."""
    height, width = labels.shape
    colour = image.astype(np.float64)
    pairs = [((y, x), (y + dy, x + dx)) for y in range(height) for x in range(width)
             for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1))
             if 0 <= y + dy < height and 0 <= x + dx < width]
    squared = [((colour[p] - colour[q]) ** 2).sum() for p, q in pairs]
    beta = 1.0 / (2.0 * max(np.mean(squared), 1e-6))
    unary = -np.log(np.clip(probabilities, 1e-4, 1.0))
    energy = sum(unary[labels[y, x], y, x] for y in range(height) for x in range(width))
    for (p, q), step in zip(pairs, squared):
        if labels[p] != labels[q]:
            energy += config.pairwise_weight * np.exp(-beta * step) / np.hypot(q[0] - p[0], q[1] - p[1])
    return energy


def test_every_expansion_move_is_the_best_keep_or_switch_labelling():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (3, 3, 3)).astype(np.uint8)
    probabilities = rng.dirichlet(np.ones(3), (3, 3)).transpose(2, 0, 1).astype(np.float32)
    config = RefineConfig(pairwise_weight=1.5)
    weights = graphcut.grid_edges(image, config.pairwise_weight)
    weight_sums = np.full((3, 3), 1e9)  # every pixel may move
    unary = -np.log(np.clip(probabilities, 1e-4, 1.0))
    for start_seed in range(4):
        labels = np.random.default_rng(start_seed).integers(0, 3, (3, 3))
        for alpha in range(3):
            moved = graphcut.expansion_move(unary, labels, alpha, weights, weight_sums, np.inf)
            best = min(_energy(image, probabilities, np.where(np.array(bits).reshape(3, 3), alpha, labels),
                               config) for bits in itertools.product([0, 1], repeat=9))
            assert _energy(image, probabilities, moved, config) == pytest.approx(best, rel=1e-6)


def test_graph_cut_finds_the_global_minimum_of_a_binary_energy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 3, 3)).astype(np.uint8)
    foreground = rng.random((3, 3)).astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground])
    config = RefineConfig(pairwise_weight=0.7)
    labels = graph_cut(image, probabilities, config)
    best = min(_energy(image, probabilities, np.array(bits).reshape(3, 3), config)
               for bits in itertools.product([0, 1], repeat=9))
    assert _energy(image, probabilities, labels, config) == pytest.approx(best, rel=1e-6)


def test_graph_cut_removes_an_isolated_noisy_pixel_and_keeps_argmax_without_pairwise():
    image = np.full((8, 8, 3), 100, np.uint8)
    image[:, 4:] = 160  # a colour edge between the halves makes the cut there cheap
    probabilities = np.full((3, 8, 8), 0.05, np.float32)
    probabilities[1, :, :4] = probabilities[2, :, 4:] = 0.9
    probabilities[:, 3, 2] = [0.05, 0.4, 0.55]  # one pixel slightly prefers the other side
    expected = np.where(np.arange(8) < 4, 1, 2)[None].repeat(8, 0)
    np.testing.assert_array_equal(graph_cut(image, probabilities), expected)
    unsmoothed = graph_cut(image, probabilities, RefineConfig(pairwise_weight=0.0))
    np.testing.assert_array_equal(unsmoothed, probabilities.argmax(axis=0))


def _unaries(image, scores, config=RefineConfig(), canvas_hw=None, features=None):
    """image_unaries of an image laid on a canvas of ``canvas_hw`` (default its own size)."""
    height, width = image.shape[:2]
    canvas_hw = canvas_hw or (height, width)
    canvas = np.zeros(canvas_hw + (3,), np.uint8)
    canvas[:height, :width] = image
    maps = np.zeros((len(scores),) + canvas_hw, np.float32)
    maps[:, :height, :width] = scores
    grid = None if features is None else np.array(features.shape[:2])
    return np.asarray(image_unaries(canvas, np.array([height, width]), maps, np.ones(len(scores), bool),
                                    features, grid, config))[:, :height, :width]


def test_unaries_are_deterministic_use_the_seed_and_ignore_the_padding():
    image, truth = _two_colour_scene()
    image = (image + np.random.default_rng(0).integers(0, 20, image.shape)).astype(np.uint8)
    scores = _coarse(truth, (2, 2), 4)[None]
    first = _unaries(image, scores)
    assert first.shape == (2,) + truth.shape and first.dtype == np.float32
    np.testing.assert_allclose(first.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(first, _unaries(image, scores))
    assert not np.array_equal(first, _unaries(image, scores, RefineConfig(seed=1)))
    # On a larger canvas (what batches and size buckets do) the image's unaries hardly move:
    # only the order of float sums and the positions training pixels are drawn from change.
    padded = _unaries(image, scores, canvas_hw=(64, 96))
    assert (padded.argmax(0) == first.argmax(0)).mean() > 0.99
    np.testing.assert_allclose(padded, first, atol=0.05)


def test_unary_parts_recompose_the_unaries_and_distil_refits_on_any_seeds():
    image, truth = _two_colour_scene()
    image = (image + np.random.default_rng(0).integers(0, 20, image.shape)).astype(np.uint8)
    scores = _coarse(truth, (2, 2), 4)[None]
    size_hw, labels, config = np.array(truth.shape), np.ones(1, bool), RefineConfig()
    parts = unary_parts(image, size_hw, scores, labels, None, None, config)
    assert (np.asarray(parts.pseudo) >= 0).any()
    mixed = mix_unaries(parts.distilled, parts.prior, parts.pseudo, labels, config.prior_weight)
    np.testing.assert_array_equal(mixed, image_unaries(image, size_hw, scores, labels, None, None,
                                                       config))
    # Seeds that contradict the maps (the object called background and the reverse): the
    # refitted classifier follows the seeds, not the maps.
    swapped = np.where(truth, 0, 1).astype(np.int32)
    refitted = distil(image, size_hw, None, None, swapped, labels, config, jax.random.key(1))
    assert (np.asarray(refitted).argmax(axis=0) == swapped).mean() > 0.99
    without_seeds = np.full(truth.shape, -1, np.int32)
    np.testing.assert_array_equal(
        mix_unaries(parts.distilled, parts.prior, without_seeds, labels, config.prior_weight),
        parts.prior)
    plain = unary_parts(image, size_hw, scores, labels, None, None,
                        RefineConfig(distillation=False))
    np.testing.assert_array_equal(plain.distilled, plain.prior)
    np.testing.assert_array_equal(plain.prior, parts.prior)


def test_batch_unaries_mark_an_image_with_nan_maps_and_leave_the_others_alone():
    # The stage's min-max reductions may drop a NaN (XLA's CPU min and max do), which
    # turned NaN maps into a quiet all-background mask; the batch marks such an image NaN
    # for the host to refuse, and a NaN in a padding label does not count.
    image, truth = _two_colour_scene()
    scores = np.stack([_coarse(truth, (2, 2), 4), _coarse(~truth, (1, 1), 5)])
    broken, padded = scores.copy(), scores.copy()
    broken[0, 3, 5] = np.nan
    padded[1] = np.nan
    config = RefineConfig(distillation=False)
    unaries = np.asarray(batch_unaries(
        np.stack([broken, padded]), np.array([truth.shape] * 2), np.stack([image] * 2),
        np.array([truth.shape] * 2), np.array([[True, True], [True, False]]), None, None,
        config=config), np.float32)
    assert np.isnan(unaries[0]).all() and np.isfinite(unaries[1]).all()
    alone = np.asarray(batch_unaries(
        scores[None, :1], np.array([truth.shape]), image[None], np.array([truth.shape]),
        np.array([[True]]), None, None, config=config), np.float32)
    np.testing.assert_array_equal(unaries[1, :2], alone[0])


def test_canvas_holds_the_resized_image_at_the_top_left_in_a_shared_bucket():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 500, 3)).astype(np.uint8)
    scores = rng.random((3, 300, 500)).astype(np.float32)
    laid = lay_on_canvas(image, scores, RefineConfig())  # long_side 192: 115 x 192
    np.testing.assert_array_equal(laid.size_hw, [115, 192])
    assert laid.image.shape == (128, 192, 3) and laid.maps.shape == (4, 128, 192)
    np.testing.assert_array_equal(laid.label_mask, [True, True, True, False])
    np.testing.assert_array_equal(laid.image[:115], resize_image(image, (115, 192)))
    np.testing.assert_array_equal(laid.maps[:3, :115], resize_maps(scores, (115, 192)))
    assert not laid.image[115:].any() and not laid.maps[:, 115:].any() and not laid.maps[3].any()
    # A slightly smaller image with 4 labels shares the compiled program's shapes.
    other = lay_on_canvas(image[:280, :480], rng.random((4, 280, 480)), RefineConfig())
    assert other.image.shape == laid.image.shape and other.maps.shape == laid.maps.shape
    # A small image is enlarged to the long side.
    small = lay_on_canvas(image[:40, :50], scores[:1, :40, :50], RefineConfig())
    np.testing.assert_array_equal(small.size_hw, [154, 192])
    assert small.image.shape == (192, 192, 3) and small.maps.shape == (1, 192, 192)
    np.testing.assert_array_equal(small.image[:154], resize_image(image[:40, :50], (154, 192)))


def test_seeds_and_prior_ignore_the_padding_exactly():
    scores = _coarse(_two_colour_scene()[1], (2, 2), 4)[None]
    config = RefineConfig(smooth_spatial=0.0, distillation=False)
    image = np.zeros((48, 64, 3), np.uint8)
    np.testing.assert_allclose(_unaries(image, scores, config, canvas_hw=(80, 70)),
                               _unaries(image, scores, config), atol=1e-6)


def test_refine_with_dense_features():
    image, truth = _two_colour_scene()
    scores = _coarse(truth, (3, -3), 0)[None]
    features = np.random.default_rng(0).normal(size=(6, 8, 512)).astype(np.float32)
    labels = refine(image, scores, features)
    assert labels.shape == truth.shape and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, refine(image, scores, features))
    assert (labels == truth).mean() > 0.98


def test_no_labels_gives_all_background():
    image, _ = _two_colour_scene()
    labels = refine(image, np.zeros((0, 48, 64), np.float32))
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.zeros((48, 64), np.int32))


@pytest.mark.parametrize("image, scores, features, name", [
    (np.zeros((8, 8, 3), np.float32), np.zeros((1, 8, 8), np.float32), None, "image"),
    (np.zeros((8, 8), np.uint8), np.zeros((1, 8, 8), np.float32), None, "image"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 9), np.float32), None, "scores"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32), None, "scores"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.int32), None, "scores"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.float32), np.zeros((4, 512)), "features"),
    (np.zeros((8, 8, 3), np.uint8), np.full((1, 8, 8), np.nan, np.float32), None, "scores hold 64 NaN"),
    (np.zeros((8, 8, 3), np.uint8), np.where(np.eye(8, dtype=bool), np.inf, 0).astype(np.float32)[None], None,
     "scores hold 8 NaN or infinite"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.float32), np.full((2, 2, 4), np.nan),
     "features hold 16"),
    # Finite in float64, infinite in the stage's float32: would come back all background.
    (np.zeros((8, 8, 3), np.uint8), np.full((1, 8, 8), 1e39), None, "scores hold 64 NaN"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.float32), np.zeros((0, 14, 8)),
     "features must be non-empty"),
    (np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.float32), np.zeros((14, 14, 0)),
     "features must be non-empty"),
])
def test_bad_inputs_raise_value_error_naming_them(image, scores, features, name):
    with pytest.raises(ValueError, match=name):
        refine(image, scores, features)


def test_stage_functions_reject_mismatched_shapes():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="probabilities"):
        graph_cut(image, np.full((2, 8, 9), 0.5, np.float32))


def test_edge_aware_smoothing_spreads_within_a_region_and_stops_at_its_edge():
    image = np.zeros((30, 40, 3), np.uint8)
    image[:, 20:] = 200  # a colour edge down the middle
    maps = np.zeros((2, 30, 40), np.float32)
    maps[0, 10:20, 12:16] = 1.0  # a blob left of the edge
    maps[1] = 0.7  # a constant map stays constant
    valid = np.ones((30, 40), bool)
    smoothed = np.asarray(edge_aware_smooth(image, maps, valid, spatial=10.0, colour=10.0))
    assert smoothed.shape == maps.shape and smoothed.dtype == np.float32
    np.testing.assert_allclose(smoothed[1], 0.7, rtol=1e-5)
    assert smoothed[0, 15, 19] > 0.05  # spread along the left region
    assert smoothed[0, 15, 20:].max() < 1e-3  # nothing crosses the edge
    plain = np.asarray(edge_aware_smooth(np.zeros_like(image), maps, valid, spatial=10.0, colour=10.0))
    assert plain[0, 15, 22] > 0.02  # without the edge it would
    # Nothing flows in from padding: the image on a larger canvas of other values.
    canvas = np.full((2, 36, 50), 5.0, np.float32)
    canvas[:, :30, :40] = maps
    big_image = np.zeros((36, 50, 3), np.uint8)
    big_image[:30, :40] = np.zeros_like(image)
    padded = np.asarray(edge_aware_smooth(big_image, canvas, np.pad(valid, ((0, 6), (0, 10))),
                                          spatial=10.0, colour=10.0))
    np.testing.assert_allclose(padded[:, :30, :40], plain, atol=1e-5)


def test_maps_are_resized_from_their_canvas_without_the_padding_leaking_in():
    from jaxseg.imaging import resize_maps
    from jaxseg.refinement.unaries import to_canvas
    rng = np.random.default_rng(0)
    content = gaussian_filter(rng.random((2, 60, 80)), (0, 4, 4)).astype(np.float32)
    canvas = np.full((2, 96, 96), 9.0, np.float32)  # padding far from the content's values
    canvas[:, :60, :80] = content
    for size in ((30, 40), (75, 100)):  # shrinking and enlarging
        resized = np.asarray(to_canvas(canvas, np.array([60, 80]), np.array(size), (112, 112)))
        assert resized.shape == (2, 112, 112)
        got = resized[:, :size[0], :size[1]]
        assert got.max() <= content.max() + 1e-5  # nothing of the padding's 9.0
        np.testing.assert_allclose(got, resize_maps(content, size), atol=0.02)
