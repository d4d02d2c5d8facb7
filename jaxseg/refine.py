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
import maxflow
import numpy as np
import optax
from skimage.color import rgb2lab

from jaxseg._imaging import resize_image, resize_maps

# Probabilities are clipped here before -log, so no unary exceeds -log(1e-4) ~ 9.2 nats.
_MIN_PROBABILITY = 1e-4
# The 4 forward neighbour offsets of the 8-connected grid (the other 4 are their reverses).
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage (one config for all images; hashable, jit-static).

    Score thresholds are relative: each map is first rescaled to [0, 1] by its own
    minimum and maximum, so they mean "fraction of this map's range".

    Attributes:
      fg_threshold: a pixel is confident foreground of label k when k's rescaled
        score is >= this and is the highest of all labels.
      bg_threshold: a pixel is confident background when every rescaled score is <= this.
      background_score: rescaled score the background competes with when scores are
        turned into probabilities (:func:`score_probabilities`); argmax over
        ``[background_score, scores]`` is the plain thresholded argmax.
      score_temperature: softmax temperature of :func:`score_probabilities`.
      prior_weight: exponent of the score prior multiplied into the distilled
        probabilities (0: the classifier alone decides the unaries).
      distillation: when False the unaries come from :func:`score_probabilities` alone
        (graph cut without distillation, for ablations).
      num_samples: confident pixels sampled (class-balanced, with the seed) to train on;
        fixed so the training step compiles once.
      steps: Adam steps of the distillation (full batch of ``num_samples``).
      hidden_size: hidden units of the per-pixel classifier.
      learning_rate: Adam learning rate.
      num_fourier: random Fourier features of colour (and position); the nonlinear
        colour feature map.
      colour_bandwidth: Lab distance (CIE units) the Fourier features resolve.
      position_weight: scale of the normalised (y, x) position fed with the colour
        (0 turns position off).
      feature_dims: principal components of the optional dense features kept per pixel.
      pairwise_weight: weight of the contrast-sensitive Potts term (nats per unit edge).
      max_cycles: alpha-expansion sweeps over all labels at most (stops earlier when
        a sweep changes nothing).
      max_size: images whose long side exceeds this are refined at this long side and
        their labels upsampled along edges (see :func:`refine`).
      class_bucket: the classifier's outputs are padded to a multiple of this so that
        every K in a bucket shares one compiled training step.
      seed: seed of the PRNG key (sampling, initialisation, Fourier features).
    """

    fg_threshold: float = 0.5
    bg_threshold: float = 0.2
    background_score: float = 0.35
    score_temperature: float = 0.1
    prior_weight: float = 0.0
    distillation: bool = True
    num_samples: int = 4096
    steps: int = 100
    hidden_size: int = 32
    learning_rate: float = 0.02
    num_fourier: int = 64
    colour_bandwidth: float = 12.0
    position_weight: float = 0.0
    feature_dims: int = 8
    pairwise_weight: float = 2.0
    max_cycles: int = 2
    max_size: int = 512
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
      config: ``fg_threshold`` and ``bg_threshold`` (relative to each map's range).

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
    labels[top <= config.bg_threshold] = 0
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


def _reduce_features(features: np.ndarray, dims: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Projects ``[h, w, C]`` dense features on their top ``dims`` principal components,
    upsampled bilinearly to ``size_hw``: float32 ``[H * W, dims]``, unit overall scale."""
    grid = np.asarray(features, np.float32).reshape(-1, features.shape[-1])
    grid = grid - grid.mean(axis=0)
    # The Gram matrix is (hw x hw) or (C x C), whichever is smaller: fast for 14x14 x 768.
    if grid.shape[0] <= grid.shape[1]:
        values, vectors = np.linalg.eigh(grid @ grid.T)
        components = vectors[:, ::-1][:, :dims] * np.sqrt(np.maximum(values[::-1][:dims], 0.0))
    else:
        values, vectors = np.linalg.eigh(grid.T @ grid)
        components = grid @ vectors[:, ::-1][:, :dims]
    components = components / (components[:, :1].std() + 1e-6)
    padded = np.zeros((grid.shape[0], dims), np.float32)
    padded[:, :components.shape[1]] = components
    maps = resize_maps(padded.T.reshape(dims, features.shape[0], features.shape[1]), size_hw)
    return maps.reshape(dims, -1).T


def _pixel_inputs(image: np.ndarray, features: np.ndarray | None,
                  config: RefineConfig) -> np.ndarray:
    """Per-pixel classifier inputs ``[H * W, 5 + feature_dims]``: Lab / bandwidth,
    weighted (y, x) in [0, 1], reduced dense features (zeros when absent)."""
    height, width = image.shape[:2]
    lab = rgb2lab(image).reshape(-1, 3) / config.colour_bandwidth
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    position = np.stack([rows.ravel(), cols.ravel()], 1) / max(height, width) * config.position_weight
    dense = (np.zeros((height * width, config.feature_dims), np.float32) if features is None
             else _reduce_features(features, config.feature_dims, (height, width)))
    return np.concatenate([lab, position, dense], axis=1).astype(np.float32)


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


def _logits(params: dict, inputs: jax.Array, class_mask: jax.Array) -> jax.Array:
    projected = inputs[:, :5] @ jax.lax.stop_gradient(params["fourier"])
    hidden_in = jnp.concatenate([jnp.cos(projected), jnp.sin(projected), inputs[:, 5:]], axis=1)
    hidden = jax.nn.relu(hidden_in @ params["w1"] + params["b1"])
    # Padded classes get -inf-like logits so they never take probability mass.
    return jnp.where(class_mask, hidden @ params["w2"] + params["b2"], -1e9)


@functools.partial(jax.jit, static_argnames=("config", "num_outputs"))
def _fit(key: jax.Array, inputs: jax.Array, targets: jax.Array, class_mask: jax.Array,
         config: RefineConfig, num_outputs: int) -> dict:
    """Trains the classifier on ``[N, D]`` inputs with int targets; fixed steps, full batch."""
    params = _init_params(key, inputs.shape[1], num_outputs, config)
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(params):
        logits = _logits(params, inputs, class_mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=config.steps)
    return params


@jax.jit
def _predict_chunk(params: dict, inputs: jax.Array, class_mask: jax.Array) -> jax.Array:
    return jax.nn.softmax(_logits(params, inputs, class_mask), axis=-1)


_CHUNK = 65536  # pixels per prediction call: fixed so prediction compiles once per bucket.


def _predict(params: dict, inputs: np.ndarray, class_mask: jax.Array, num_labels: int) -> np.ndarray:
    """Class probabilities ``[N, num_labels]`` for ``[N, D]`` inputs, in fixed-size chunks."""
    padded = np.zeros((-(-len(inputs) // _CHUNK) * _CHUNK, inputs.shape[1]), np.float32)
    padded[:len(inputs)] = inputs
    chunks = [np.asarray(_predict_chunk(params, padded[start:start + _CHUNK], class_mask))
              for start in range(0, len(padded), _CHUNK)]
    return np.concatenate(chunks)[:len(inputs), :num_labels]


def _sample_training_pixels(key: jax.Array, pseudo: np.ndarray, num_samples: int) -> np.ndarray:
    """Indices of ``num_samples`` confident pixels, each present class equally likely."""
    flat = pseudo.ravel()
    confident = np.flatnonzero(flat >= 0)
    counts = np.bincount(flat[confident])
    cumulative = np.cumsum(1.0 / counts[flat[confident]])
    draws = np.asarray(jax.random.uniform(key, (num_samples,)), np.float64) * cumulative[-1]
    return confident[np.minimum(np.searchsorted(cumulative, draws), len(confident) - 1)]


def _fit_classifier(inputs: np.ndarray, pseudo: np.ndarray, num_labels: int,
                    config: RefineConfig) -> tuple[dict, jax.Array]:
    """Fits the distillation classifier; returns its parameters and output class mask."""
    num_outputs = -(-num_labels // config.class_bucket) * config.class_bucket
    class_mask = jnp.arange(num_outputs) < num_labels
    sample_key, init_key = jax.random.split(jax.random.key(config.seed))
    chosen = _sample_training_pixels(sample_key, pseudo, config.num_samples)
    params = _fit(init_key, jnp.asarray(inputs[chosen]), jnp.asarray(pseudo.ravel()[chosen]),
                  class_mask, config, num_outputs)
    return params, class_mask


def distill(image: np.ndarray, pseudo: np.ndarray, num_classes: int,
            features: np.ndarray | None = None,
            config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Test-time distillation: per-pixel probabilities from a classifier fit on confident pixels.

    Each pixel is described by its Lab colour (and, if ``position_weight`` > 0, its
    position) through fixed random Fourier features, plus the top ``feature_dims``
    principal components of ``features`` upsampled bilinearly. A one-hidden-layer MLP
    (background + ``num_classes`` outputs) is trained with Adam for ``steps`` full-batch
    steps on ``num_samples`` class-balanced confident pixels, all drawn from the key of
    ``config.seed`` (deterministic).

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      pseudo: int32 ``[H, W]`` from :func:`pseudo_labels` (-1 unknown).
      num_classes: K, the number of labels (background excluded).
      features: optional float ``[h, w, C]`` dense features of the image.
      config: the refinement settings.

    Returns:
      float32 ``[K + 1, H, W]`` probabilities (background first). Uniform when no
      pixel is confident.
    """
    height, width = image.shape[:2]
    if not (pseudo >= 0).any():
        return np.full((num_classes + 1, height, width), 1.0 / (num_classes + 1), np.float32)
    inputs = _pixel_inputs(image, features, config)
    params, class_mask = _fit_classifier(inputs, pseudo, num_classes + 1, config)
    probabilities = _predict(params, inputs, class_mask, num_classes + 1)
    return probabilities.T.reshape(num_classes + 1, height, width)


def _grid_edges(image: np.ndarray, pairwise_weight: float) -> tuple[np.ndarray, ...]:
    """8-connected neighbour pairs (flat indices p, q) and contrast-sensitive Potts weights.

    ``w = pairwise_weight * exp(-beta * |I_p - I_q|^2) / distance(p, q)`` with GrabCut's
    ``beta = 1 / (2 * mean |I_p - I_q|^2)`` over all neighbour pairs of the image.
    """
    height, width = image.shape[:2]
    colour = image.astype(np.float32)
    index = np.arange(height * width).reshape(height, width)
    firsts, seconds, squared, distances = [], [], [], []
    for dy, dx in _OFFSETS:
        rows = slice(0, height - dy)
        cols_p = slice(max(0, -dx), width - max(0, dx))
        cols_q = slice(max(0, dx), width - max(0, -dx))
        firsts.append(index[rows, cols_p].ravel())
        seconds.append(index[dy:, cols_q].ravel())
        squared.append(((colour[rows, cols_p] - colour[dy:, cols_q]) ** 2).sum(-1).ravel())
        distances.append(np.full(firsts[-1].size, np.hypot(dy, dx), np.float32))
    squared = np.concatenate(squared)
    beta = 1.0 / (2.0 * max(float(squared.mean()), 1e-6))
    weights = pairwise_weight * np.exp(-beta * squared) / np.concatenate(distances)
    return np.concatenate(firsts), np.concatenate(seconds), weights.astype(np.float64)


def _energy(unary: np.ndarray, labels: np.ndarray, edges: tuple[np.ndarray, ...]) -> float:
    first, second, weights = edges
    data = np.take_along_axis(unary, labels[None], axis=0).sum()
    return float(data + weights[labels[first] != labels[second]].sum())


def _expand(unary: np.ndarray, labels: np.ndarray, alpha: int,
            edges: tuple[np.ndarray, ...], weight_sums: np.ndarray) -> np.ndarray:
    """One alpha-expansion move (optimal by one max-flow cut): returns the new labels.

    Pixels for which switching to alpha costs more in data than all their pairwise
    terms can repay (``D(alpha) - D(current) > sum of incident weights``) keep their
    label in the optimal move, so only the others become graph nodes.
    """
    gain = unary[alpha] - np.take_along_axis(unary, labels[None], axis=0)[0]
    active = (labels != alpha) & (gain <= weight_sums)
    if not active.any():
        return labels
    node_of = np.full(labels.size, -1, np.int64)
    node_of[np.flatnonzero(active)] = np.arange(int(active.sum()))
    first, second, weights = edges
    touching = active[first] | active[second]
    first, second, weights = first[touching], second[touching], weights[touching]
    label_p, label_q = labels[first], labels[second]
    # Potts move energies: A = E(keep, keep), B = E(keep, alpha), C = E(alpha, keep), E(alpha, alpha) = 0.
    keep_keep = weights * (label_p != label_q)
    keep_alpha = weights * (label_p != alpha)
    alpha_keep = weights * (label_q != alpha)
    # Linear cost of switching each active node (positive: switching costs more).
    linear = gain[active].astype(np.float64)
    both = active[first] & active[second]
    only_p = active[first] & ~active[second]
    only_q = ~active[first] & active[second]
    n_nodes = linear.size
    linear += np.bincount(node_of[first[both]], alpha_keep[both] - keep_keep[both], n_nodes)
    linear -= np.bincount(node_of[second[both]], alpha_keep[both], n_nodes)
    # A fixed neighbour turns the pairwise term into a unary of the active one.
    linear += np.bincount(node_of[first[only_p]], alpha_keep[only_p] - keep_keep[only_p], n_nodes)
    linear += np.bincount(node_of[second[only_q]], keep_alpha[only_q] - keep_keep[only_q], n_nodes)
    graph = maxflow.GraphFloat(n_nodes, int(both.sum()))
    nodes = graph.add_nodes(n_nodes)
    # E(x_p, x_q) = A + (C - A) x_p - C x_q + (B + C - A)(1 - x_p) x_q, x = 1 meaning "switch".
    pair_cost = keep_alpha[both] + alpha_keep[both] - keep_keep[both]
    graph.add_edges(node_of[first[both]], node_of[second[both]], pair_cost, np.zeros_like(pair_cost))
    # A node in the sink segment switches and pays its source capacity.
    graph.add_grid_tedges(nodes, np.maximum(linear, 0.0), np.maximum(-linear, 0.0))
    graph.maxflow()
    switched = graph.get_grid_segments(nodes)
    new_labels = labels.copy()
    new_labels[np.flatnonzero(active)[switched]] = alpha
    return new_labels


def graph_cut(image: np.ndarray, probabilities: np.ndarray,
              config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Labels minimising a contrast-sensitive Potts energy by alpha-expansion.

    ``E(f) = sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]`` on the 8-connected
    grid, ``w_pq`` as in GrabCut (see ``_grid_edges``). Starting from the per-pixel
    argmax, each label in turn is expanded by an optimal max-flow move (PyMaxflow),
    for at most ``max_cycles`` sweeps or until a sweep lowers the energy no more.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image (sets the pairwise contrast).
      probabilities: float ``[L, H, W]`` per-pixel label probabilities.
      config: ``pairwise_weight`` and ``max_cycles``.

    Returns:
      int32 ``[H, W]`` labels in ``0 .. L - 1``.
    """
    num_labels, height, width = probabilities.shape
    unary = -np.log(np.clip(probabilities, _MIN_PROBABILITY, 1.0)).reshape(num_labels, -1)
    labels = unary.argmin(axis=0)
    if num_labels < 2:
        return labels.reshape(height, width).astype(np.int32)
    edges = _grid_edges(image, config.pairwise_weight)
    weight_sums = (np.bincount(edges[0], edges[2], labels.size)
                   + np.bincount(edges[1], edges[2], labels.size))
    energy = _energy(unary, labels, edges)
    for _ in range(config.max_cycles):
        start_energy = energy
        for alpha in range(num_labels):
            candidate = _expand(unary, labels, alpha, edges, weight_sums)
            candidate_energy = _energy(unary, candidate, edges)
            if candidate_energy < energy:
                labels, energy = candidate, candidate_energy
        if energy >= start_energy - 1e-6:
            break
    return labels.reshape(height, width).astype(np.int32)


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


def _unary_probabilities(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None,
                         config: RefineConfig) -> tuple[np.ndarray, callable]:
    """Probabilities ``[K + 1, H, W]`` for the graph cut, and a function giving the same
    probabilities for the (larger) original image ``(image, scores) -> [K + 1, H', W']``."""
    prior = score_probabilities(scores, config)
    if not config.distillation:
        return prior, lambda full_image, full_scores: score_probabilities(full_scores, config)
    pseudo = pseudo_labels(scores, config)
    num_labels = scores.shape[0] + 1
    if not (pseudo >= 0).any():
        return prior, lambda full_image, full_scores: score_probabilities(full_scores, config)
    params, class_mask = _fit_classifier(_pixel_inputs(image, features, config), pseudo,
                                         num_labels, config)

    def probabilities(target_image, target_scores):
        inputs = _pixel_inputs(target_image, features, config)
        distilled = _predict(params, inputs, class_mask, num_labels).T.reshape(
            (num_labels,) + target_image.shape[:2])
        if config.prior_weight == 0:
            return distilled
        mixed = np.log(np.maximum(distilled, _MIN_PROBABILITY)) + config.prior_weight * np.log(
            np.maximum(score_probabilities(target_scores, config), _MIN_PROBABILITY))
        mixed = np.exp(mixed - mixed.max(axis=0, keepdims=True))
        return mixed / mixed.sum(axis=0, keepdims=True)

    return probabilities(image, scores), probabilities


def _upsample_labels(labels: np.ndarray, full_probabilities: np.ndarray) -> np.ndarray:
    """Upsamples ``[h, w]`` labels to the ``[L, H, W]`` probabilities' size along edges.

    Each label's indicator is upsampled bilinearly; where one label covers the whole
    neighbourhood it is kept, and in the band where labels meet each pixel takes the
    label maximising ``indicator * probability``, so boundaries follow the full-size
    image rather than the coarse grid.
    """
    num_labels, height, width = full_probabilities.shape
    indicators = resize_maps((labels[None] == np.arange(num_labels)[:, None, None])
                             .astype(np.float32), (height, width))
    return (indicators * full_probabilities).argmax(axis=0).astype(np.int32)


def refine(image: np.ndarray, scores: np.ndarray, features: np.ndarray | None = None,
           config: RefineConfig = RefineConfig()) -> np.ndarray:
    """Turns coarse relevance maps into a label mask that follows object boundaries.

    Pseudo-labels -> test-time distillation -> graph cut (see the module docstring).
    Images whose long side exceeds ``config.max_size`` are refined at that long side
    (image and scores resized); the labels are then upsampled along edges: every
    label's indicator is upsampled bilinearly, pixels inside one label's region keep
    it, and pixels in the band where labels meet take the label that maximises
    ``indicator * p``, with ``p`` the distilled classifier's probabilities evaluated
    on the full-size image (the classifier is per-pixel, so it applies at any size).

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
    probabilities, full_probabilities = _unary_probabilities(small_image, small_scores, features, config)
    labels = graph_cut(small_image, probabilities, config)
    if small_hw == (height, width):
        return labels
    return _upsample_labels(labels, full_probabilities(image, scores))
