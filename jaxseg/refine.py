"""Refinement: coarse per-label relevance maps -> a label mask that follows object boundaries.

Three pure stages, each usable alone, chained by :func:`refine`:

1. :func:`pseudo_labels` keeps only the pixels the coarse maps are sure about.
2. :func:`distill` fits a small per-pixel classifier (background + K labels) on those
   pixels (test-time distillation) and predicts probabilities for every pixel.
3. :func:`graph_cut` minimises a multi-label Potts energy (unaries ``-log p``,
   contrast-sensitive pairwise term on the 8-connected grid) by alpha-expansion,
   each move a max-flow cut computed by PyMaxflow.

Then, GrabCut-style, the classifier is fitted again on the cut's labels
(:func:`reestimation_seeds`) and the image cut again (``reestimation_rounds``).

The stage is independent of CLIP: it sees an image, K score maps and optionally
dense features.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.ndimage

from jaxseg._imaging import resize_image, resize_maps
from jaxseg.classifier import encode_image, fit_classifier
from jaxseg.graphcut import MIN_PROBABILITY, alpha_expansion


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage (one config for all images; hashable, jit-static).

    Score thresholds are relative: each map is first rescaled to [0, 1] by its own
    minimum and maximum, so they mean "fraction of this map's range".

    Attributes:
      fg_threshold: a pixel is confident foreground of label k when k's rescaled
        score is >= this and is the highest of all labels. Lower thresholds cover more
        of each object (the maps peak on one part) at the price of more halo pixels
        outside it, which the re-estimation round partly corrects (coco-dev VOC-20 mIoU,
        mean of seeds 0-2: 0.35 -> 73.7, 0.4 -> 73.9, 0.45 -> 73.9, 0.5 -> 73.6, 0.55 -> 71.7).
      bg_threshold: a pixel is confident background when every rescaled score is <= this
        at the pixel and within ``background_margin`` of it.
      background_margin: radius, as a fraction of the image's short side, of the square
        neighbourhood that must be free of scores above ``bg_threshold`` for a pixel to be
        confident background. The object pixels whose score falls below the threshold
        (blurred borders, parts away from the map's peak) lie next to its higher scores;
        this keeps them out of the background's training pixels (0.035, about half a
        ViT-B/16 patch: coco-dev VOC-20 mIoU 71.2 -> 72.5 when it was introduced, before
        the local statistics; 0.07 and 0.14 gave 71.0 and 63.3, too few background pixels
        near objects; see BENCHMARKS.md).
      background_score: rescaled score the background competes with when scores are
        turned into probabilities (:func:`score_probabilities`); argmax over
        ``[background_score, scores]`` is the plain thresholded argmax.
      score_temperature: softmax temperature of :func:`score_probabilities`.
      prior_weight: exponent of :func:`score_probabilities` multiplied into the
        distilled probabilities to form the graph-cut unaries (0: the classifier alone;
        colour alone cannot say where an object is, so the maps keep a strong say).
      distillation: when False the unaries come from :func:`score_probabilities` alone
        (graph cut without distillation, for ablations).
      class_balance: training pixels of class k are drawn with total probability
        proportional to ``count_k ** (1 - class_balance)`` (1: every class equally
        often, 0: in proportion to its confident pixels, which keeps the background's
        prior; balanced sampling over-predicted the labels on real photos).
      num_samples: confident pixels sampled (with the seed) to train on; fixed so the
        training step compiles once.
      batch_size: training rows per Adam step, drawn from the ``num_samples`` with the key.
      steps: Adam steps of the distillation.
      hidden_size: hidden units of the per-pixel classifier.
      learning_rate: Adam learning rate.
      num_fourier: random Fourier features of colour (and position); the nonlinear
        colour feature map.
      colour_bandwidth: Lab distance (CIE units) the Fourier features resolve.
      position_weight: scale of the normalised (y, x) position fed with the colour
        (0: off; 1 and 3 lowered coco-dev VOC-20 mIoU by 1.3 and 3.6, so off by default).
      local_radius: radius of the edge-aware window whose Lab mean and standard deviation
        are classifier inputs, as a fraction of the long side of the image the classifier
        is fitted on (0: off; see ``pixel_features.local_colour_statistics``). A pixel's
        colour alone separates objects from background poorly; its surroundings (texture,
        mixed colours) add what one colour lacks.
      local_sigma: spatial standard deviation of that window, same unit.
      local_colour_range: colour standard deviation (CIE Lab units) of that window's
        weights: neighbours much farther in colour than this barely count, so the window
        stops at edges.
      feature_dims: principal components of the optional dense features kept per pixel.
      reestimation_rounds: GrabCut-style rounds after the first cut: the classifier is
        fitted again on :func:`reestimation_seeds` (the cut's labels away from its
        boundaries, plus the confident pixels) and the image cut again. The seeds sit on
        the maps' peaks, often one part of an object; the cut spans the whole object, so
        the next classifier also learns the object's other colours.
      reestimation_band: pixels closer than this to a boundary of the cut (as a fraction
        of the long side) are left out of the next round's training pixels: the cut is
        least sure there.
      reestimation_cut_scale: the cuts that only feed a re-estimation round run at this
        fraction of the refinement size (unaries resized bilinearly, labels back by
        nearest neighbour): their labels are used only away from their boundaries, and
        the half-size cut costs a quarter (coco-dev VOC-20 mIoU, mean of seeds 0-2: 73.9 at
        both 0.5 and 1; 500x375, K = 3: ~0.2 s faster at 0.5).
      pairwise_weight: weight of the contrast-sensitive Potts term (nats per unit edge;
        coco-dev VOC-20 mIoU is flat around 8: 6, 8 and 10 all gave 73.9).
      max_cycles: alpha-expansion sweeps over all labels at most (stops earlier when
        a sweep changes nothing); on coco-dev a second sweep changed mIoU by < 0.1.
      move_margin: a pixel joins an expansion move only if switching costs at most this
        many nats of unary; inf keeps every move exact (4 was ~3x faster, -0.4 mIoU).
      max_size: images whose long side exceeds this are refined at this long side and
        their labels upsampled along edges (see :func:`refine`).
      class_bucket: the classifier's outputs are padded to a multiple of this so that
        every K in a bucket shares one compiled training step.
      seed: seed of the PRNG key (sampling, initialisation, Fourier features).
    """

    fg_threshold: float = 0.4
    bg_threshold: float = 0.2
    background_margin: float = 0.035
    background_score: float = 0.35
    score_temperature: float = 0.1
    prior_weight: float = 1.5
    distillation: bool = True
    class_balance: float = 0.0
    num_samples: int = 4096
    batch_size: int = 1024
    steps: int = 100
    hidden_size: int = 32
    learning_rate: float = 0.02
    num_fourier: int = 64
    colour_bandwidth: float = 12.0
    position_weight: float = 0.0
    local_radius: float = 0.01
    local_sigma: float = 0.005
    local_colour_range: float = 20.0
    feature_dims: int = 8
    reestimation_rounds: int = 1
    reestimation_band: float = 0.01
    reestimation_cut_scale: float = 0.5
    pairwise_weight: float = 8.0
    max_cycles: int = 1
    move_margin: float = float("inf")
    max_size: int = 320
    class_bucket: int = 8
    seed: int = 0


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Rescales each map of ``[K, H, W]`` scores to [0, 1] by its own range (flat maps -> 0)."""
    scores = np.asarray(scores, np.float32)
    low = scores.min(axis=(1, 2), keepdims=True)
    span = scores.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 1e-6, (scores - low) / np.maximum(span, 1e-6), 0.0).astype(np.float32)


def pseudo_labels(scores: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Confident pixels of the coarse maps.

    Args:
      scores: float ``[K, H, W]`` relevance maps, one per label.
      config: ``fg_threshold``, ``bg_threshold`` (relative to each map's range) and
        ``background_margin``.

    Returns:
      int32 ``[H, W]``: k >= 1 confident label k (1-based), 0 confident background,
      -1 unknown (not used for training).
    """
    relative = normalize_scores(scores)
    labels = np.full(relative.shape[1:], -1, np.int32)
    if relative.shape[0] == 0:
        labels[:] = 0
        return labels
    top = relative.max(axis=0)
    labels[top >= config.fg_threshold] = relative.argmax(axis=0)[top >= config.fg_threshold] + 1
    radius = round(config.background_margin * min(top.shape))
    labels[scipy.ndimage.maximum_filter(top, size=2 * radius + 1) <= config.bg_threshold] = 0
    return labels


def reestimation_seeds(labels: np.ndarray, pseudo: np.ndarray,
                       config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Training pixels of a re-estimation round (see ``RefineConfig.reestimation_rounds``).

    Args:
      labels: int ``[H, W]`` labels of the last cut (0 background, k label k).
      pseudo: int32 ``[H, W]`` pseudo-labels of the maps (-1 unknown).
      config: ``reestimation_band``.

    Returns:
      int32 ``[H, W]``: the cut's label wherever no other label lies within
      ``reestimation_band`` (square neighbourhood), -1 elsewhere; the confident pixels of
      ``pseudo`` keep their pseudo-label.
    """
    radius = max(1, round(config.reestimation_band * max(labels.shape)))
    size = 2 * radius + 1
    near_boundary = (scipy.ndimage.maximum_filter(labels, size=size)
                     != scipy.ndimage.minimum_filter(labels, size=size))
    seeds = np.where(near_boundary, -1, labels).astype(np.int32)
    return np.where(pseudo >= 0, pseudo, seeds).astype(np.int32)


def score_probabilities(scores: np.ndarray, config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Probabilities ``[K + 1, H, W]`` (background first) read directly off the coarse maps.

    A softmax with temperature ``score_temperature`` over ``[background_score,
    rescaled scores]``; its argmax is the thresholded argmax of the maps.
    """
    relative = normalize_scores(scores)
    background = np.full((1,) + relative.shape[1:], config.background_score, np.float32)
    logits = np.concatenate([background, relative]) / config.score_temperature
    logits -= logits.max(axis=0, keepdims=True)
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(axis=0, keepdims=True)).astype(np.float32)


def distill(image: np.ndarray, pseudo: np.ndarray, num_classes: int,
            features: np.ndarray | None = None,
            config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Test-time distillation: per-pixel probabilities from a classifier fit on confident pixels.

    Each pixel is described by its Lab colour (and, if ``position_weight`` > 0, its
    position) through fixed random Fourier features (the nonlinear colour map), plus
    the edge-aware Lab mean and standard deviation around it (``local_*``) and the top
    ``feature_dims`` principal components of ``features`` upsampled bilinearly (see
    ``jaxseg.pixel_features.encode_pixels``). A one-hidden-layer MLP (background +
    ``num_classes`` outputs, padded to ``class_bucket``; ``jaxseg.classifier``) is
    trained with Adam for ``steps`` steps of ``batch_size`` rows from ``num_samples``
    confident pixels, all drawn with the key of ``config.seed`` (deterministic).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      pseudo: int32 ``[H, W]`` from :func:`pseudo_labels` (-1 unknown).
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
    return fit_classifier(encoded, pseudo, num_classes + 1, config).probabilities(encoded)


def graph_cut(image: np.ndarray, probabilities: np.ndarray,
              config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Labels minimising a contrast-sensitive Potts energy by alpha-expansion.

    ``E(f) = sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]`` on the 8-connected
    grid, ``w_pq`` as in GrabCut (see ``jaxseg.graphcut.grid_edges``). Starting from the
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
    scale = min(1.0, config.max_size / max(height, width))
    small_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
    small_image, small_scores = resize_image(image, small_hw), resize_maps(scores, small_hw)
    pseudo = pseudo_labels(small_scores, config)
    if not (config.distillation and (pseudo >= 0).any()):
        labels = graph_cut(small_image, score_probabilities(small_scores, config), config)

        def edge_evidence(pixels):
            return score_probabilities(scores, config).reshape(len(scores) + 1, -1)[:, pixels]
    else:
        encoded, seeds = encode_image(small_image, features, config), pseudo
        prior = score_probabilities(small_scores, config)
        for round_index in range(1 + config.reestimation_rounds):
            classifier = fit_classifier(encoded, seeds, scores.shape[0] + 1, config)
            unaries = _mix_prior(classifier.probabilities(encoded), prior, config)
            if round_index < config.reestimation_rounds:
                seeds = reestimation_seeds(_reduced_cut(small_image, unaries, config), pseudo, config)
            else:
                labels = graph_cut(small_image, unaries, config)

        def edge_evidence(pixels):
            # Along edges the cut labels already carry the spatial prior; appearance decides.
            return classifier.probabilities_at(image, pixels, config)
    if small_hw == (height, width):
        return labels
    return _upsample_labels(labels, (height, width), edge_evidence)
