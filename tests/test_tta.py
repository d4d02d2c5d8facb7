"""Tests for the test-time augmentation geometry (jaxseg.maps.tta), with a fake relevance."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.maps import tta
from jaxseg.clip.preprocess import CLIP_MEAN, CLIP_STD

# Small sizes keep the tests fast; the geometry does not depend on them.
CONFIG = tta.TTAConfig(input_size=64, canvas_size=128)
GRID = 8  # fake patch grid: 64 / 8 = 8-pixel patches


def fake_relevance(pixels: jax.Array, num_classes: int) -> jax.Array:
    """Flip-equivariant stand-in for relevance: ``[V, S, S, 3]`` -> ``[V, K, g, g]``.

    Class k is the mean of channel k (mod 3) of the [0, 1] image, pooled to the grid.
    """
    rgb = pixels * CLIP_STD + CLIP_MEAN
    planes = jnp.stack([rgb[..., k % 3] for k in range(num_classes)], axis=1)
    num, _, side, _ = planes.shape
    cell = side // GRID
    return planes.reshape(num, num_classes, GRID, cell, GRID, cell).mean(axis=(3, 5))


@functools.partial(jax.jit, static_argnames=("config", "num_classes"))
def run_tta(canvas, content_hw, config, num_classes):
    """The device part of TTA as one program, as the lead composes it."""
    run_tta.traces += 1  # Python side effect: runs once per trace only.
    boxes, flips = tta.variant_boxes(content_hw, config)
    pixels = tta.crop_variants(canvas, boxes, flips, config.input_size)
    maps = fake_relevance(pixels, num_classes)
    return tta.warp_back(maps, boxes, flips, content_hw, config)


run_tta.traces = 0
boxes_of = jax.jit(tta.variant_boxes, static_argnums=1)
weights_of = jax.jit(tta.coverage_weights, static_argnums=2)


def segment(image, config=CONFIG, num_classes=1):
    """Whole pipeline on one image.

    Returns ``[K, H, W]`` scores, ``[K, C, C]`` canvas scores and the content size.
    """
    canvas, content_hw = tta.prepare_canvas(image, config)
    scores = np.asarray(run_tta(canvas, np.asarray(content_hw, np.int32), config, num_classes))
    return tta.finish(scores, content_hw, image.shape[:2]), scores, content_hw


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_default_config_has_about_eight_variants_and_full_image_first():
    config = tta.TTAConfig()
    assert tta.num_variants(config) == 8
    boxes, flips = boxes_of(np.asarray((384, 512)), config)
    np.testing.assert_allclose(boxes[:2], [[0, 0, 384, 512]] * 2)
    assert flips.tolist() == [False, True] + [False] * 6
    # Crops at 0.6 of the short side are square on a 4:3 image.
    crop_sides = np.asarray(boxes[2:, 2:] - boxes[2:, :2])
    np.testing.assert_allclose(crop_sides, 0.6 * 384, rtol=1e-5)


@pytest.mark.parametrize("config", [
    CONFIG,
    tta.TTAConfig(scales=(0.6,), flip=False, input_size=64, canvas_size=128),
    tta.TTAConfig(scales=(1.0, 0.7, 0.4), overlap=0.1, input_size=64, canvas_size=128),
    tta.TTAConfig(scales=(1.0,), flip=False, input_size=64, canvas_size=128),
])
@pytest.mark.parametrize("content_hw", [(96, 128), (128, 96), (128, 128), (1, 128), (128, 3)])
def test_boxes_cover_content_stay_inside_and_overlap(config, content_hw):
    boxes, flips = boxes_of(np.asarray(content_hw), config)
    boxes = np.asarray(boxes)
    height, width = content_hw
    assert boxes.shape == (tta.num_variants(config), 4) and flips.shape == (len(boxes),)
    assert np.all(boxes[:, :2] >= -1e-4) and np.all(boxes[:, 2:] > boxes[:, :2])
    assert np.all(boxes[:, 2] <= height + 1e-4) and np.all(boxes[:, 3] <= width + 1e-4)
    # Every content pixel centre lies in some box (crop-only configs included).
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    in_y = (ys[None] > boxes[:, 0:1]) & (ys[None] < boxes[:, 2:3])
    in_x = (xs[None] > boxes[:, 1:2]) & (xs[None] < boxes[:, 3:4])
    assert np.einsum("vy,vx->yx", in_y, in_x).min() >= 1
    # ... and so carries weight in the average.
    wy, wx = weights_of(boxes, np.asarray(content_hw), config)
    assert np.einsum("vy,vx->yx", wy, wx)[:height, :width].min() > 0
    # Neighbouring crops of one scale overlap by at least `overlap` of their side.
    for scale in config.scales:
        if scale == 1.0:
            continue
        crops = boxes[np.isclose(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]),
                                 scale * min(content_hw), rtol=1e-4)]
        for axis in (0, 1):
            starts = np.unique(crops[:, axis].round(3))
            ends = np.unique(crops[:, axis + 2].round(3))
            side = ends[0] - starts[0]
            assert np.all((ends[:-1] - starts[1:]) / side >= config.overlap - 1e-4)


@pytest.mark.parametrize("content_hw", [(96, 128), (128, 77), (5, 128)])
def test_variant_set_is_mirror_symmetric(content_hw):
    boxes, flips = boxes_of(np.asarray(content_hw), CONFIG)
    boxes, flips = np.asarray(boxes), np.asarray(flips)
    width = content_hw[1]
    mirrored = np.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], -1)
    key = lambda b, f: sorted(zip(np.round(b, 3).tolist(), f.tolist()))
    # With a flip-equivariant relevance, mirrored boxes (same flip flags) give
    # the mirrored maps, so this is what makes the TTA result flip-equivariant.
    assert key(mirrored, flips) == key(boxes, flips)
    assert key(boxes, flips) != key(boxes + 1.0, flips)  # the comparison can fail


@pytest.mark.parametrize("image_hw", [(45, 70), (70, 45), (300, 16)])
def test_flipped_image_gives_flipped_map(image_hw):
    # Portrait images leave canvas padding right of the content: resampling
    # near that border must treat it like the left one.
    image = random_image(*image_hw, seed=1)
    scores, canvas_scores, (height, width) = segment(image, num_classes=3)
    flipped_scores, flipped_canvas, _ = segment(np.ascontiguousarray(image[:, ::-1]), num_classes=3)
    np.testing.assert_allclose(flipped_canvas[:, :height, :width],
                               canvas_scores[:, :height, :width][:, :, ::-1], atol=3e-5)
    np.testing.assert_allclose(flipped_scores, scores[:, :, ::-1], atol=3e-5)
    # Not vacuous: the map itself is not mirror symmetric.
    assert np.abs(scores - scores[:, :, ::-1]).max() > 0.1


@pytest.mark.parametrize("image_hw", [(60, 80), (80, 60), (16, 16), (16, 2000), (2000, 16)])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_scores_are_normalised_per_class_and_zero_outside_content(image_hw, num_classes):
    scores, canvas_scores, (height, width) = segment(random_image(*image_hw), CONFIG, num_classes)
    assert scores.shape == (num_classes, *image_hw) and scores.dtype == np.float32
    assert np.all(np.isfinite(scores)) and scores.min() >= 0 and scores.max() <= 1
    content = canvas_scores[:, :height, :width]
    np.testing.assert_allclose(content.min(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(content.max(axis=(1, 2)), 1, atol=1e-6)
    outside = canvas_scores.copy()
    outside[:, :height, :width] = 0
    assert np.all(outside == 0)


@functools.partial(jax.jit, static_argnames="config")
def _three_class_scores(canvas, content_hw, config):
    boxes, flips = tta.variant_boxes(content_hw, config)
    base = fake_relevance(tta.crop_variants(canvas, boxes, flips, config.input_size), 1)
    # Class 1 is an affine image of class 0; class 2 is constant (no information).
    maps = jnp.concatenate([base, 7.0 * base - 3.0, jnp.full_like(base, 0.5)], axis=1)
    return tta.warp_back(maps, boxes, flips, content_hw, config)


def test_each_class_is_normalised_on_its_own():
    canvas, content_hw = tta.prepare_canvas(random_image(50, 64, seed=2), CONFIG)
    scores = np.asarray(_three_class_scores(canvas, np.asarray(content_hw), CONFIG))
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
    assert scores[0].max() == pytest.approx(1.0) and np.all(scores[2] == 0)


@pytest.mark.parametrize("transform", [lambda im: im, lambda im: im[:, ::-1],
                                       lambda im: im.transpose(1, 0, 2)])
def test_warp_back_puts_each_variant_where_it_was_cropped(transform):
    """A brightness ramp seen through the variants and warped back is the same ramp."""
    ramp = np.linspace(0, 255, 120)[None, :, None].repeat(90, 0).repeat(3, 2).astype(np.uint8)
    image = np.ascontiguousarray(transform(ramp))
    scores, _, _ = segment(image)
    expected = image[..., 0].astype(np.float32).ravel() / 255
    # Clamped edge cells flatten the ramp's ends, so min-max normalisation
    # stretches it slightly: compare up to an affine map.
    design = np.stack([expected, np.ones_like(expected)], axis=1)
    (slope, offset), *_ = np.linalg.lstsq(design, scores[0].ravel(), rcond=None)
    residual = np.abs(scores[0].ravel() - design @ [slope, offset])
    # A misplaced or wrongly (un)flipped variant would bend the ramp by ~0.1 or more.
    assert 0.95 < slope < 1.2
    assert residual.mean() < 0.01 and residual.max() < 0.06


def test_new_image_size_does_not_retrace():
    segment(random_image(40, 30, seed=3), num_classes=2)
    traces = run_tta.traces
    for image_hw in [(33, 90), (300, 200), (16, 2000)]:
        segment(random_image(*image_hw, seed=4), num_classes=2)
    assert run_tta.traces == traces


def test_crop_variants_gives_clip_pixels_of_each_box():
    config = CONFIG
    canvas, content_hw = tta.prepare_canvas(random_image(64, 96, seed=5), config)
    boxes, flips = boxes_of(np.asarray(content_hw), config)
    crop = jax.jit(tta.crop_variants, static_argnums=3)
    pixels = np.asarray(crop(canvas, boxes, flips, config.input_size))
    assert pixels.shape == (tta.num_variants(config), 64, 64, 3) and pixels.dtype == np.float32
    # The full box of this 2:3 content is squashed to a square: downsample its rows.
    rgb01 = pixels * CLIP_STD + CLIP_MEAN
    full = canvas[:content_hw[0], :content_hw[1]].astype(np.float32) / 255
    np.testing.assert_allclose(rgb01[0].mean(axis=(0, 1)), full.mean(axis=(0, 1)), atol=0.02)
    np.testing.assert_allclose(rgb01[1], rgb01[0][:, ::-1], atol=1e-5)


def test_prepare_canvas_fits_long_side_and_replicates_edges():
    image = random_image(30, 75, seed=6)
    canvas, (height, width) = tta.prepare_canvas(image, CONFIG)
    assert canvas.shape == (128, 128, 3) and canvas.dtype == np.uint8
    assert (height, width) == (51, 128)
    below = np.repeat(canvas[height - 1:height], 128 - height, axis=0)
    np.testing.assert_array_equal(canvas[height:], below)
    canvas, (height, width) = tta.prepare_canvas(random_image(2000, 16), CONFIG)
    assert (height, width) == (128, 1)
    np.testing.assert_array_equal(canvas[:, 1:], np.repeat(canvas[:, :1], 127, 1))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((0, 8, 3), np.uint8)])
def test_prepare_canvas_rejects_bad_images(bad):
    with pytest.raises(ValueError, match="TTA views need a non-empty uint8 .*as_rgb_uint8"):
        tta.prepare_canvas(bad, CONFIG)


@pytest.mark.parametrize("kwargs", [
    {"scales": ()}, {"scales": (1.0, 1.5)}, {"scales": (0.5, 0.5)}, {"overlap": 1.0},
    {"scales": (0.6,)},  # flip needs the full image
    {"feather": 0.9}, {"input_size": 0}, {"grid_aspect": 0.5},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="TTAConfig"):
        tta.TTAConfig(**kwargs)


def test_config_is_hashable():
    assert hash(tta.TTAConfig()) == hash(tta.TTAConfig())


def test_prompt_templates_have_one_placeholder():
    from jaxseg.config import PromptConfig
    from jaxseg.labels.presets import METHOD_PROMPTS

    for templates, _, _ in METHOD_PROMPTS.values():
        assert all(t.format("cat").count("cat") == 1 for t in templates)
    with pytest.raises(ValueError, match="PromptConfig.templates"):
        PromptConfig(templates=("no placeholder",))
