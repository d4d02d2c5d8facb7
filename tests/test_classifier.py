"""Tests of the per-pixel distillation classifier."""

import numpy as np

from jaxseg import classifier
from jaxseg.classifier import encode_image, fit_classifier
from jaxseg.refine import RefineConfig

RED, BLUE = (200, 40, 40), (40, 60, 190)


def _scene(height=40, width=56, seed=0):
    """Red left half, blue right half, with pixel noise: image [H, W, 3] and truth [H, W]."""
    truth = np.zeros((height, width), np.int32)
    truth[:, width // 2:] = 1
    image = np.where(truth[..., None] == 0, np.array(RED), np.array(BLUE))
    noise = np.random.default_rng(seed).integers(-15, 16, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), truth


def _sparse_labels(truth, every=7):
    """Training labels on a sparse grid of pixels, -1 elsewhere."""
    pseudo = np.full(truth.shape, -1, np.int32)
    pseudo[::every, ::every] = truth[::every, ::every]
    return pseudo


def _fit(image, truth, num_labels, config=RefineConfig()):
    encoded = encode_image(image, None, config)
    return encoded, fit_classifier(encoded, _sparse_labels(truth), num_labels, config)


def test_classifier_trained_on_sparse_pixels_labels_every_pixel():
    image, truth = _scene()
    encoded, fitted = _fit(image, truth, 2)
    probabilities = fitted.probabilities(encoded)
    assert probabilities.shape == (2,) + truth.shape and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), truth)


def test_probabilities_at_pixels_equal_those_of_the_whole_image_and_of_a_larger_copy():
    image, truth = _scene()
    config = RefineConfig()
    encoded, fitted = _fit(image, truth, 3, config)
    whole = fitted.probabilities(encoded).reshape(3, -1)
    pixels = np.random.default_rng(1).integers(0, truth.size, 200)
    np.testing.assert_allclose(fitted.probabilities_at(image, pixels, config), whole[:, pixels],
                               atol=1e-6)
    # On a 2x larger copy the local window is read every 2 pixels: same inputs, same output.
    larger = np.kron(image, np.ones((2, 2, 1), np.uint8))
    rows, cols = np.divmod(pixels, image.shape[1])
    on_larger = fitted.probabilities_at(larger, 2 * rows * larger.shape[1] + 2 * cols, config)
    np.testing.assert_allclose(on_larger, whole[:, pixels], atol=1e-5)


def test_labels_in_one_bucket_and_any_image_size_share_compiled_programs():
    image, truth = _scene()
    encoded, fitted = _fit(image, truth, 2)
    fitted.probabilities(encoded)
    fits, predictions = classifier._fit._cache_size(), classifier._predict_chunk._cache_size()
    other_image, other_truth = _scene(33, 71, seed=1)
    encoded, fitted = _fit(other_image, other_truth, 5)
    fitted.probabilities(encoded)
    assert classifier._fit._cache_size() == fits
    assert classifier._predict_chunk._cache_size() == predictions
