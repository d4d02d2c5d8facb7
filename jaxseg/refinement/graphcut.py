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
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def grid_edges(image: np.ndarray, pairwise_weight: float) -> tuple[np.ndarray, ...]:
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


def expansion_move(unary: np.ndarray, labels: np.ndarray, alpha: int,
            edges: tuple[np.ndarray, ...], weight_sums: np.ndarray, move_margin: float) -> np.ndarray:
    """One alpha-expansion move (optimal by one max-flow cut): returns the new labels.

    Pixels for which switching to alpha costs more in data than all their pairwise
    terms can repay (``D(alpha) - D(current) > sum of incident weights``) keep their
    label in the optimal move, so only the others become graph nodes.
    """
    gain = unary[alpha] - np.take_along_axis(unary, labels[None], axis=0)[0]
    active = (labels != alpha) & (gain <= np.minimum(weight_sums, move_margin))
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
    num_labels, height, width = probabilities.shape
    unary = -np.log(np.clip(probabilities, MIN_PROBABILITY, 1.0)).reshape(num_labels, -1)
    labels = unary.argmin(axis=0)
    if num_labels < 2:
        return labels.reshape(height, width).astype(np.int32)
    edges = grid_edges(image, pairwise_weight)
    weight_sums = (np.bincount(edges[0], edges[2], labels.size)
                   + np.bincount(edges[1], edges[2], labels.size))
    for _ in range(max_cycles):
        # Each move is optimal over "keep or switch to alpha", so the energy never rises.
        start = labels
        for alpha in range(num_labels):
            labels = expansion_move(unary, labels, alpha, edges, weight_sums, move_margin)
        if np.array_equal(start, labels):
            break
    return labels.reshape(height, width).astype(np.int32)
