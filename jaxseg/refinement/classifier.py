"""The per-pixel classifier of test-time distillation (see ``jaxseg.refinement.refine``).

It sees rows of numbers, not images: the leading ``fourier_columns`` of each row (colour,
position) go through a fixed random Fourier map, the rest (local statistics, dense
features) enter the hidden layer directly; a one-hidden-layer MLP is trained with Adam
(optax) on labelled rows. Training and prediction are jit-compiled at fixed shapes:
training rows are sampled to a fixed count, outputs padded to a class bucket, and
prediction runs in fixed-size chunks, so neither image size nor K within a bucket
recompiles. Nothing here imports another part of jaxseg.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

_CHUNK = 16384  # rows per prediction call: fixed so prediction compiles once per bucket.
_SMALL_CHUNK = 2048  # rows per call for what is left after the full chunks


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Settings of the distillation classifier (hashable: a static jit argument).

    Attributes:
      num_samples: labelled rows sampled to train on; fixed so training compiles once.
      batch_size: training rows per Adam step, drawn from the ``num_samples`` with the key.
      steps: Adam steps.
      hidden_size: hidden units.
      learning_rate: Adam learning rate.
      num_fourier: random Fourier features of the leading columns (the nonlinear colour map).
      class_balance: rows of class k are drawn with total probability proportional to
        ``count_k ** (1 - class_balance)`` (1: every class equally often, 0: in proportion
        to its labelled rows, which keeps the background's prior; balanced sampling
        over-predicted the labels on real photos).
      class_bucket: outputs are padded to a multiple of this so that every label count
        in a bucket shares one compiled training step.
    """

    num_samples: int = 4096
    batch_size: int = 1024
    steps: int = 100
    hidden_size: int = 32
    learning_rate: float = 0.02
    num_fourier: int = 64
    class_balance: float = 0.0
    class_bucket: int = 8


def _init_params(key: jax.Array, input_dim: int, fourier_columns: int, num_outputs: int,
                 config: ClassifierConfig) -> dict:
    fourier_key, hidden_key, out_key = jax.random.split(key, 3)
    hidden_in = 2 * config.num_fourier + input_dim - fourier_columns
    return {
        # Fixed random Fourier map of the leading columns: not trained.
        "fourier": jax.random.normal(fourier_key, (fourier_columns, config.num_fourier)),
        "w1": jax.random.normal(hidden_key, (hidden_in, config.hidden_size)) / np.sqrt(hidden_in),
        "b1": jnp.zeros(config.hidden_size),
        "w2": jax.random.normal(out_key, (config.hidden_size, num_outputs)) / np.sqrt(config.hidden_size),
        "b2": jnp.zeros(num_outputs),
    }


def _fourier_features(params: dict, inputs: jax.Array) -> jax.Array:
    """``[N, C + F]`` rows -> ``[N, 2 * num_fourier + F]``: random Fourier features of the
    leading C columns, the other F columns passed through."""
    columns = params["fourier"].shape[0]
    projected = inputs[:, :columns] @ params["fourier"]
    return jnp.concatenate([jnp.cos(projected), jnp.sin(projected), inputs[:, columns:]], axis=1)


def _head_logits(params: dict, fourier: jax.Array, class_mask: jax.Array) -> jax.Array:
    hidden = jax.nn.relu(fourier @ params["w1"] + params["b1"])
    # Padded classes get -inf-like logits so they never take probability mass.
    return jnp.where(class_mask, hidden @ params["w2"] + params["b2"], -1e9)


@functools.partial(jax.jit, static_argnames=("config", "num_outputs", "fourier_columns"))
def _fit(key: jax.Array, inputs: jax.Array, targets: jax.Array, class_mask: jax.Array,
         config: ClassifierConfig, num_outputs: int, fourier_columns: int) -> dict:
    """Trains the classifier on ``[N, D]`` rows with int targets: ``steps`` Adam steps,
    each on ``batch_size`` rows drawn with the key."""
    init_key, batch_key = jax.random.split(key)
    params = _init_params(init_key, inputs.shape[1], fourier_columns, num_outputs, config)
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


@dataclasses.dataclass(frozen=True)
class PixelClassifier:
    """A fitted distillation classifier: rows in, per-label probabilities out."""

    params: dict
    class_mask: jax.Array
    num_labels: int

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """``[R, D]`` input rows -> float32 ``[R, num_labels]`` probabilities."""
        outputs = []
        start = 0
        while start < len(rows):
            # Full chunks, then the rest in small chunks: two compiled shapes in all, and
            # a few hundred rows (the band along label edges) do not pay for 16384.
            size = _CHUNK if len(rows) - start >= _CHUNK else _SMALL_CHUNK
            chunk = np.zeros((size, rows.shape[1]), np.float32)
            part = rows[start:start + size]
            chunk[:len(part)] = part
            outputs.append(np.asarray(_predict_chunk(self.params, chunk, self.class_mask))[:len(part)])
            start += size
        if not outputs:
            return np.zeros((0, self.num_labels), np.float32)
        return np.concatenate(outputs)[:, :self.num_labels]


def _sample_items(key: jax.Array, labels: np.ndarray, num_samples: int,
                  class_balance: float) -> np.ndarray:
    """Indices of ``num_samples`` labelled items (with replacement), class k drawn in
    proportion to ``count_k ** (1 - class_balance)``."""
    labelled = np.flatnonzero(labels >= 0)
    counts = np.bincount(labels[labelled]).astype(np.float64)
    cumulative = np.cumsum(counts[labels[labelled]] ** -class_balance)
    draws = np.asarray(jax.random.uniform(key, (num_samples,)), np.float64) * cumulative[-1]
    return labelled[np.minimum(np.searchsorted(cumulative, draws), len(labelled) - 1)]


def fit_classifier(key: jax.Array, table: np.ndarray, index: np.ndarray, labels: np.ndarray,
                   num_labels: int, fourier_columns: int,
                   config: ClassifierConfig) -> PixelClassifier:
    """Fits the classifier on labelled items (e.g. pixels) described by table rows.

    Args:
      key: PRNG key (sampling, initialisation, the Fourier map).
      table: float32 ``[R, D]`` input rows (e.g. one per distinct pixel description).
      index: int ``[N]``: item i is described by ``table[index[i]]``.
      labels: int ``[N]`` training label of each item (``-1``: not used); at least one >= 0.
      num_labels: L, the classifier's outputs.
      fourier_columns: how many leading columns go through the Fourier map.
      config: the classifier settings.

    Returns:
      The fitted classifier; deterministic for the same inputs and key.
    """
    num_outputs = -(-num_labels // config.class_bucket) * config.class_bucket
    class_mask = jnp.arange(num_outputs) < num_labels
    sample_key, init_key = jax.random.split(key)
    chosen = _sample_items(sample_key, labels, config.num_samples, config.class_balance)
    params = _fit(init_key, jnp.asarray(table[index[chosen]]), jnp.asarray(labels[chosen]),
                  class_mask, config, num_outputs, fourier_columns)
    return PixelClassifier(params, class_mask, num_labels)
