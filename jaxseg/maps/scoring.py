"""From a method's maps to per-label scores in [0, 1] and a background plane (on device).

Two rules, each as its method's authors turn maps into pseudo-labels:

- ``"minmax"`` (Chefer, CLIP-ES, ensembles): the scores are the maps, min-max normalised
  per class; the background is a constant ``background_score`` (jaxseg's thresholded argmax
  for Chefer) or, with ``background_power`` t, ``(1 - max_k s_k) ** t`` (CLIP-ES).
- ``"softmax"`` (NACLIP): ``softmax(logit_scale * cos)`` over every query (each label's
  names and the background names); a label's score is the maximum over its queries, the
  background's the maximum over the background names.

The label map without refinement is the argmax over ``[background, scores]``, with pixels
whose best score is below ``prob_threshold`` set to background (NACLIP's ``prob_thd``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.checks import check_numbers, store_tuple


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """How maps become scores (see the module docstring; hashable).

    Attributes:
      rule: ``"minmax"`` or ``"softmax"``.
      background_score: minmax: the constant background score (when ``background_power``
        is None).
      background_power: minmax: background ``(1 - max_k s_k) ** background_power``.
      logit_scale: softmax: the temperature's inverse (NACLIP: 40).
      prob_threshold: pixels whose best label score is below this are background (NACLIP:
        0.1 on VOC21, COCO-Object and Context-60).
      pamr_steps: PAMR steps on the maps before scoring (NACLIP: 10; single-view native
        runs only); 0: off.
      pamr_dilations: PAMR neighbour distances (NACLIP: 8 and 16).
    """

    rule: str = "minmax"
    background_score: float = 0.35
    background_power: Optional[float] = None
    logit_scale: float = 40.0
    prob_threshold: float = 0.0
    pamr_steps: int = 0
    pamr_dilations: tuple[int, ...] = (8, 16)

    def __post_init__(self):
        check_numbers(self)
        store_tuple(self, "pamr_dilations", "int")
        if self.rule not in ("minmax", "softmax"):
            raise ValueError(f"ScoreConfig.rule must be 'minmax' or 'softmax', got {self.rule!r}")
        if self.pamr_steps < 0 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ValueError(f"ScoreConfig.pamr_steps must be >= 0 with at least one dilation "
                             f">= 1, got {self.pamr_steps} and {self.pamr_dilations}")


def score_maps(maps: jax.Array, owner: jax.Array, num_labels: int,
               config: ScoreConfig) -> tuple[jax.Array, jax.Array]:
    """Scores of one image's maps.

    Args:
      maps: ``[Q, H, W]`` maps of the queries (padding queries allowed).
      owner: int ``[Q]``: query q belongs to label ``owner[q] - 1``; 0 marks a background
        name (softmax rule), -1 a padding query.
      num_labels: L, the padded label count of the output.
      config: the rule.

    Returns:
      ``(scores [L, H, W], background [H, W])`` float32 in [0, 1]; labels without a query
      score 0.
    """
    maps = maps.astype(jnp.float32)
    labels = jnp.arange(1, num_labels + 1)
    if config.rule == "softmax":
        logits = jnp.where((owner >= 0)[:, None, None], config.logit_scale * maps, -jnp.inf)
        probabilities = jax.nn.softmax(logits, axis=0)
        scores = jnp.max(jnp.where((owner[None] == labels[:, None])[..., None, None],
                                   probabilities[None], 0.0), axis=1)
        background = jnp.max(jnp.where((owner == 0)[:, None, None], probabilities, 0.0), axis=0)
        return scores, background
    # minmax: one query per label, already normalised by the view program.
    scores = jnp.max(jnp.where((owner[None] == labels[:, None])[..., None, None],
                               maps[None], 0.0), axis=1)
    if config.background_power is None:
        background = jnp.full(maps.shape[1:], config.background_score, jnp.float32)
    else:
        background = (1.0 - jnp.max(scores, axis=0, initial=0.0)) ** config.background_power
    return scores, background


def label_map(scores: np.ndarray, background: np.ndarray, prob_threshold: float = 0.0
              ) -> np.ndarray:
    """int32 ``[H, W]`` labels (0 background, k label k) from ``[K, H, W]`` scores and an
    ``[H, W]`` background plane: the argmax, background where the best label score is below
    ``prob_threshold``."""
    if len(scores) == 0:
        return np.zeros(background.shape, np.int32)
    labels = np.concatenate([background[None], scores]).argmax(axis=0)
    labels[scores.max(axis=0) < prob_threshold] = 0
    return labels.astype(np.int32)
