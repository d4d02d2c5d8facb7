"""The coarse-map recipes of scripts/refine_recipes.py, heldout_recipes.py and
blind_recipes.py keep their documented contract."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import blind_recipes  # noqa: E402
import heldout_recipes  # noqa: E402
import refine_recipes  # noqa: E402

ALL_RECIPES = {**refine_recipes.RECIPES, **heldout_recipes.HELD_OUT, **blind_recipes.BLIND}


def _scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3)).astype(np.uint8)
    masks = np.zeros((2, 96, 128), bool)
    masks[0, 20:70, 10:60] = True
    masks[1, 30:90, 70:120] = True
    return image, masks


@pytest.mark.parametrize("name", list(ALL_RECIPES))
def test_recipe_maps_are_deterministic_unit_maps_of_the_image_size(name):
    image, masks = _scene()
    recipe = ALL_RECIPES[name]
    maps = recipe(masks, image, np.random.default_rng(3))
    again = recipe(masks, image, np.random.default_rng(3))
    assert maps.shape == masks.shape and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, again)
    # Each map peaks near 1 (at its grid cell's centre; bilinear upsampling may miss it).
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert (maps.max(axis=(1, 2)) > 0.9).all()
    # Each map is higher on its own object than elsewhere on average.
    for k in range(len(masks)):
        assert maps[k][masks[k]].mean() > maps[k][~masks[k]].mean()


def test_argmax_and_crf_baselines_recover_clean_maps():
    image, masks = _scene()
    gt = np.where(masks[0], 1, np.where(masks[1], 2, 0))
    maps = masks.astype(np.float32)
    np.testing.assert_array_equal(refine_recipes.argmax_predict(maps, 0.5), gt)
    confusion = np.zeros((refine_recipes.NUM_CLASS_IDS,) * 2, np.int64)
    refine_recipes.add_prediction(confusion, gt, [1, 2], refine_recipes.argmax_predict(maps, 0.5))
    assert refine_recipes.miou(confusion) == pytest.approx(100.0)
