"""The per-pixel classifier of test-time distillation (see ``jaxseg.refinement.unaries``).

It sees rows of numbers, not images: the leading ``fourier_columns`` of each row (colour,
position) go through a fixed random Fourier map, the rest (local statistics, dense
features) enter the hidden layer directly; a one-hidden-layer MLP is trained with Adam
(optax) on labelled rows. :func:`fit` and :func:`predict` are pure functions of fixed
shapes (training rows sampled to a fixed count, outputs padded to a class bucket), so
they run inside one compiled program, vmapped over a batch of images. Nothing here
imports another part of jaxseg.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import numpy as np
import optax


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

    def __post_init__(self):
        # Values outside these crash the compiled fit deep inside XLA or train to NaN,
        # which the graph cut would turn into an empty mask (steps 0: the initial network;
        # num_fourier 0: no Fourier map). Like jaxseg.checks, which this module may not import.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if field.type == "int":
                low = 0 if field.name in ("steps", "num_fourier") else 1
                if not (number and isinstance(value, numbers.Integral) and value >= low):
                    raise ValueError(f"ClassifierConfig.{field.name} must be an integer >= {low}, "
                                     f"got {value!r}")
                object.__setattr__(self, field.name, int(value))
            else:
                share = field.name == "class_balance"
                if not (number and np.isfinite(value) and (0 <= value <= 1 if share else value > 0)):
                    raise ValueError(f"ClassifierConfig.{field.name} must be a finite number "
                                     f"{'in [0, 1]' if share else '> 0'}, got {value!r}")
                object.__setattr__(self, field.name, float(value))


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


def sample_rows(key: jax.Array, labels: jax.Array, num_samples: int, num_outputs: int,
                class_balance: float) -> jax.Array:
    """Indices of ``num_samples`` labelled rows (``labels >= 0``; drawn with replacement),
    class k drawn in proportion to ``count_k ** (1 - class_balance)``."""
    labelled = labels >= 0
    counts = jnp.zeros(num_outputs, jnp.float32).at[jnp.maximum(labels, 0)].add(labelled)
    weights = jnp.where(labelled, jnp.maximum(counts, 1.0)[jnp.maximum(labels, 0)] ** -class_balance, 0.0)
    cumulative = jnp.cumsum(weights)
    draws = jax.random.uniform(key, (num_samples,)) * cumulative[-1]
    # The first row whose cumulative weight exceeds the draw has a positive weight.
    return jnp.minimum(jnp.searchsorted(cumulative, draws, side="right"), len(labels) - 1)


def fit(key: jax.Array, rows: jax.Array, labels: jax.Array, class_mask: jax.Array,
        config: ClassifierConfig, fourier_columns: int) -> dict:
    """Fits the classifier on labelled rows (pure; vmappable over images).

    Args:
      key: PRNG key (sampling, initialisation, the Fourier map).
      rows: float32 ``[N, D]`` input rows (e.g. one per pixel).
      labels: int ``[N]`` training label of each row (``-1``: not used).
      class_mask: bool ``[O]`` the real outputs (O a multiple of ``class_bucket``).
      config: the classifier settings.
      fourier_columns: how many leading columns go through the Fourier map.

    Returns:
      The parameters; deterministic for the same inputs and key. Meaningless when no
      row is labelled (the caller checks).
    """
    num_outputs = class_mask.shape[0]
    sample_key, init_key, batch_key = jax.random.split(key, 3)
    chosen = sample_rows(sample_key, labels, config.num_samples, num_outputs, config.class_balance)
    targets = jnp.maximum(labels[chosen], 0)
    params = _init_params(init_key, rows.shape[1], fourier_columns, num_outputs, config)
    # The Fourier map is fixed, so its features are computed once, not at every step.
    fourier = _fourier_features(params, rows[chosen])
    head = {name: params[name] for name in ("w1", "b1", "w2", "b2")}
    optimizer = optax.adam(config.learning_rate)

    def loss_fn(head, batch):
        logits = _head_logits(head, fourier[batch], class_mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets[batch]).mean()

    def step(carry, step_key):
        head, state = carry
        batch = jax.random.randint(step_key, (config.batch_size,), 0, config.num_samples)
        updates, state = optimizer.update(jax.grad(loss_fn)(head, batch), state, head)
        return (optax.apply_updates(head, updates), state), None

    step_keys = jax.random.split(batch_key, config.steps)
    (head, _), _ = jax.lax.scan(step, (head, optimizer.init(head)), step_keys)
    return {"fourier": params["fourier"], **head}


def predict(params: dict, rows: jax.Array, class_mask: jax.Array) -> jax.Array:
    """``[N, D]`` rows -> float32 ``[N, O]`` probabilities (zero on padding outputs)."""
    return jax.nn.softmax(_head_logits(params, _fourier_features(params, rows), class_mask), axis=-1)


def output_mask(num_labels: jax.Array | int, num_outputs: int) -> jax.Array:
    """bool ``[num_outputs]``: the first ``num_labels`` outputs are real."""
    return jnp.arange(num_outputs) < num_labels


def padded_outputs(num_labels: int, config: ClassifierConfig) -> int:
    """The classifier's output count for ``num_labels`` labels: the next multiple of
    ``class_bucket``, so every label count in a bucket shares one compiled program."""
    return -(-num_labels // config.class_bucket) * config.class_bucket
