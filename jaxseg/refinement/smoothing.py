"""Edge-aware smoothing of score maps (the domain transform's recursive filter), in JAX.

Coarse maps come at a 14-21 patch grid and do not follow object boundaries; averaging
each map along the image, but not across its colour edges, spreads a map's evidence over
the region its object occupies and stops it at the object's boundary, as the bilateral
kernel of a dense CRF does, in time linear in the pixels. Gastal and Oliveira, "Domain
transform for edge-aware image and video processing", SIGGRAPH 2011 (the recursive filter,
section 4 and 5). Each first-order recursion is an associative scan, so it runs in
logarithmic depth on an accelerator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _combine(earlier, later):
    """Composition of two steps ``y -> a * y + b`` of a first-order linear recursion."""
    a_first, b_first = earlier
    a_second, b_second = later
    return a_first * a_second, a_second * b_first + b_second


def _causal(values: jax.Array, feedback: jax.Array) -> jax.Array:
    """``y_t = a_t y_{t-1} + (1 - a_t) x_t`` along the last axis of ``[C, H, W]`` values,
    ``a_t`` = ``feedback`` ``[H, W]`` (``a_0`` must be 0)."""
    feedback = jnp.broadcast_to(feedback, values.shape)
    return jax.lax.associative_scan(_combine, (feedback, (1.0 - feedback) * values), axis=2)[1]


def _recursive_pass(values: jax.Array, feedback: jax.Array) -> jax.Array:
    """One causal then anti-causal pass along the last axis of ``[C, H, W]`` values;
    ``feedback`` ``[H, W - 1]``: the weight a pixel gives its left neighbour's value
    (shared by all channels)."""
    zero = jnp.zeros_like(feedback[:, :1])
    forward = _causal(values, jnp.concatenate([zero, feedback], axis=1))
    backward = jnp.flip(jnp.concatenate([feedback, zero], axis=1), axis=1)
    return jnp.flip(_causal(jnp.flip(forward, axis=2), backward), axis=2)


def edge_aware_smooth(image: jax.Array, maps: jax.Array, valid: jax.Array, spatial: jax.Array,
                      colour: float, iterations: int = 3) -> jax.Array:
    """Smooths ``[C, H, W]`` maps along the uint8 ``[H, W, 3]`` image, not across its edges.

    Args:
      image: uint8 ``[H, W, 3]`` RGB guide.
      maps: float ``[C, H, W]`` maps to smooth.
      valid: bool ``[H, W]`` the image's pixels on a padded canvas: nothing flows between
        them and the padding.
      spatial: spatial standard deviation of the filter, in pixels (may be traced).
      colour: colour standard deviation, in 8-bit RGB units (summed absolute differences).
      iterations: horizontal + vertical pass pairs (standard deviations shrinking so that
        their total variance is ``spatial ** 2``).

    Returns:
      float32 ``[C, H, W]``.
    """
    guide = image.astype(jnp.float32)
    # Domain-transform distance between neighbours: 1 + (spatial / colour) * |colour step|.
    step_x = 1.0 + spatial / colour * jnp.abs(jnp.diff(guide, axis=1)).sum(axis=2)  # [H, W-1]
    step_y = 1.0 + spatial / colour * jnp.abs(jnp.diff(guide, axis=0)).sum(axis=2)  # [H-1, W]
    inside_x = valid[:, 1:] & valid[:, :-1]
    inside_y = valid[1:, :] & valid[:-1, :]
    feedback_x = jnp.where(inside_x, step_x, jnp.inf)  # an infinite step: no feedback
    feedback_y = jnp.where(inside_y, step_y, jnp.inf).T

    def iteration(index, out):
        sigma = spatial * jnp.sqrt(3.0) * 2.0 ** (iterations - index - 1) / jnp.sqrt(4.0 ** iterations - 1)
        base = jnp.exp(-jnp.sqrt(2.0) / sigma)
        out = _recursive_pass(out, base ** feedback_x)
        return _recursive_pass(out.transpose(0, 2, 1), base ** feedback_y).transpose(0, 2, 1)

    # A loop over the iterations, not one unrolled copy each: a third of the compile time.
    return jax.lax.fori_loop(0, iterations, iteration, maps.astype(jnp.float32))
