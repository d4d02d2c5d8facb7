"""Refinement: coarse per-label relevance maps -> a label mask that follows object boundaries.

Three stages, each usable alone, chained by :func:`refine` (the stage's only orchestrator),
after the maps are smoothed along the image's edges
(:func:`jaxseg.refinement.smoothing.edge_aware_smooth`):

1. :func:`jaxseg.refinement.seeds.pseudo_labels` keeps only the pixels the coarse maps
   are sure about, at thresholds placed on each image's own levels (Otsu's split).
2. :func:`distill` fits a small per-pixel classifier (background + K labels) on those
   pixels (test-time distillation) and predicts probabilities for every pixel.
3. :func:`graph_cut` minimises a multi-label Potts energy (unaries ``-log p``,
   contrast-sensitive pairwise term on the 8-connected grid) by alpha-expansion,
   each move a max-flow cut computed by PyMaxflow.

Then, GrabCut-style, the classifier is fitted again on the cut's labels
(:func:`jaxseg.refinement.seeds.reestimation_seeds`) and the image cut again
(``reestimation_rounds``).

The stage is independent of CLIP: it sees an image, K score maps and optionally
dense features.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxseg.imaging import resize_image, resize_maps
from jaxseg.refinement.classifier import PixelClassifier, fit_classifier
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.features import (FOURIER_COLUMNS, EncodedImage, encode_image,
                                        encode_pixels)
from jaxseg.refinement.graphcut import MIN_PROBABILITY, alpha_expansion
from jaxseg.refinement.smoothing import edge_aware_smooth
from jaxseg.refinement.seeds import pseudo_labels, reestimation_seeds, score_probabilities


def distill(image: np.ndarray, pseudo: np.ndarray, num_classes: int,
            features: np.ndarray | None = None,
            config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Test-time distillation: per-pixel probabilities from a classifier fit on confident pixels.

    Each pixel is described by its Lab colour (and, if ``position_weight`` > 0, its
    position) through fixed random Fourier features (the nonlinear colour map), plus
    the edge-aware Lab mean and standard deviation around it (``local_*``) and the top
    ``feature_dims`` principal components of ``features`` upsampled bilinearly (see
    ``jaxseg.refinement.features.encode_pixels``). A one-hidden-layer MLP (background +
    ``num_classes`` outputs; ``jaxseg.refinement.classifier``) is trained with Adam on
    confident pixels drawn with the key of ``config.seed`` (deterministic).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      pseudo: int32 ``[H, W]`` from :func:`jaxseg.refinement.seeds.pseudo_labels` (-1 unknown).
      num_classes: K, the number of labels (background excluded).
      features: optional float ``[h, w, C]`` dense features of the image.
      config: the refinement settings.

    Returns:
      float32 ``[K + 1, H, W]`` probabilities (background first); uniform when no
      pixel is confident.
    """
    if pseudo.shape != image.shape[:2]:
        raise ValueError(f"distill: pseudo must be [H, W] = {image.shape[:2]} like the image, "
                         f"got {pseudo.shape}")
    if not (pseudo >= 0).any():
        return np.full((num_classes + 1,) + image.shape[:2], 1.0 / (num_classes + 1), np.float32)
    encoded = encode_image(image, features, config)
    return _probabilities(_fit(encoded, pseudo, num_classes + 1, config), encoded)


def _fit(encoded: EncodedImage, pseudo: np.ndarray, num_labels: int,
         config: RefineConfig) -> PixelClassifier:
    """The distillation classifier fitted on the labelled pixels of ``pseudo`` ``[H, W]``."""
    return fit_classifier(jax.random.key(config.seed), encoded.table, encoded.index,
                          pseudo.ravel(), num_labels, FOURIER_COLUMNS, config.classifier)


def _probabilities(classifier: PixelClassifier, encoded: EncodedImage) -> np.ndarray:
    """Probabilities of every pixel of an encoded image: float32 ``[L, H, W]``."""
    rows = classifier.predict(encoded.table)
    return np.ascontiguousarray(rows[encoded.index].T).reshape((-1,) + encoded.shape)


def graph_cut(image: np.ndarray, probabilities: np.ndarray,
              config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Labels minimising a contrast-sensitive Potts energy by alpha-expansion.

    ``E(f) = sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]`` on the 8-connected
    grid, ``w_pq`` as in GrabCut (see ``jaxseg.refinement.graphcut.grid_edges``). Starting from the
    per-pixel argmax, each label in turn is expanded by an optimal max-flow move
    (PyMaxflow), for at most ``max_cycles`` sweeps or until a sweep changes nothing.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image (sets the pairwise contrast).
      probabilities: float ``[L, H, W]`` per-pixel label probabilities.
      config: ``pairwise_weight`` and ``max_cycles``.

    Returns:
      int32 ``[H, W]`` labels in ``0 .. L - 1``.
    """
    return alpha_expansion(image, probabilities, config.pairwise_weight, config.max_cycles,
                           config.move_margin)


def _validate(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"refine: image must be uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}")
    if scores.ndim != 3 or scores.shape[1:] != image.shape[:2]:
        raise ValueError(f"refine: scores must be float [K, H, W] with (H, W) = {image.shape[:2]} "
                         f"of the image, got {scores.shape}")
    if not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"refine: scores must be a float array in [0, 1], got dtype {scores.dtype}")
    if features is not None and (features.ndim != 3 or not np.issubdtype(features.dtype, np.floating)):
        raise ValueError(f"refine: features must be float [h, w, C] or None, got "
                         f"{features.dtype} {features.shape}")


def _mix_prior(distilled: np.ndarray, prior: np.ndarray, config: RefineConfig) -> np.ndarray:
    """``distilled * prior ** prior_weight``, renormalised: ``[K + 1, H, W]`` (``prior``
    from :func:`score_probabilities`)."""
    log_mixed = np.log(np.maximum(distilled, MIN_PROBABILITY)) + config.prior_weight * np.log(
        np.maximum(prior, MIN_PROBABILITY))
    mixed = np.exp(log_mixed - log_mixed.max(axis=0, keepdims=True))
    return (mixed / mixed.sum(axis=0, keepdims=True)).astype(np.float32)


def _reduced_cut(image: np.ndarray, probabilities: np.ndarray, config: RefineConfig) -> np.ndarray:
    """:func:`graph_cut` at ``reestimation_cut_scale`` of the image's size, labels
    returned at full size by nearest neighbour: ``[H, W]`` int32."""
    height, width = image.shape[:2]
    reduced_hw = (max(1, round(height * config.reestimation_cut_scale)),
                  max(1, round(width * config.reestimation_cut_scale)))
    if reduced_hw == (height, width):
        return graph_cut(image, probabilities, config)
    labels = graph_cut(resize_image(image, reduced_hw), resize_maps(probabilities, reduced_hw), config)
    rows = np.minimum((np.arange(height) + 0.5) * reduced_hw[0] / height, reduced_hw[0] - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * reduced_hw[1] / width, reduced_hw[1] - 1).astype(int)
    return labels[rows[:, None], cols[None, :]]


def _upsample_labels(labels: np.ndarray, size_hw: tuple[int, int], evidence) -> np.ndarray:
    """Upsamples ``[h, w]`` labels to ``size_hw`` along edges (see :func:`refine`).

    ``evidence(pixels)`` gives ``[L, len(pixels)]`` full-size probabilities of flat pixels;
    it is asked only about the band where the upsampled labels meet.
    """
    indicators = resize_maps((labels[None] == np.arange(labels.max() + 1)[:, None, None])
                             .astype(np.float32), size_hw).reshape(labels.max() + 1, -1)
    upsampled = indicators.argmax(axis=0)
    candidates = indicators > 0.01
    band = np.flatnonzero(candidates.sum(axis=0) > 1)
    if len(band):
        probabilities = evidence(band)[:len(indicators)]
        # Among the labels reaching the pixel, the most probable one at full size wins.
        upsampled[band] = np.where(candidates[:, band], probabilities + 1e-6, 0.0).argmax(axis=0)
    return upsampled.reshape(size_hw).astype(np.int32)


def refinement_size(height: int, width: int, config: RefineConfig) -> tuple[int, int]:
    """(h, w) the stage works at: the image's size, shrunk to a ``max_size`` long side."""
    scale = min(1.0, config.max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def refine(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None = None,
           config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Turns coarse relevance maps into a label mask that follows object boundaries.

    Pseudo-labels -> test-time distillation -> graph cut (see the module docstring).
    Images whose long side exceeds ``config.max_size`` are refined at that long side
    (image and scores resized); the labels are then upsampled along edges: every
    label's indicator is upsampled bilinearly, pixels inside one label's region keep
    it, and pixels in the band where labels meet take, among the labels whose indicator
    reaches them, the one of highest ``p``, with ``p`` the distilled classifier's probabilities evaluated
    on the full-size image (the classifier is per-pixel, so it applies at any size;
    without distillation ``p`` is :func:`score_probabilities` of the full-size scores).

    The classifier compiles once per ``class_bucket`` of K + 1 (outputs padded and
    masked) and per config: training pixels are sampled to a fixed count and
    prediction runs in fixed-size chunks, so image size does not trigger recompiles.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      scores: float ``[K, H, W]`` relevance in [0, 1], one map per label.
      features: optional float ``[h, w, C]`` dense features (e.g. CLIP patch tokens).
      config: the refinement settings.

    Returns:
      int32 ``[H, W]``: 0 background, k the k-th label (1-based).

    Raises:
      ValueError: when an input's shape or dtype does not match.
    """
    image, scores = np.asarray(image), np.asarray(scores)
    features = None if features is None else np.asarray(features)
    _validate(image, scores, features)
    height, width = image.shape[:2]
    if scores.shape[0] == 0:
        return np.zeros((height, width), np.int32)
    small_hw = refinement_size(height, width, config)
    small_image, small_scores = resize_image(image, small_hw), resize_maps(scores, small_hw)
    if config.smooth_spatial > 0:
        small_scores = edge_aware_smooth(small_image, small_scores,
                                         config.smooth_spatial * max(small_hw), config.smooth_colour)
    pseudo = pseudo_labels(small_scores, config)
    if not (config.distillation and (pseudo >= 0).any()):
        labels = graph_cut(small_image, score_probabilities(small_scores, config), config)

        def edge_evidence(pixels):
            return score_probabilities(scores, config).reshape(len(scores) + 1, -1)[:, pixels]
    else:
        encoded, seeds = encode_image(small_image, features, config), pseudo
        prior = score_probabilities(small_scores, config)
        for round_index in range(1 + config.reestimation_rounds):
            classifier = _fit(encoded, seeds, scores.shape[0] + 1, config)
            unaries = _mix_prior(_probabilities(classifier, encoded), prior, config)
            if round_index < config.reestimation_rounds:
                seeds = reestimation_seeds(_reduced_cut(small_image, unaries, config), pseudo, config)
            else:
                labels = graph_cut(small_image, unaries, config)

        def edge_evidence(pixels):
            # Along edges the cut labels already carry the spatial prior; appearance decides.
            # The classifier is per-pixel, so it applies to the full-size image; its local
            # window is read at the fitted image's scale.
            table, index = encode_pixels(image, encoded.reduced_features, config, pixels,
                                         max(encoded.shape))
            return np.ascontiguousarray(classifier.predict(table)[index].T)
    if small_hw == (height, width):
        return labels
    return _upsample_labels(labels, (height, width), edge_evidence)
