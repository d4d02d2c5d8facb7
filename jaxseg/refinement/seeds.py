"""Reading the coarse maps: confident pixels (pseudo-labels) and per-pixel probabilities.

Pure JAX on one image laid on a padded canvas: ``valid`` ``[H, W]`` marks the image's
pixels (the top-left ``size_hw`` of the canvas) and ``label_mask`` ``[K]`` its labels
(padding labels are ignored), so one compiled program serves every image size and label
count of a batch. Each map is first rescaled to [0, 1] by its own minimum and maximum
(:func:`normalize_scores`); thresholds are placed relative to the image's own levels
(:func:`image_levels`, see ``RefineConfig``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.refinement.config import RefineConfig

Levels = tuple[jax.Array, jax.Array, jax.Array]  # (theta, mu_bg, mu_fg) scalars


def valid_mask(shape_hw: tuple[int, int], size_hw: jax.Array) -> jax.Array:
    """bool ``[H, W]``: True on the top-left ``size_hw`` (int ``[2]``) of an ``shape_hw`` canvas."""
    return ((jnp.arange(shape_hw[0]) < size_hw[0])[:, None]
            & (jnp.arange(shape_hw[1]) < size_hw[1])[None, :])


def normalize_scores(scores: jax.Array, valid: jax.Array, label_mask: jax.Array) -> jax.Array:
    """Rescales each map of ``[K, H, W]`` scores to [0, 1] by its own range over the valid
    pixels (flat maps, padding labels and padding pixels -> 0)."""
    scores = scores.astype(jnp.float32)
    low = jnp.min(jnp.where(valid, scores, jnp.inf), axis=(1, 2), keepdims=True)
    high = jnp.max(jnp.where(valid, scores, -jnp.inf), axis=(1, 2), keepdims=True)
    span = high - low
    relative = jnp.where(span > 1e-6, (scores - low) / jnp.maximum(span, 1e-6), 0.0)
    return jnp.where(valid & label_mask[:, None, None], relative, 0.0)


def score_histogram(values: jax.Array, weights: jax.Array, bins: int = 256) -> jax.Array:
    """``[bins]`` histogram of values in [0, 1] counted with ``weights`` (0: not counted);
    bin b holds [b / bins, (b + 1) / bins), the last one also 1."""
    index = jnp.clip((values * bins).astype(jnp.int32), 0, bins - 1).ravel()
    return jnp.zeros(bins, jnp.float32).at[index].add(weights.ravel().astype(jnp.float32))


def otsu_levels(values: jax.Array, weights: jax.Array, bins: int = 256) -> Levels:
    """Otsu's split of values in [0, 1] counted with ``weights`` (0: not counted):
    (threshold, mean below it, mean above it); (0.5, 0, 1) when nothing can be split."""
    histogram = score_histogram(values, weights, bins)
    centres = (jnp.arange(bins) + 0.5) / bins
    below = jnp.cumsum(histogram)[:-1]
    above = histogram.sum() - below
    mass = jnp.cumsum(histogram * centres)
    mean_below = mass[:-1] / jnp.maximum(below, 1.0)
    mean_above = (mass[-1] - mass[:-1]) / jnp.maximum(above, 1.0)
    splittable = (below > 0) & (above > 0)
    cut = jnp.argmax(jnp.where(splittable, below * above * (mean_below - mean_above) ** 2, -1.0))
    found = splittable.any()
    return (jnp.where(found, (cut + 1) / bins, 0.5), jnp.where(found, mean_below[cut], 0.0),
            jnp.where(found, mean_above[cut], 1.0))


def best_score(relative: jax.Array, label_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The best rescaled score of each pixel ``[H, W]`` and its label index ``[H, W]``."""
    masked = jnp.where(label_mask[:, None, None], relative, -1.0)
    return masked.max(axis=0), masked.argmax(axis=0)


def image_levels(relative: jax.Array, valid: jax.Array, label_mask: jax.Array,
                 config: RefineConfig) -> Levels:
    """(theta, mu_bg, mu_fg): Otsu's split of the best of the rescaled ``[K, H, W]`` maps
    at each valid pixel (``threshold_rule`` "otsu"), the config's ``levels`` ("dataset"),
    or (0, 0, 1) ("fixed")."""
    if config.threshold_rule == "fixed":
        return jnp.float32(0.0), jnp.float32(0.0), jnp.float32(1.0)
    if config.threshold_rule == "dataset":
        theta, low, high = config.levels
        return jnp.float32(theta), jnp.float32(low), jnp.float32(high)
    return otsu_levels(best_score(relative, label_mask)[0], valid)


def _box_mean(values: jax.Array, valid: jax.Array, radius: jax.Array) -> jax.Array:
    """Mean of ``[H, W]`` values over the valid pixels of the (2 radius + 1)^2 square
    around each pixel (``radius`` may be traced): separable running sums."""
    def box_sum(array, axis):
        length = array.shape[axis]
        padded = jnp.concatenate([jnp.zeros_like(jnp.take(array, jnp.arange(1), axis)),
                                  jnp.cumsum(array, axis=axis)], axis=axis)
        position = jnp.arange(length)
        upper = jnp.take(padded, jnp.clip(position + radius + 1, 0, length), axis)
        lower = jnp.take(padded, jnp.clip(position - radius, 0, length), axis)
        return upper - lower
    weight = valid.astype(jnp.float32)
    total = box_sum(box_sum(values * weight, 0), 1)
    count = box_sum(box_sum(weight, 0), 1)
    return total / jnp.maximum(count, 1.0)


def _window_max(values: jax.Array, radius: jax.Array, max_radius: int) -> jax.Array:
    """Maximum of ``[H, W]`` values over the (2 radius + 1)^2 square around each pixel,
    ``radius <= max_radius`` traced: per axis, a sparse table of power-of-two block
    maxima, two blocks per window."""
    def axis_max(array, axis):
        length = array.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (max_radius, max_radius + 1)
        padded = jnp.pad(array, pad, constant_values=-jnp.inf)
        levels = [padded]
        while (1 << len(levels)) <= 2 * max_radius + 1:
            shift = 1 << (len(levels) - 1)
            previous = levels[-1]
            moved = jnp.concatenate([jnp.take(previous, jnp.arange(shift, previous.shape[axis]), axis),
                                     jnp.full_like(jnp.take(previous, jnp.arange(shift), axis),
                                                   -jnp.inf)], axis=axis)
            levels.append(jnp.maximum(previous, moved))
        table = jnp.stack(levels)
        window = 2 * radius + 1
        level = jnp.floor(jnp.log2(window.astype(jnp.float32))).astype(jnp.int32)
        block = jnp.left_shift(1, level)
        position = jnp.arange(length) + max_radius
        chosen = table[level]
        first = jnp.take(chosen, position - radius, axis)
        last = jnp.take(chosen, position + radius - block + 1, axis)
        return jnp.maximum(first, last)
    return axis_max(axis_max(values, 0), 1)


def pseudo_labels(relative: jax.Array, valid: jax.Array, label_mask: jax.Array, levels: Levels,
                  size_hw: jax.Array, config: RefineConfig) -> jax.Array:
    """Confident pixels of the rescaled maps.

    Args:
      relative: ``[K, H, W]`` maps from :func:`normalize_scores`.
      valid: bool ``[H, W]`` the image's pixels.
      label_mask: bool ``[K]`` the image's labels.
      levels: :func:`image_levels` of the maps.
      size_hw: int ``[2]`` the image's size on the canvas.
      config: ``threshold_rule``, ``fg_threshold``, ``bg_threshold`` and
        ``background_margin`` (see ``RefineConfig``).

    Returns:
      int32 ``[H, W]``: k >= 1 confident label k (1-based), 0 confident background,
      -1 unknown (not used for training) and on padding pixels.
    """
    top, best = best_score(relative, label_mask)
    radius = jnp.round(config.background_margin * jnp.min(size_hw)).astype(jnp.int32)
    max_radius = round(config.background_margin * min(valid.shape))
    theta, low, high = levels
    if config.threshold_rule != "fixed":
        fg_cut = theta + config.fg_threshold * (high - theta)
        bg_cut = low + config.bg_threshold * (theta - low)
        # Averaged first, so that isolated spikes do not veto a background region.
        local = _box_mean(top, valid, radius)
    else:
        fg_cut, bg_cut, local = config.fg_threshold, config.bg_threshold, top
    labels = jnp.where(top >= fg_cut, best + 1, -1)
    near = _window_max(jnp.where(valid, local, -jnp.inf), radius, max_radius)
    labels = jnp.where(near <= bg_cut, 0, labels)
    return jnp.where(valid, labels, -1).astype(jnp.int32)


def score_probabilities(relative: jax.Array, label_mask: jax.Array, levels: Levels,
                        config: RefineConfig) -> jax.Array:
    """Probabilities ``[K + 1, H, W]`` (background first) read directly off the rescaled maps.

    A softmax over ``[background, rescaled scores]`` with the background at
    ``background_score`` and temperature ``score_temperature``, both relative to the
    levels (the image's own or the dataset's; see ``RefineConfig``); its argmax is the
    thresholded argmax of the maps. Padding labels get no probability.
    """
    theta, low, high = levels
    temperature = jnp.maximum(config.score_temperature * (high - low), 1e-3)
    background = jnp.full((1,) + relative.shape[1:], theta + config.background_score)
    logits = jnp.concatenate([background, jnp.where(label_mask[:, None, None], relative, -jnp.inf)])
    return jax.nn.softmax(logits / temperature, axis=0)
