"""What the pipeline's stages hand on: the device stage's output for one image
(:class:`DeviceOutput`, the host stage's input) and the mask a user gets back
(:class:`SegmentResult`)."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from jaxseg.refinement.config import RefineConfig


@dataclasses.dataclass
class SegmentResult:
    """Output of ``segment``.

    Attributes:
      mask: int32 ``[H, W]``: 0 background, ``i + 1`` = ``labels[i]``.
      scores: float32 ``[K, H, W]`` label scores in image coordinates, in [0, 1] (the
        method's maps, scored by ``config.scoring``).
      labels: the labels used, in order (after cleaning or automatic labelling).
      timings: seconds per stage (``relevance``, ``refine``; ``auto_labels`` if used).
      label_scores: for automatic labels, the probability of each chosen label.
    """

    mask: np.ndarray
    scores: np.ndarray
    labels: list[str]
    timings: dict[str, float]
    label_scores: Optional[list[float]] = None


@dataclasses.dataclass
class DeviceOutput:
    """What the device stage hands the host stage for one image (picklable).

    Attributes:
      labels: the labels segmented (prepared, or picked automatically).
      scores: float32 ``[K, H, W]`` label scores in image coordinates, in [0, 1] (None
        when the batch was dispatched without ``keep_maps``).
      background: float32 ``[H, W]`` the method's background score (``jaxseg.maps.scoring``).
      unaries: float16 ``[K + 1, h, w]`` the graph cut's probabilities at refinement size
        (``jaxseg.refinement.unaries``; refine mode ``"graphcut"`` only).
      made_with: the refinement settings the unaries were computed with (cut under no other).
      label_scores: for automatic labels, each chosen label's score.
      timings: seconds per stage so far.
    """

    labels: list[str]
    scores: Optional[np.ndarray] = None
    background: Optional[np.ndarray] = None
    unaries: Optional[np.ndarray] = None
    made_with: Optional[RefineConfig] = None
    label_scores: Optional[list[float]] = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
