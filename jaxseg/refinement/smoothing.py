"""Edge-aware smoothing of score maps (the domain transform's recursive filter).

Coarse maps come at a 14-21 patch grid and do not follow object boundaries; averaging
each map along the image, but not across its colour edges, spreads a map's evidence over
the region its object occupies and stops it at the object's boundary, as the bilateral
kernel of a dense CRF does, in time linear in the pixels. Gastal and Oliveira, "Domain
transform for edge-aware image and video processing", SIGGRAPH 2011 (the recursive filter,
section 4 and 5).
"""

from __future__ import annotations

import numpy as np


def _recursive_pass(values: np.ndarray, feedback: np.ndarray) -> np.ndarray:
    """One causal then anti-causal first-order pass along the last axis.

    ``values`` ``[C, H, W]``; ``feedback`` ``[H, W - 1]``: the weight a pixel gives its
    left neighbour's filtered value (shared by all channels).
    """
    out = values.copy()
    for col in range(1, out.shape[2]):
        a = feedback[:, col - 1]
        out[:, :, col] += a * (out[:, :, col - 1] - out[:, :, col])
    for col in range(out.shape[2] - 2, -1, -1):
        a = feedback[:, col]
        out[:, :, col] += a * (out[:, :, col + 1] - out[:, :, col])
    return out


def edge_aware_smooth(image: np.ndarray, maps: np.ndarray, spatial: float, colour: float,
                      iterations: int = 3) -> np.ndarray:
    """Smooths ``[C, H, W]`` maps along the uint8 ``[H, W, 3]`` image, not across its edges.

    Args:
      image: uint8 ``[H, W, 3]`` RGB guide.
      maps: float ``[C, H, W]`` maps to smooth.
      spatial: spatial standard deviation of the filter, in pixels.
      colour: colour standard deviation, in 8-bit RGB units (summed absolute differences).
      iterations: horizontal + vertical pass pairs (standard deviations shrinking so that
        their total variance is ``spatial ** 2``).

    Returns:
      float32 ``[C, H, W]``.
    """
    guide = image.astype(np.float32)
    # Domain-transform distance between neighbours: 1 + (spatial / colour) * |colour step|.
    step_x = 1.0 + spatial / colour * np.abs(np.diff(guide, axis=1)).sum(axis=2)  # [H, W-1]
    step_y = 1.0 + spatial / colour * np.abs(np.diff(guide, axis=0)).sum(axis=2)  # [H-1, W]
    out = np.asarray(maps, np.float32)
    for index in range(iterations):
        sigma = spatial * np.sqrt(3.0) * 2 ** (iterations - index - 1) / np.sqrt(4 ** iterations - 1)
        base = np.exp(-np.sqrt(2.0) / sigma)
        out = _recursive_pass(out, (base ** step_x).astype(np.float32))
        out = _recursive_pass(out.transpose(0, 2, 1), (base ** step_y.T).astype(np.float32)).transpose(0, 2, 1)
    return np.ascontiguousarray(out)
