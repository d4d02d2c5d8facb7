"""Multi-label graph cut: a contrast-sensitive Potts energy minimised by alpha-expansion.

Each expansion move is solved exactly by one max-flow cut (PyMaxflow); no max-flow
is written here.
"""

from __future__ import annotations

import maxflow
import numpy as np

# Probabilities are clipped here before -log, so no unary exceeds -log(1e-4) ~ 9.2 nats.
MIN_PROBABILITY = 1e-4
# The 4 forward neighbour offsets of the 8-connected grid (the other 4 are their reverses).
OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
# A source capacity no cut can afford: the node stays in the source segment (keeps its label).
_KEEP = 1e12


def _shifted(plane: np.ndarray, offset: tuple[int, int], fill) -> np.ndarray:
    """``plane`` ``[H, W, ...]`` read at ``p + offset`` for every pixel p (``fill`` beyond
    the border)."""
    dy, dx = offset
    height, width = plane.shape[:2]
    out = np.full_like(plane, fill)
    out[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = \
        plane[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    return out


def grid_edges(image: np.ndarray, pairwise_weight: float) -> np.ndarray:
    """Contrast-sensitive Potts weights of the 8-connected grid: float64 ``[4, H, W]``.

    ``weights[d, p]`` is the weight of the edge from pixel p to ``p + OFFSETS[d]`` (0 where
    that neighbour lies beyond the border): ``pairwise_weight * exp(-beta * |I_p - I_q|^2)
    / distance(p, q)`` with GrabCut's ``beta = 1 / (2 * mean |I_p - I_q|^2)`` over all
    neighbour pairs of the image.
    """
    colour = image.astype(np.float32)
    inside = np.ones(image.shape[:2], bool)
    squared = np.stack([((colour - _shifted(colour, offset, 0.0)) ** 2).sum(-1) for offset in OFFSETS])
    present = np.stack([_shifted(inside, offset, False) for offset in OFFSETS])
    beta = 1.0 / (2.0 * max(float(squared[present].mean()), 1e-6)) if present.any() else 0.0
    distance = np.hypot(*np.array(OFFSETS).T)[:, None, None]
    return np.where(present, pairwise_weight * np.exp(-beta * squared) / distance, 0.0)


def expansion_move(unary: np.ndarray, labels: np.ndarray, alpha: int, weights: np.ndarray,
                   weight_sums: np.ndarray, move_margin: float) -> np.ndarray:
    """One alpha-expansion move (optimal by one max-flow cut): returns the new labels.

    Args:
      unary: ``[L, H, W]`` data costs.
      labels: int ``[H, W]`` current labels.
      alpha: the label expanded.
      weights: ``[4, H, W]`` from :func:`grid_edges`.
      weight_sums: ``[H, W]`` every pixel's total incident weight.
      move_margin: see :func:`alpha_expansion`.

    Pixels for which switching to alpha costs more in data than all their pairwise terms
    can repay (``D(alpha) - D(current) > sum of incident weights``) keep their label in
    the optimal move; they stay in the graph, held to their label, so the graph is the
    image's grid (built by PyMaxflow's grid calls, no index arrays).
    """
    gain = unary[alpha] - np.take_along_axis(unary, labels[None], axis=0)[0]
    active = (labels != alpha) & (gain <= np.minimum(weight_sums, move_margin))
    if not active.any():
        return labels
    graph = maxflow.GraphFloat()
    nodes = graph.add_grid_nodes(labels.shape)
    # Linear cost of switching each node (positive: switching costs more).
    linear = gain.astype(np.float64)
    for offset, weight in zip(OFFSETS, weights):
        neighbour = _shifted(labels, offset, -1)
        # Potts move energies of edge (p, q): A = E(keep, keep), B = E(keep, alpha),
        # C = E(alpha, keep), E(alpha, alpha) = 0; E(x_p, x_q) = A + (C - A) x_p - C x_q
        # + (B + C - A)(1 - x_p) x_q with x = 1 meaning "switch".
        keep_keep = weight * (labels != neighbour)
        keep_alpha = weight * (labels != alpha)
        alpha_keep = weight * (neighbour != alpha)
        linear += alpha_keep - keep_keep
        linear -= _shifted(alpha_keep, (-offset[0], -offset[1]), 0.0)  # -C goes to q = p + offset
        structure = np.zeros((3, 3))
        structure[1 + offset[0], 1 + offset[1]] = 1.0
        graph.add_grid_edges(nodes, weights=keep_alpha + alpha_keep - keep_keep, structure=structure,
                             symmetric=False)
    # A node in the sink segment switches and pays its source capacity.
    graph.add_grid_tedges(nodes, np.where(active, np.maximum(linear, 0.0), _KEEP),
                          np.where(active, np.maximum(-linear, 0.0), 0.0))
    graph.maxflow()
    switched = graph.get_grid_segments(nodes) & active
    return np.where(switched, alpha, labels)


def alpha_expansion(image: np.ndarray, probabilities: np.ndarray, pairwise_weight: float,
                    max_cycles: int = 1, move_margin: float = np.inf) -> np.ndarray:
    """Labels minimising ``sum_p -log p_p(f_p) + sum_{p~q} w_pq [f_p != f_q]``.

    Starts from the per-pixel argmax and expands each label in turn by an optimal
    max-flow move, for at most ``max_cycles`` sweeps or until a sweep changes nothing.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image (sets the pairwise contrast).
      probabilities: float ``[L, H, W]`` per-pixel label probabilities.
      pairwise_weight: weight of the Potts term (see ``grid_edges``).
      max_cycles: sweeps over all labels at most.
      move_margin: pixels whose data cost of switching exceeds this are left out of
        a move (inf: exact moves).

    Returns:
      int32 ``[H, W]`` labels in ``0 .. L - 1``.
    """
    if probabilities.ndim != 3 or probabilities.shape[1:] != image.shape[:2]:
        raise ValueError(f"graph_cut: probabilities must be [L, H, W] with (H, W) = {image.shape[:2]} "
                         f"of the image, got {probabilities.shape}")
    num_labels = probabilities.shape[0]
    unary = -np.log(np.clip(probabilities, MIN_PROBABILITY, 1.0))
    labels = unary.argmin(axis=0)
    if num_labels < 2:
        return labels.astype(np.int32)
    weights = grid_edges(image, pairwise_weight)
    # Each edge counts at both its ends.
    weight_sums = weights.sum(axis=0) + sum(_shifted(weight, (-dy, -dx), 0.0)
                                            for (dy, dx), weight in zip(OFFSETS, weights))
    for _ in range(max_cycles):
        # Each move is optimal over "keep or switch to alpha", so the energy never rises.
        start = labels
        for alpha in range(num_labels):
            labels = expansion_move(unary, labels, alpha, weights, weight_sums, move_margin)
        if np.array_equal(start, labels):
            break
    return labels.astype(np.int32)
