"""Tests of the per-pixel distillation classifier (rows in, probabilities out)."""

import jax
import numpy as np

from jaxseg.refinement import classifier
from jaxseg.refinement.classifier import ClassifierConfig
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.features import FOURIER_COLUMNS, encode_pixels

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


def _fit(image, truth, num_labels, key=0, config=ClassifierConfig()):
    rows = encode_pixels(image, np.array(image.shape[:2]), None, None, RefineConfig())
    mask = classifier.output_mask(num_labels, classifier.padded_outputs(num_labels, config))
    params = classifier.fit(jax.random.key(key), rows, _sparse_labels(truth).ravel(), mask, config,
                            FOURIER_COLUMNS)
    return rows, mask, params


def test_classifier_trained_on_sparse_pixels_labels_every_pixel():
    image, truth = _scene()
    rows, mask, params = _fit(image, truth, 2)
    probabilities = np.asarray(classifier.predict(params, rows, mask))
    assert probabilities.shape == (truth.size, 8) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert probabilities[:, 2:].max() < 1e-6  # padding outputs take no probability
    np.testing.assert_array_equal(probabilities.argmax(axis=1).reshape(truth.shape), truth)


def test_fit_is_deterministic_for_a_key_and_changes_with_it():
    image, truth = _scene()
    rows, mask, first = _fit(image, truth, 2)
    _, _, second = _fit(image, truth, 2)
    _, _, other = _fit(image, truth, 2, key=1)
    np.testing.assert_array_equal(classifier.predict(first, rows, mask),
                                  classifier.predict(second, rows, mask))
    assert not np.array_equal(classifier.predict(first, rows, mask),
                              classifier.predict(other, rows, mask))


def test_sampled_rows_are_labelled_and_drawn_per_class_as_configured():
    labels = np.full(4000, -1, np.int32)
    labels[:3000:3], labels[3000:3100] = 0, 1  # 1000 rows of class 0, 100 of class 1
    key = jax.random.key(0)
    for balance, expected_share in ((0.0, 100 / 1100), (1.0, 0.5)):
        chosen = np.asarray(classifier.sample_rows(key, labels, 20000, 8, balance))
        assert (labels[chosen] >= 0).all()
        assert abs((labels[chosen] == 1).mean() - expected_share) < 0.02
