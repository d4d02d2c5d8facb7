"""The per-pixel classifier of test-time distillation (see ``jaxseg.refine.distill``).

A fixed random Fourier map of (Lab colour, position), concatenated with the other pixel
features (edge-aware local colour statistics, reduced dense features; see
``jaxseg.pixel_features``), feeds a one-hidden-layer MLP trained with Adam (optax) on
confident pixels. Training and prediction are jit-compiled at fixed shapes: training
pixels are sampled to a fixed count, outputs padded to a class bucket, and prediction
runs in fixed-size chunks, so neither image size nor K within a bucket recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg.pixel_features import COLOUR_DIMS, POSITION_DIMS, encode_pixels, reduce_features

if TYPE_CHECKING:
    from jaxseg.refine import RefineConfig


# The leading input columns (colour, position) go through the random Fourier map; the
# rest (local colour statistics, dense features) enter the hidden layer directly.
_FOURIER_INPUTS = COLOUR_DIMS + POSITION_DIMS


def _init_params(key: jax.Array, input_dim: int, num_outputs: int, config: RefineConfig) -> dict:
    fourier_key, hidden_key, out_key = jax.random.split(key, 3)
    hidden_in = 2 * config.num_fourier + input_dim - _FOURIER_INPUTS
    return {
        # Fixed random Fourier map of (colour, position): not trained.
        "fourier": jax.random.normal(fourier_key, (_FOURIER_INPUTS, config.num_fourier)),
        "w1": jax.random.normal(hidden_key, (hidden_in, config.hidden_size)) / np.sqrt(hidden_in),
        "b1": jnp.zeros(config.hidden_size),
        "w2": jax.random.normal(out_key, (config.hidden_size, num_outputs)) / np.sqrt(config.hidden_size),
        "b2": jnp.zeros(num_outputs),
    }


def _fourier_features(params: dict, inputs: jax.Array) -> jax.Array:
    """``[N, 5 + F]`` inputs -> ``[N, 2 * num_fourier + F]``: random Fourier features of
    (colour, position), the other F columns passed through."""
    projected = inputs[:, :_FOURIER_INPUTS] @ params["fourier"]
    return jnp.concatenate([jnp.cos(projected), jnp.sin(projected), inputs[:, _FOURIER_INPUTS:]],
                           axis=1)


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
class EncodedImage:
    """Classifier inputs of every pixel of one image, computed once and shared by every
    fit and prediction on that image (see ``jaxseg.pixel_features.encode_pixels``)."""

    table: np.ndarray  # float32 [R, D] distinct input rows
    index: np.ndarray  # int [H * W]: the table row of each pixel, row-major
    shape: tuple[int, int]  # (H, W)
    reduced_features: np.ndarray | None  # [feature_dims, h, w], see pixel_features.reduce_features


def encode_image(image: np.ndarray, features: np.ndarray | None,
                 config: RefineConfig) -> EncodedImage:
    """Encodes every pixel of a uint8 ``[H, W, 3]`` image (with optional ``[h, w, C]``
    dense features) for :func:`fit_classifier` and :meth:`PixelClassifier.probabilities`."""
    reduced = reduce_features(features, config.feature_dims)
    table, index = encode_pixels(image, reduced, config)
    return EncodedImage(table, index, image.shape[:2], reduced)


@dataclasses.dataclass(frozen=True)
class PixelClassifier:
    """A fitted distillation classifier; applies to any image size (it is per-pixel)."""

    params: dict
    class_mask: jax.Array
    num_labels: int
    reduced_features: np.ndarray | None  # those of the EncodedImage it was fitted on
    fit_long_side: int  # long side of the image it was fitted on (sets the local window)

    def _predict(self, table: np.ndarray) -> np.ndarray:
        """``[R, D]`` input rows -> float32 ``[R, num_labels]`` probabilities."""
        padded = np.zeros((-(-len(table) // _CHUNK) * _CHUNK, table.shape[1]), np.float32)
        padded[:len(table)] = table
        rows = np.concatenate([np.asarray(_predict_chunk(self.params, padded[start:start + _CHUNK],
                                                         self.class_mask))
                               for start in range(0, len(padded), _CHUNK)])
        return rows[:len(table), :self.num_labels]

    def probabilities(self, encoded: EncodedImage) -> np.ndarray:
        """Probabilities of every pixel of an encoded image: float32 ``[num_labels, H, W]``."""
        rows = self._predict(encoded.table)
        return np.ascontiguousarray(rows[encoded.index].T).reshape((-1,) + encoded.shape)

    def probabilities_at(self, image: np.ndarray, pixels: np.ndarray,
                         config: RefineConfig) -> np.ndarray:
        """Probabilities of the flat ``pixels`` of a uint8 ``[H, W, 3]`` image of any size
        (e.g. the full-size original of the fitted image): float32 ``[num_labels, N]``."""
        table, index = encode_pixels(image, self.reduced_features, config, pixels,
                                     self.fit_long_side)
        return np.ascontiguousarray(self._predict(table)[index].T)


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


def fit_classifier(encoded: EncodedImage, pseudo: np.ndarray, num_labels: int,
                   config: RefineConfig) -> PixelClassifier:
    """Fits the distillation classifier on the confident pixels of ``pseudo``.

    Args:
      encoded: the image's pixels, from :func:`encode_image`.
      pseudo: int32 ``[H, W]`` training labels (0 background, k label k, -1 unused);
        at least one pixel must be >= 0.
      num_labels: L, the classifier's outputs (background + K labels).
      config: the refinement settings (``num_samples``, ``steps``, ``seed``, ...).

    Returns:
      The fitted classifier; deterministic for the same inputs and ``config.seed``.
    """
    num_outputs = -(-num_labels // config.class_bucket) * config.class_bucket
    class_mask = jnp.arange(num_outputs) < num_labels
    sample_key, init_key = jax.random.split(jax.random.key(config.seed))
    chosen = _sample_training_pixels(sample_key, pseudo, config.num_samples, config.class_balance)
    params = _fit(init_key, jnp.asarray(encoded.table[encoded.index[chosen]]),
                  jnp.asarray(pseudo.ravel()[chosen]), class_mask, config, num_outputs)
    return PixelClassifier(params, class_mask, num_labels, encoded.reduced_features,
                           max(encoded.shape))
