"""The composed pipeline: label handling, image conversion, determinism, batching."""

import numpy as np
import pytest

import jaxseg
from jaxseg.pipeline import as_rgb_uint8, clean_labels, segment_batch

CONFIG = jaxseg.SegmentConfig(tta=jaxseg.TTAConfig(input_size=32, canvas_size=64))


def two_region_image():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :30] = (200, 30, 30)
    image[:, 30:] = (30, 30, 200)
    return image


def test_clean_labels_drops_empty_and_repeated_names():
    with pytest.warns(UserWarning):
        assert clean_labels(["cat", " ", "Cat", "sofa ", "potted plant", "pottedplant"]) == [
            "cat", "sofa", "potted plant"]
    with pytest.raises(ValueError, match="list of names"):
        clean_labels("cat,sofa")


def test_image_kinds_are_converted():
    grey = np.full((5, 6), 7, np.uint8)
    assert as_rgb_uint8(grey).shape == (5, 6, 3)
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 3] = 255
    assert not as_rgb_uint8(rgba).any()
    sixteen = np.full((5, 6, 3), 65535, np.uint16)
    assert (as_rgb_uint8(sixteen) == 255).all()
    assert (as_rgb_uint8(np.ones((5, 6, 3))) == 255).all()
    with pytest.raises(ValueError, match="non-empty"):
        as_rgb_uint8(np.zeros((0, 6, 3), np.uint8))


def test_segment_outputs_and_determinism(tiny_clip):
    image = two_region_image()
    first = jaxseg.segment(tiny_clip, image, ["red thing", "blue thing"], CONFIG)
    second = jaxseg.segment(tiny_clip, image, ["red thing", "blue thing"], CONFIG)
    assert first.mask.shape == (40, 60) and first.mask.dtype == np.int32
    assert first.scores.shape == (2, 40, 60) and first.labels == ["red thing", "blue thing"]
    assert set(np.unique(first.mask)) <= {0, 1, 2}
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.scores, second.scores)
    assert set(first.timings) == {"relevance", "refine"}


def test_no_labels_is_all_background(tiny_clip):
    result = jaxseg.segment(tiny_clip, two_region_image(), [], CONFIG)
    assert result.scores.shape == (0, 40, 60) and not result.mask.any()


def test_batch_equals_single(tiny_clip):
    rng = np.random.RandomState(0)
    images = [(rng.rand(30, 50, 3) * 255).astype(np.uint8), two_region_image()]
    labels = [["cat"], ["red thing", "blue thing", "table"]]
    batch = segment_batch(tiny_clip, images, labels, CONFIG, batch_size=4)
    for image, names, result in zip(images, labels, batch):
        alone = jaxseg.segment(tiny_clip, image, names, CONFIG)
        np.testing.assert_allclose(result.scores, alone.scores, atol=1e-5)
        assert result.labels == names
        assert np.mean(result.mask == alone.mask) > 0.99
