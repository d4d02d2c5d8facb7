"""The graph cut's unaries from coarse maps: everything of refinement before the cut, in JAX.

Pure functions of fixed shapes: each image lies at the top left of a padded canvas
(``size_hw`` its real size, ``label_mask`` its real labels), so :func:`batch_unaries`
runs a whole batch in one compiled program, on the accelerator that made the maps;
only the max-flow cut (``jaxseg.refinement.refine``) is left to the host. For one image:

1. the maps are smoothed along the image's edges (``smoothing.edge_aware_smooth``),
   rescaled, and read at the image's own levels (``seeds``): confident pixels
   (pseudo-labels) and probabilities read directly off the maps (the prior);
2. test-time distillation: a small per-pixel classifier (``classifier``) is fitted on the
   confident pixels (``features.encode_pixels`` describes each pixel) and predicts every
   pixel;
3. the unaries' probabilities are ``distilled * prior ** prior_weight``, renormalised
   (the prior alone when no pixel is confident or ``distillation`` is off).

:func:`unary_parts` returns each step's result (``UnaryParts``), for measuring variants
of step 3 (``scripts/refine_variants.py``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxseg.refinement import classifier as classifier_lib
from jaxseg.refinement import seeds
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.features import FOURIER_COLUMNS, encode_pixels
from jaxseg.refinement.graphcut import MIN_PROBABILITY
from jaxseg.refinement.smoothing import edge_aware_smooth


class UnaryParts(NamedTuple):
    """What :func:`unary_parts` reads off one image's maps (all on its canvas).

    Attributes:
      relative: float ``[K, H, W]`` the smoothed maps, each rescaled to [0, 1].
      levels: the image's (theta, mu_bg, mu_fg) (``seeds.image_levels``).
      prior: float ``[K + 1, H, W]`` probabilities read directly off the maps
        (``seeds.score_probabilities``; background first).
      pseudo: int32 ``[H, W]`` the confident pixels' labels (0 background), -1 elsewhere.
      distilled: float ``[K + 1, H, W]`` the distillation classifier's probabilities
        (the prior when ``distillation`` is off).
    """

    relative: jax.Array
    levels: seeds.Levels
    prior: jax.Array
    pseudo: jax.Array
    distilled: jax.Array


def read_maps(image: jax.Array, size_hw: jax.Array, scores: jax.Array, label_mask: jax.Array,
              config: RefineConfig) -> tuple[jax.Array, seeds.Levels]:
    """Step 1's reading of the maps: smoothed along the image's edges, rescaled, levels.

    Args:
      image: uint8 ``[H, W, 3]`` canvas holding the image at its top left.
      size_hw: int ``[2]`` the image's size on the canvas.
      scores: float ``[K, H, W]`` relevance maps on the same canvas.
      label_mask: bool ``[K]`` the real labels.
      config: the refinement settings.

    Returns:
      float ``[K, H, W]`` rescaled maps and the image's levels (theta, mu_bg, mu_fg).
    """
    valid = seeds.valid_mask(image.shape[:2], size_hw)
    if config.smooth_spatial > 0:
        scores = edge_aware_smooth(image, scores, valid, config.smooth_spatial * jnp.max(size_hw),
                                   config.smooth_colour)
    relative = seeds.normalize_scores(scores, valid, label_mask)
    return relative, seeds.image_levels(relative, valid, label_mask, config)


def unary_parts(image: jax.Array, size_hw: jax.Array, scores: jax.Array, label_mask: jax.Array,
                features: Optional[jax.Array], feature_grid: Optional[jax.Array],
                config: RefineConfig) -> UnaryParts:
    """Steps 1 and 2 of the module docstring, each result kept.

    Args: the same as :func:`image_unaries`.

    Returns:
      The :class:`UnaryParts` of the image; ``mix_unaries`` of them is ``image_unaries``.
    """
    relative, levels = read_maps(image, size_hw, scores, label_mask, config)
    prior = seeds.score_probabilities(relative, label_mask, levels, config)
    valid = seeds.valid_mask(image.shape[:2], size_hw)
    pseudo = seeds.pseudo_labels(relative, valid, label_mask, levels, size_hw, config)
    if not config.distillation:
        return UnaryParts(relative, levels, prior, pseudo, prior)
    distilled = distil(image, size_hw, features, feature_grid, pseudo, label_mask, config,
                       jax.random.key(config.seed))
    return UnaryParts(relative, levels, prior, pseudo, distilled)


def distil(image: jax.Array, size_hw: jax.Array, features: Optional[jax.Array],
           feature_grid: Optional[jax.Array], pseudo: jax.Array, label_mask: jax.Array,
           config: RefineConfig, key: jax.Array) -> jax.Array:
    """Step 2: the classifier fitted on pseudo-labels, and its prediction at every pixel.

    Args:
      image: uint8 ``[H, W, 3]`` canvas holding the image at its top left.
      size_hw: int ``[2]`` the image's size on the canvas.
      features: optional float ``[h, w, C]`` dense features of the image.
      feature_grid: int ``[2]`` their real cells (with ``features``).
      pseudo: int ``[H, W]`` training labels (0 background, k label k), -1 unlabelled; at
        least one pixel must be labelled, or the result means nothing.
      label_mask: bool ``[K]`` the real labels.
      config: the refinement settings (``classifier``, the features' settings).
      key: PRNG key of the training pixels, initialisation and Fourier map.

    Returns:
      float ``[K + 1, H, W]`` probabilities (background first).
    """
    rows = encode_pixels(image, size_hw, features, feature_grid, config)
    num_labels = label_mask.shape[0] + 1
    outputs = classifier_lib.padded_outputs(num_labels, config.classifier)
    class_mask = classifier_lib.output_mask(label_mask.sum() + 1, outputs)
    # Labels are packed first, so the k-th output is label k (0: background).
    params = classifier_lib.fit(key, rows, pseudo.reshape(-1), class_mask, config.classifier,
                                FOURIER_COLUMNS)
    distilled = classifier_lib.predict(params, rows, class_mask)[:, :num_labels]
    return distilled.T.reshape((num_labels,) + image.shape[:2])


def mix_unaries(distilled: jax.Array, prior: jax.Array, pseudo: jax.Array, label_mask: jax.Array,
                prior_weight: float) -> jax.Array:
    """Step 3: ``distilled * prior ** prior_weight``, renormalised over the real labels.

    Args:
      distilled: float ``[K + 1, H, W]`` the classifier's probabilities.
      prior: float ``[K + 1, H, W]`` the maps' own probabilities.
      pseudo: int ``[H, W]`` the pseudo-labels the classifier was fitted on (-1 unlabelled).
      label_mask: bool ``[K]`` the real labels (padding labels get no probability).
      prior_weight: the prior's exponent (``RefineConfig.prior_weight``).

    Returns:
      float32 ``[K + 1, H, W]`` probabilities; the prior itself when no pixel of
      ``pseudo`` is labelled (the classifier then learned nothing).
    """
    log_mixed = (jnp.log(jnp.maximum(distilled, MIN_PROBABILITY))
                 + prior_weight * jnp.log(jnp.maximum(prior, MIN_PROBABILITY)))
    mixed = jax.nn.softmax(jnp.where(jnp.concatenate([jnp.ones(1, bool), label_mask])[:, None, None],
                                     log_mixed, -jnp.inf), axis=0)
    return jnp.where((pseudo >= 0).any(), mixed, prior)


def image_unaries(image: jax.Array, size_hw: jax.Array, scores: jax.Array, label_mask: jax.Array,
                  features: Optional[jax.Array], feature_grid: Optional[jax.Array],
                  config: RefineConfig) -> jax.Array:
    """Per-pixel label probabilities for the graph cut of one image (see the module docstring).

    Args:
      image: uint8 ``[H, W, 3]`` canvas holding the image (at refinement size) at its top left.
      size_hw: int ``[2]`` the image's size on the canvas.
      scores: float ``[K, H, W]`` relevance maps on the same canvas, one per label.
      label_mask: bool ``[K]`` the real labels (padding labels get no probability).
      features: optional float ``[h, w, C]`` dense features of the image.
      feature_grid: int ``[2]`` their real cells (with ``features``).
      config: the refinement settings.

    Returns:
      float32 ``[K + 1, H, W]`` probabilities (background first), meaningful on the
      image's pixels.
    """
    parts = unary_parts(image, size_hw, scores, label_mask, features, feature_grid, config)
    if not config.distillation:
        return parts.prior
    return mix_unaries(parts.distilled, parts.prior, parts.pseudo, label_mask, config.prior_weight)


def to_canvas(maps: jax.Array, content_hw: jax.Array, size_hw: jax.Array,
              shape_hw: tuple[int, int]) -> jax.Array:
    """Resizes the ``content_hw`` top left of ``[K, h, w]`` maps to the ``size_hw`` top left
    of a ``shape_hw`` canvas: ``[K, H, W]`` (bilinear, antialiased when shrinking; the
    content's border pixels are repeated outwards, so the padding never leaks in)."""
    rows = jnp.minimum(jnp.arange(maps.shape[1]), content_hw[0] - 1)
    cols = jnp.minimum(jnp.arange(maps.shape[2]), content_hw[1] - 1)
    clamped = maps[:, rows][:, :, cols].astype(jnp.float32)
    scale = size_hw.astype(jnp.float32) / content_hw.astype(jnp.float32)
    return jax.image.scale_and_translate(clamped, (maps.shape[0],) + tuple(shape_hw), (1, 2), scale,
                                         jnp.zeros(2), method="linear", antialias=True)


def batch_unaries(maps: jax.Array, content_hw: jax.Array, images: jax.Array, size_hw: jax.Array,
                  label_mask: jax.Array, features: Optional[jax.Array],
                  feature_grid: Optional[jax.Array], *, config: RefineConfig) -> jax.Array:
    """Unaries of a batch of images straight from the relevance stage's canvases.

    Args:
      maps: float ``[B, K, h, w]`` score maps, each image's content at the top left.
      content_hw: int ``[B, 2]`` the content's size on those maps.
      images: uint8 ``[B, H, W, 3]`` the images at refinement size, top left of the canvas.
      size_hw: int ``[B, 2]`` the refinement size of each image.
      label_mask: bool ``[B, K]`` each image's real labels.
      features: optional float ``[B, gh, gw, C]`` dense features.
      feature_grid: int ``[B, 2]`` their real cells (with ``features``).
      config: the refinement settings (static).

    Returns:
      float16 ``[B, K + 1, H, W]`` probabilities (half precision: what the cut needs,
      at half the transfer); NaN for an image whose real labels' maps are not finite,
      which the host refuses (the stage's reductions would otherwise turn them into an
      empty mask).
    """
    shape_hw = images.shape[1:3]
    finite = jnp.isfinite(jnp.where(label_mask[..., None, None], maps, 0.0)).reshape(
        maps.shape[0], -1).all(axis=1)
    scores = jax.vmap(lambda m, c, s: to_canvas(m, c, s, shape_hw))(maps, content_hw, size_hw)
    if features is None:
        unaries = jax.vmap(lambda i, s, m, k: image_unaries(i, s, m, k, None, None, config))(
            images, size_hw, scores, label_mask)
    else:
        unaries = jax.vmap(lambda *args: image_unaries(*args, config))(
            images, size_hw, scores, label_mask, features, feature_grid)
    return jnp.where(finite[:, None, None, None], unaries, jnp.nan).astype(jnp.float16)


# One compiled program per refinement config, canvas and batch shape, shared by every
# Segmenter (it holds no model: nothing is kept alive by it).
batch_unaries_program = jax.jit(batch_unaries, static_argnames=("config",))
