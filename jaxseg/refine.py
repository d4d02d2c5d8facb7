"""Refinement: coarse per-label relevance maps -> a label mask that follows object boundaries.

Three pure stages, each usable alone, chained by :func:`refine`:

1. :func:`pseudo_labels` keeps only the pixels the coarse maps are sure about.
2. :func:`distill` fits a small per-pixel classifier (background + K labels) on those
   pixels (test-time distillation) and predicts probabilities for every pixel.
3. :func:`graph_cut` minimises a multi-label Potts energy (unaries ``-log p``,
   contrast-sensitive pairwise term on the 8-connected grid) by alpha-expansion,
   each move a max-flow cut computed by PyMaxflow.

The stage is independent of CLIP: it sees an image, K score maps and optionally
dense features.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
import scipy.ndimage
from skimage.color import rgb2lab

from jaxseg._imaging import resize_image, resize_maps, sample_maps
from jaxseg.graphcut import MIN_PROBABILITY, alpha_expansion



@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage (one config for all images; hashable, jit-static).

    Score thresholds are relative: each map is first rescaled to [0, 1] by its own
    minimum and maximum, so they mean "fraction of this map's range".

    Attributes:
      fg_threshold: a pixel is confident foreground of label k when k's rescaled
        score is >= this and is the highest of all labels.
      bg_threshold: a pixel is confident background when every rescaled score is <= this
        at the pixel and within ``background_margin`` of it.
      background_margin: radius, as a fraction of the image's short side, of the square
        neighbourhood that must be free of scores above ``bg_threshold`` for a pixel to be
        confident background. The object pixels whose score falls below the threshold
        (blurred borders, parts away from the map's peak) lie next to its higher scores;
        this keeps them out of the background's training pixels (0.035, about half a
        ViT-B/16 patch: coco-dev VOC-20 mIoU 71.2 -> 72.5; 0.07 and 0.14 gave 71.0 and
        63.3, too few background pixels near objects; see BENCHMARKS.md).
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
      feature_dims: principal components of the optional dense features kept per pixel.
      pairwise_weight: weight of the contrast-sensitive Potts term (nats per unit edge).
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

    fg_threshold: float = 0.5
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
    feature_dims: int = 8
    pairwise_weight: float = 5.0
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


def _reduce_features(features: np.ndarray | None, dims: int) -> np.ndarray | None:
    """Top ``dims`` principal components of ``[h, w, C]`` dense features: float32
    ``[dims, h, w]`` (zero-padded when C or h * w is smaller), unit overall scale."""
    if features is None:
        return None
    grid = np.asarray(features, np.float32).reshape(-1, features.shape[-1])
    grid = grid - grid.mean(axis=0)
    keep = min(dims, *grid.shape)
    # Only the top eigenpairs of the smaller Gram matrix ((hw)^2 or C^2) are computed.
    small_gram = grid.shape[0] <= grid.shape[1]
    gram = grid @ grid.T if small_gram else grid.T @ grid
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=(len(gram) - keep, len(gram) - 1))
    vectors = vectors[:, ::-1]
    components = (vectors * np.sqrt(np.maximum(values[::-1], 0.0)) if small_gram else grid @ vectors)
    components = components / (components[:, :1].std() + 1e-6)
    reduced = np.zeros((dims, grid.shape[0]), np.float32)
    reduced[:keep] = components.T
    return reduced.reshape(dims, features.shape[0], features.shape[1])


def _encode_pixels(image: np.ndarray, reduced: np.ndarray | None, config: RefineConfig,
                   pixels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Classifier inputs of the flat ``pixels`` (default all) as a table and a row index:
    pixel ``pixels[i]``'s input is ``table[index[i]]``; rows are float32 ``[5 + feature_dims]``:
    Lab / bandwidth, weighted (y, x) in [0, 1], the ``[feature_dims, h, w]`` ``reduced``
    dense features upsampled bilinearly (zeros when absent).

    Colour is quantised to 5 bits per channel (at most ~3 Lab units off, well under
    ``colour_bandwidth``). Without position and features the input is the colour alone,
    so the table holds only the distinct colours (thousands of rows, not every pixel).
    """
    height, width = image.shape[:2]
    pixels = np.arange(height * width) if pixels is None else pixels
    quantised = image.reshape(-1, 3)[pixels].astype(np.int32) >> 3
    distinct, index = np.unique((quantised[:, 0] << 10) | (quantised[:, 1] << 5) | quantised[:, 2],
                                return_inverse=True)
    palette = np.stack([distinct >> 10, (distinct >> 5) & 31, distinct & 31], axis=1) * 8 + 4
    lab = rgb2lab(palette[:, None].astype(np.uint8))[:, 0].astype(np.float32) / config.colour_bandwidth
    if reduced is None and config.position_weight == 0:
        return np.pad(lab, ((0, 0), (0, 2 + config.feature_dims))), index.ravel()
    position = np.stack(np.divmod(pixels, width), 1) / max(height, width) * config.position_weight
    dense = (np.zeros((len(pixels), config.feature_dims)) if reduced is None
             else sample_maps(reduced, pixels, (height, width)).T)
    table = np.concatenate([lab[index.ravel()], position, dense], axis=1).astype(np.float32)
    return table, np.arange(len(pixels))


def _init_params(key: jax.Array, input_dim: int, num_outputs: int, config: RefineConfig) -> dict:
    fourier_key, hidden_key, out_key = jax.random.split(key, 3)
    hidden_in = 2 * config.num_fourier + input_dim - 5
    return {
        # Fixed random Fourier map of (colour, position): not trained.
        "fourier": jax.random.normal(fourier_key, (5, config.num_fourier)),
        "w1": jax.random.normal(hidden_key, (hidden_in, config.hidden_size)) / np.sqrt(hidden_in),
        "b1": jnp.zeros(config.hidden_size),
        "w2": jax.random.normal(out_key, (config.hidden_size, num_outputs)) / np.sqrt(config.hidden_size),
        "b2": jnp.zeros(num_outputs),
    }


def _fourier_features(params: dict, inputs: jax.Array) -> jax.Array:
    """``[N, 5 + F]`` inputs -> ``[N, 2 * num_fourier + F]``: random Fourier features of
    (colour, position), dense features passed through."""
    projected = inputs[:, :5] @ params["fourier"]
    return jnp.concatenate([jnp.cos(projected), jnp.sin(projected), inputs[:, 5:]], axis=1)


def _head_logits(params: dict, fourier: jax.Array, class_mask: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(fourier @ params["w1"] + params["b1"])
    # Padded classes get -inf-like logits so they never take probability mass.
    return jnp.where(class_mask, hidden @ params["w2"] + params["b2"], -1e9)


@functools.partial(jax.jit, static_argnames=("config", "num_outputs"))
def _fit(key: jax.Array, inputs: jax.Array, targets: jax.Array, class_mask: jax.Array,
         config: RefineConfig, num_outputs: int) -> dict:
    """Trains the classifier on ``[N, D]`` inputs with int targets: ``steps`` Adam steps,
    each on ``batch_size`` rows drawn with the key."""
    init_key, batch_key = jax.random.split(key)
    params = _init_params(init_key, inputs.shape[1], num_outputs, config)
    # The Fourier map is fixed, so its features are computed once, not at every step.
    fourier = _fourier_features(params, inputs)
    head = {name: params[name] for name in ("w1", "b1", "w2", "b2")}
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(head, rows):
        logits = _head_logits(head, fourier[rows], class_mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets[rows]).mean()

    def step(carry, step_key):
        head, state = carry
        rows = jax.random.randint(step_key, (config.batch_size,), 0, inputs.shape[0])
        updates, state = optimizer.update(jax.grad(loss_fn)(head, rows), state, head)
        return (optax.apply_updates(head, updates), state), None

    step_keys = jax.random.split(batch_key, config.steps)
    (head, _), _ = jax.lax.scan(step, (head, optimizer.init(head)), step_keys)
    return {"fourier": params["fourier"], **head}


@jax.jit
def _predict_chunk(params: dict, inputs: jax.Array, class_mask: jax.Array) -> jax.Array:
    return jax.nn.softmax(_head_logits(params, _fourier_features(params, inputs), class_mask), axis=-1)


_CHUNK = 16384  # table rows per prediction call: fixed so prediction compiles once per bucket.


@dataclasses.dataclass(frozen=True)
class _Classifier:
    """A fitted distillation classifier."""

    params: dict
    class_mask: jax.Array
    num_labels: int
    reduced_features: np.ndarray | None  # [feature_dims, h, w], see _reduce_features

    def probabilities(self, image: np.ndarray, config: RefineConfig,
                      pixels: np.ndarray | None = None) -> np.ndarray:
        """Probabilities of a uint8 ``[H, W, 3]`` image: float32 ``[num_labels, H, W]``, or
        ``[num_labels, len(pixels)]`` for the given flat pixel indices."""
        table, index = _encode_pixels(image, self.reduced_features, config, pixels)
        padded = np.zeros((-(-len(table) // _CHUNK) * _CHUNK, table.shape[1]), np.float32)
        padded[:len(table)] = table
        rows = np.concatenate([np.asarray(_predict_chunk(self.params, padded[start:start + _CHUNK],
                                                         self.class_mask))
                               for start in range(0, len(padded), _CHUNK)])
        probabilities = np.ascontiguousarray(rows[index, :self.num_labels].T)
        return probabilities if pixels is not None else probabilities.reshape((-1,) + image.shape[:2])


def _sample_training_pixels(key: jax.Array, pseudo: np.ndarray, num_samples: int,
                            class_balance: float) -> np.ndarray:
    """Indices of ``num_samples`` confident pixels (with replacement), class k drawn
    in proportion to ``count_k ** (1 - class_balance)``."""
    flat = pseudo.ravel()
    confident = np.flatnonzero(flat >= 0)
    counts = np.bincount(flat[confident]).astype(np.float64)
    cumulative = np.cumsum(counts[flat[confident]] ** -class_balance)
    draws = np.asarray(jax.random.uniform(key, (num_samples,)), np.float64) * cumulative[-1]
    return confident[np.minimum(np.searchsorted(cumulative, draws), len(confident) - 1)]


def _fit_classifier(image: np.ndarray, pseudo: np.ndarray, num_labels: int,
                    features: np.ndarray | None, config: RefineConfig) -> _Classifier:
    """Fits the distillation classifier on the confident pixels of ``pseudo``."""
    num_outputs = -(-num_labels // config.class_bucket) * config.class_bucket
    class_mask = jnp.arange(num_outputs) < num_labels
    sample_key, init_key = jax.random.split(jax.random.key(config.seed))
    chosen = _sample_training_pixels(sample_key, pseudo, config.num_samples, config.class_balance)
    reduced = _reduce_features(features, config.feature_dims)
    table, index = _encode_pixels(image, reduced, config)
    params = _fit(init_key, jnp.asarray(table[index[chosen]]), jnp.asarray(pseudo.ravel()[chosen]),
                  class_mask, config, num_outputs)
    return _Classifier(params, class_mask, num_labels, reduced)


def distill(image: np.ndarray, pseudo: np.ndarray, num_classes: int,
            features: np.ndarray | None = None,
            config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Test-time distillation: per-pixel probabilities from a classifier fit on confident pixels.

    Each pixel is described by its Lab colour (and, if ``position_weight`` > 0, its
    position) through fixed random Fourier features (the nonlinear colour map), plus
    the top ``feature_dims`` principal components of ``features`` upsampled
    bilinearly. A one-hidden-layer MLP (background + ``num_classes`` outputs, padded to
    ``class_bucket``) is trained with Adam for ``steps`` steps of ``batch_size`` rows
    from ``num_samples`` confident pixels, all drawn with the key of ``config.seed``
    (deterministic).

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
    classifier = _fit_classifier(image, pseudo, num_classes + 1, features, config)
    return classifier.probabilities(image, config)


def graph_cut(image: np.ndarray, probabilities: np.ndarray,
              config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Labels minimising a contrast-sensitive Potts energy by alpha-expansion.

    ``E(f) = sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]`` on the 8-connected
    grid, ``w_pq`` as in GrabCut (see ``jaxseg.graphcut.grid_edges``). Starting from the per-pixel
    argmax, each label in turn is expanded by an optimal max-flow move (PyMaxflow),
    for at most ``max_cycles`` sweeps or until a sweep changes nothing.

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


def _mix_prior(distilled: np.ndarray, scores: np.ndarray, config: RefineConfig) -> np.ndarray:
    """``distilled * score_probabilities ** prior_weight``, renormalised: ``[K + 1, H, W]``."""
    log_mixed = np.log(np.maximum(distilled, MIN_PROBABILITY)) + config.prior_weight * np.log(
        np.maximum(score_probabilities(scores, config), MIN_PROBABILITY))
    mixed = np.exp(log_mixed - log_mixed.max(axis=0, keepdims=True))
    return (mixed / mixed.sum(axis=0, keepdims=True)).astype(np.float32)


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
    classifier = (_fit_classifier(small_image, pseudo, scores.shape[0] + 1, features, config)
                  if config.distillation and (pseudo >= 0).any() else None)

    if classifier is None:
        labels = graph_cut(small_image, score_probabilities(small_scores, config), config)

        def edge_evidence(pixels):
            return score_probabilities(scores, config).reshape(len(scores) + 1, -1)[:, pixels]
    else:
        distilled = classifier.probabilities(small_image, config)
        labels = graph_cut(small_image, _mix_prior(distilled, small_scores, config), config)

        def edge_evidence(pixels):
            # Along edges the cut labels already carry the spatial prior; appearance decides.
            return classifier.probabilities(image, config, pixels)
    if small_hw == (height, width):
        return labels
    return _upsample_labels(labels, (height, width), edge_evidence)
