"""Tests of the per-pixel distillation classifier (rows in, probabilities out)."""

import jax
import numpy as np

from jaxseg.refinement import classifier
from jaxseg.refinement.classifier import ClassifierConfig, fit_classifier
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.features import FOURIER_COLUMNS, encode_image

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


def _fit(image, truth, num_labels, config=ClassifierConfig()):
    encoded = encode_image(image, None, RefineConfig())
    fitted = fit_classifier(jax.random.key(0), encoded.table, encoded.index,
                            _sparse_labels(truth).ravel(), num_labels, FOURIER_COLUMNS, config)
    return encoded, fitted


def test_classifier_trained_on_sparse_pixels_labels_every_pixel():
    image, truth = _scene()
    encoded, fitted = _fit(image, truth, 2)
    probabilities = fitted.predict(encoded.table)[encoded.index].T.reshape((2,) + truth.shape)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), truth)


def test_fit_is_deterministic_for_a_key_and_changes_with_it():
    image, truth = _scene()
    encoded, first = _fit(image, truth, 2)
    _, second = _fit(image, truth, 2)
    np.testing.assert_array_equal(first.predict(encoded.table), second.predict(encoded.table))
    other = fit_classifier(jax.random.key(1), encoded.table, encoded.index,
                           _sparse_labels(truth).ravel(), 2, FOURIER_COLUMNS, ClassifierConfig())
    assert not np.array_equal(first.predict(encoded.table), other.predict(encoded.table))


def test_labels_in_one_bucket_and_any_image_size_share_compiled_programs():
    image, truth = _scene()
    encoded, fitted = _fit(image, truth, 2)
    fitted.predict(encoded.table)
    fits, predictions = classifier._fit._cache_size(), classifier._predict_chunk._cache_size()
    other_image, other_truth = _scene(33, 71, seed=1)
    encoded, fitted = _fit(other_image, other_truth, 5)
    fitted.predict(encoded.table)
    assert classifier._fit._cache_size() == fits
    assert classifier._predict_chunk._cache_size() == predictions
