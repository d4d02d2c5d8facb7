"""``RelevanceConfig``: which relevance method makes the class maps, and its settings."""

from __future__ import annotations

import dataclasses
from typing import Optional

# Each method's settings and their defaults; a setting given for a method that does not
# use it is an error (it would silently do nothing).
METHOD_SETTINGS: dict[str, dict[str, object]] = {
    "chefer": {"start_layer": -1, "softmax": False},
}


@dataclasses.dataclass(frozen=True)
class RelevanceConfig:
    """The relevance method and its settings (frozen, hashable: a static jit argument).

    Settings left at None take their method's default (``METHOD_SETTINGS``); setting one
    that the chosen method does not use raises a ``ValueError``.

    Attributes:
      method: ``"chefer"`` (Chefer et al. 2021, gradient x attention rollout).
      start_layer: chefer: first vision block of the rollout (-1: the last block only;
        0: all blocks).
      softmax: chefer: differentiate softmax-over-labels scores instead of raw logits.
    """

    method: str = "chefer"
    start_layer: Optional[int] = None
    softmax: Optional[bool] = None

    def __post_init__(self):
        if self.method not in METHOD_SETTINGS:
            raise ValueError(f"RelevanceConfig.method {self.method!r} is not one of "
                             f"{', '.join(METHOD_SETTINGS)}")
        for name in ("start_layer", "softmax"):
            if getattr(self, name) is not None and name not in METHOD_SETTINGS[self.method]:
                raise ValueError(f"RelevanceConfig.{name} means nothing for method "
                                 f"{self.method!r}; leave it unset")

    def setting(self, name: str):
        """The value of a setting of the method: as given, else the method's default."""
        value = getattr(self, name)
        return METHOD_SETTINGS[self.method][name] if value is None else value
