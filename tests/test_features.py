"""Tests of the distillation classifier's per-pixel inputs."""

import numpy as np
from skimage.color import rgb2lab

from jaxseg.imaging import resize_maps
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.features import (LOCAL_DIMS, encode_pixels, local_colour_statistics,
                                        reduce_features, rgb_to_lab, upsample_grid)

RED, BLUE = (200, 40, 40), (40, 60, 190)


def _split_image(height=12, width=16):
    """Red left half, blue right half."""
    image = np.empty((height, width, 3), np.uint8)
    image[:, :width // 2], image[:, width // 2:] = RED, BLUE
    return image


def test_rgb_to_lab_matches_skimage():
    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3)).astype(np.uint8)
    rgb[:4] = [[0, 0, 0], [255, 255, 255], [1, 1, 1], [10, 200, 30]]  # both branches of f(t)
    lab = np.asarray(rgb_to_lab(rgb))
    assert lab.dtype == np.float32 and lab.shape == (5000, 3)
    np.testing.assert_allclose(lab, rgb2lab(rgb[:, None])[:, 0], atol=1e-3)


def _statistics(image, colour_range):
    lab = rgb_to_lab(image)
    return np.asarray(local_colour_statistics(lab, np.array(image.shape[:2]), 3, 3, 2.0, colour_range))


def test_local_statistics_stop_at_colour_edges():
    image = _split_image()
    own = np.asarray(rgb_to_lab(image[5, 7:9]))  # the red and the blue pixel at the edge
    edge_aware = _statistics(image, 20.0)[5, 7:9]
    assert edge_aware.shape == (2, LOCAL_DIMS)
    # Red and blue are ~100 Lab units apart: the other side weighs exp(-12), nothing.
    np.testing.assert_allclose(edge_aware[:, :3], own, atol=1e-2)
    np.testing.assert_allclose(edge_aware[:, 3:], 0.0, atol=0.5)
    # A window that ignores colour mixes both sides: the mean moves, the spread grows.
    plain = _statistics(image, 1e6)[5, 7:9]
    assert np.abs(plain[:, :3] - own).max() > 20 and plain[:, 3:].max() > 20


def test_encoded_rows_of_an_image_do_not_depend_on_the_canvas_around_it():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3)).astype(np.uint8)
    features = np.random.default_rng(1).normal(size=(3, 4, 16)).astype(np.float32)
    config = RefineConfig(local_radius=0.1, local_sigma=0.05, position_weight=2.0)
    alone = np.asarray(encode_pixels(image, np.array([20, 30]), features, np.array([3, 4]), config))
    canvas = np.full((32, 40, 3), 255, np.uint8)
    canvas[:20, :30] = image
    big_features = np.full((5, 6, 16), 7.0, np.float32)
    big_features[:3, :4] = features
    padded = np.asarray(encode_pixels(canvas, np.array([20, 30]), big_features, np.array([3, 4]), config))
    np.testing.assert_allclose(padded.reshape(32, 40, -1)[:20, :30], alone.reshape(20, 30, -1),
                               atol=1e-4)


def test_reduced_features_are_the_principal_components_of_the_real_cells():
    rng = np.random.default_rng(0)
    features = np.full((6, 7, 12), 50.0, np.float32)  # padding cells far from the data
    features[:4, :5] = rng.normal(size=(4, 5, 12)) * np.linspace(3, 0.1, 12)
    reduced = np.asarray(reduce_features(features, np.array([4, 5]), 3))
    assert reduced.shape == (3, 6, 7)
    assert np.abs(reduced[:, 4:]).max() == 0 and np.abs(reduced[:, :, 5:]).max() == 0
    cells = features[:4, :5].reshape(-1, 12)
    centred = cells - cells.mean(0)
    left, singular, _ = np.linalg.svd(centred, full_matrices=False)
    expected = left[:, :3] * singular[:3]
    expected /= expected[:, 0].std()
    got = reduced[:, :4, :5].reshape(3, -1).T
    # Components are defined up to sign.
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-3)


def test_upsampled_grid_equals_the_resized_maps():
    rng = np.random.RandomState(0)
    for grid, size in [((14, 14), (300, 225)), ((14, 19), (37, 53))]:
        maps = rng.randn(8, *grid).astype(np.float32)
        padded = np.zeros((8, grid[0] + 2, grid[1] + 3), np.float32)
        padded[:, :grid[0], :grid[1]] = maps
        canvas_hw = (size[0] + 5, size[1] + 7)
        got = np.asarray(upsample_grid(padded, np.array(grid), canvas_hw, np.array(size)))
        np.testing.assert_allclose(got[:size[0], :size[1]].transpose(2, 0, 1),
                                   resize_maps(maps, size), atol=1e-5)
