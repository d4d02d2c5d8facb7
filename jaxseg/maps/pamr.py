"""PAMR (Araslanov & Roth, CVPR 2020): pixel-adaptive refinement of maps by the image, as
NACLIP applies it to its cosine maps (10 steps, dilations 8 and 16).

For every pixel p and its ``8 * len(dilations)`` neighbours n at offsets ``d * (dy, dx)``
(read at the nearest pixel of the image's real region), per channel c
``a_c(p, n) = -|I_c(p) - I_c(n)| / (1e-8 + 0.1 s_c(p))`` with ``s_c(p)`` the unbiased
standard deviation of ``I_c`` over the ``9 * len(dilations)`` samples (the centre once per
dilation); ``w(p, .) = softmax_n(mean_c a_c(p, n))``; then ``steps`` times
``M(p) <- sum_n w(p, n) M(n)`` (the centre is not a neighbour).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _offsets(dilations: Sequence[int], centre: bool) -> list[tuple[int, int]]:
    return [(dy * d, dx * d) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if centre or (dy, dx) != (0, 0)]


def _edge_filled(values: jax.Array, valid_hw: jax.Array) -> jax.Array:
    """``[..., H, W]`` values with everything beyond the top-left ``valid_hw`` replaced by the
    nearest real value (so static shifts of the padded array read the real border)."""
    height, width = values.shape[-2:]
    rows = jnp.minimum(jnp.arange(height), valid_hw[0] - 1)
    cols = jnp.minimum(jnp.arange(width), valid_hw[1] - 1)
    return jnp.take(jnp.take(values, rows, axis=-2), cols, axis=-1)


def _shifts(values: jax.Array, offsets, valid_hw: jax.Array):
    """Yields ``values`` read at each ``(dy, dx)`` offset, clamped to the real region."""
    reach = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = values.shape[-2:]
    pad = [(0, 0)] * (values.ndim - 2) + [(reach, reach), (reach, reach)]
    padded = jnp.pad(_edge_filled(values, valid_hw), pad, mode="edge")
    for dy, dx in offsets:
        yield padded[..., reach + dy:reach + dy + height, reach + dx:reach + dx + width]


def pamr(image: jax.Array, maps: jax.Array, valid_hw: jax.Array, steps: int = 10,
         dilations: Sequence[int] = (8, 16)) -> jax.Array:
    """Refines maps by the image's local affinities (see the module docstring).

    Args:
      image: float ``[C, H, W]`` guide (NACLIP: the CLIP-normalised view resized to the map).
      maps: float ``[K, H, W]`` maps to refine.
      valid_hw: int ``[2]``: the real region is the top-left ``valid_hw`` (the rest padding).
      steps: propagation steps.
      dilations: neighbour distances.

    Returns:
      float32 ``[K, H, W]``.
    """
    image = image.astype(jnp.float32)
    spread = jnp.std(jnp.stack(list(_shifts(image, _offsets(dilations, True), valid_hw))),
                     axis=0, ddof=1)
    neighbours = _offsets(dilations, False)
    difference = jnp.abs(image[None] - jnp.stack(list(_shifts(image, neighbours, valid_hw))))
    affinity = jnp.mean(-difference / (1e-8 + 0.1 * spread[None]), axis=1)  # [P, H, W]
    weights = jax.nn.softmax(affinity, axis=0)

    def step(_, current):
        # One neighbour at a time: a [P, K, H, W] stack of shifted maps would not fit.
        total = jnp.zeros_like(current)
        for weight, shifted in zip(weights, _shifts(current, neighbours, valid_hw)):
            total = total + shifted * weight
        return total

    return jax.lax.fori_loop(0, steps, step, maps.astype(jnp.float32))
