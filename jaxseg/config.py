"""``SegmentConfig``: every stage's settings, each config living with its stage."""

from __future__ import annotations

import dataclasses

from jaxseg.labels.autolabel import AutoLabelConfig
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.tta import TTAConfig
from jaxseg.refinement.config import RefineConfig


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Every stage's settings (frozen, hashable).

    Attributes:
      relevance: the relevance method and its settings (``jaxseg.maps.config``).
      tta: test-time augmentation and prompt templates (``jaxseg.maps.tta``).
      refine: pseudo-labels, distillation and graph cut (``jaxseg.refinement.config``).
      auto: automatic labelling, used when ``labels="auto"`` (``jaxseg.labels.autolabel``).
      use_features: give CLIP's patch features to the distillation classifier.
    """

    relevance: RelevanceConfig = RelevanceConfig()
    tta: TTAConfig = TTAConfig()
    refine: RefineConfig = RefineConfig()
    auto: AutoLabelConfig = AutoLabelConfig()
    use_features: bool = True
