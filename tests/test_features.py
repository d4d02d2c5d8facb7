"""Tests of the distillation classifier's per-pixel inputs."""

import numpy as np
from skimage.color import rgb2lab

from jaxseg.refinement.features import (COLOUR_DIMS, LOCAL_DIMS, POSITION_DIMS, encode_pixels,
                                   local_colour_statistics, rgb_to_lab)
from jaxseg.refinement.config import RefineConfig

RED, BLUE = (200, 40, 40), (40, 60, 190)


def _split_image(height=12, width=16):
    """Red left half, blue right half."""
    image = np.empty((height, width, 3), np.uint8)
    image[:, :width // 2], image[:, width // 2:] = RED, BLUE
    return image


def test_rgb_to_lab_matches_skimage():
    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3)).astype(np.uint8)
    rgb[:4] = [[0, 0, 0], [255, 255, 255], [1, 1, 1], [10, 200, 30]]  # both branches of f(t)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and lab.shape == (5000, 3)
    np.testing.assert_allclose(lab, rgb2lab(rgb[:, None])[:, 0], atol=1e-3)


def test_local_statistics_stop_at_colour_edges():
    image = _split_image()
    next_to_edge = np.array([5 * 16 + 7, 5 * 16 + 8])  # the red and the blue pixel at the edge
    own = rgb_to_lab(image.reshape(-1, 3)[next_to_edge])
    edge_aware = local_colour_statistics(image, next_to_edge, radius=3, sigma=2.0, colour_range=20.0)
    assert edge_aware.shape == (2, LOCAL_DIMS)
    # Red and blue are ~100 Lab units apart: the other side weighs exp(-12), nothing.
    np.testing.assert_allclose(edge_aware[:, :3], own, atol=1e-2)
    np.testing.assert_allclose(edge_aware[:, 3:], 0.0, atol=0.5)
    # A window that ignores colour mixes both sides: the mean moves, the spread grows.
    plain = local_colour_statistics(image, next_to_edge, radius=3, sigma=2.0, colour_range=1e6)
    assert np.abs(plain[:, :3] - own).max() > 20 and plain[:, 3:].max() > 20


def test_local_statistics_of_a_few_pixels_equal_those_of_the_whole_image():
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    # None reads shifted copies of the whole image; pixel lists read per pixel.
    everywhere = local_colour_statistics(image, None, radius=2, sigma=1.0, colour_range=20.0)
    assert everywhere.shape == (600, 6)
    few = np.array([0, 29, 31, 310, 599])  # corners and inside: edge clamping included
    np.testing.assert_allclose(local_colour_statistics(image, few, 2, 1.0, 20.0), everywhere[few],
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(local_colour_statistics(image, np.arange(600), 2, 1.0, 20.0),
                               everywhere, rtol=1e-5, atol=1e-4)


def test_local_statistics_read_with_a_step_describe_the_original_on_a_larger_copy():
    image = np.random.default_rng(2).integers(0, 256, (10, 14, 3)).astype(np.uint8)
    larger = np.kron(image, np.ones((2, 2, 1), np.uint8))  # every pixel a 2 x 2 block
    small = local_colour_statistics(image, np.arange(140), 2, 1.0, 20.0)
    rows, cols = np.divmod(np.arange(140), 14)
    on_larger = local_colour_statistics(larger, (2 * rows) * 28 + 2 * cols, 2, 1.0, 20.0, step=2.0)
    np.testing.assert_allclose(on_larger, small, rtol=1e-5, atol=1e-4)
    whole_larger = local_colour_statistics(larger, None, 2, 1.0, 20.0, step=2.0)
    np.testing.assert_allclose(whole_larger[(2 * rows) * 28 + 2 * cols], small, rtol=1e-5, atol=1e-4)


def test_encoded_rows_of_a_pixel_subset_equal_the_full_encoding():
    image = np.random.default_rng(3).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    reduced = np.random.default_rng(4).normal(size=(8, 3, 4)).astype(np.float32)
    config = RefineConfig()
    table, index = encode_pixels(image, reduced, config)
    assert table.shape == (24 * 32, COLOUR_DIMS + POSITION_DIMS + LOCAL_DIMS + config.feature_dims)
    pixels = np.array([5, 5, 100, 767])  # repeats are allowed (training pixels are drawn with replacement)
    subset, subset_index = encode_pixels(image, reduced, config, pixels)
    np.testing.assert_allclose(subset[subset_index], table[index[pixels]], rtol=1e-5, atol=1e-5)


def test_colour_alone_is_one_row_per_distinct_colour():
    image = _split_image()
    config = RefineConfig(local_radius=0.0)
    table, index = encode_pixels(image, None, config)
    assert len(table) == 2 and index.shape == (12 * 16,)
    np.testing.assert_allclose(table[index, :3], rgb_to_lab(image.reshape(-1, 3)) / config.colour_bandwidth,
                               rtol=1e-6)
    assert not table[:, 3:].any()  # position, local statistics and features are off
    with_local = encode_pixels(image, None, RefineConfig())[0]
    assert with_local.shape == (12 * 16, COLOUR_DIMS + POSITION_DIMS + LOCAL_DIMS + config.feature_dims)
    assert with_local[:, 3 + POSITION_DIMS:3 + POSITION_DIMS + LOCAL_DIMS].any()
