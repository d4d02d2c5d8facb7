"""``RelevanceConfig``: which relevance method makes the class maps, and its settings."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from jaxseg.checks import check_numbers, store_tuple

# Each method's settings and their defaults; a setting given for no method of the config
# is an error (it would silently do nothing).
METHOD_SETTINGS: dict[str, dict[str, object]] = {
    "chefer": {"start_layer": -1, "softmax": False, "gradient_budget_mb": 1024.0},
    "clip-es": {"caa": True, "box_threshold": 0.4},
    "naclip": {"sigma": 5.0},
}
METHODS = tuple(METHOD_SETTINGS)


@dataclasses.dataclass(frozen=True)
class RelevanceConfig:
    """The relevance method(s) and their settings (frozen, hashable: a static jit argument).

    Settings left at None take their method's default (``METHOD_SETTINGS``); a setting that
    no chosen method uses raises a ``ValueError``.

    Attributes:
      method: ``"chefer"`` (Chefer et al. 2021, gradient x attention rollout; the default),
        ``"clip-es"`` (Lin et al. 2023, Grad-CAM + class-aware attention affinity),
        ``"naclip"`` (Hajimiri et al. 2025, gradient-free dense maps), or a tuple of them:
        an ensemble whose maps are each min-max normalised per class and view, then
        averaged with ``weights``, in one program.
      weights: ensembles only: one positive weight per method (default equal weights).
      start_layer: chefer: first vision block of the rollout (-1: the last block only;
        0: all blocks).
      softmax: chefer: differentiate softmax-over-labels scores instead of raw logits.
      gradient_budget_mb: chefer: memory for the classes' attention gradients; an early
        ``start_layer`` with many classes and views goes through classes in chunks that
        fit (``jaxseg.maps.chefer.classes_per_pass``).
      caa: clip-es: refine the Grad-CAM with class-aware attention affinity (False: the
        Grad-CAM itself).
      box_threshold: clip-es: threshold of the affinity's box mask, relative to the CAM's
        maximum (the authors use 0.4 on VOC and 0.7 on COCO).
      sigma: naclip: standard deviation, in patches, of the neighbourhood attention bias.
    """

    method: Union[str, tuple[str, ...]] = "chefer"
    weights: Optional[tuple[float, ...]] = None
    start_layer: Optional[int] = None
    softmax: Optional[bool] = None
    gradient_budget_mb: Optional[float] = None
    caa: Optional[bool] = None
    box_threshold: Optional[float] = None
    sigma: Optional[float] = None

    def __post_init__(self):
        store_tuple(self, "method", "str")
        store_tuple(self, "weights", "float")
        check_numbers(self)
        methods = self.methods
        unknown = [m for m in methods if m not in METHOD_SETTINGS]
        if unknown or not methods or len(set(methods)) != len(methods):
            raise ValueError(f"RelevanceConfig.method {self.method!r}: give one of "
                             f"{', '.join(METHODS)} or a tuple of distinct ones")
        if self.weights is not None and (len(methods) < 2 or len(self.weights) != len(methods)
                                         or min(self.weights) <= 0):
            raise ValueError(f"RelevanceConfig.weights {self.weights} must be one positive "
                             f"weight per method of an ensemble of {len(methods)}")
        used = {name for method in methods for name in METHOD_SETTINGS[method]}
        for name in ("start_layer", "softmax", "gradient_budget_mb", "caa", "box_threshold",
                     "sigma"):
            if getattr(self, name) is not None and name not in used:
                owner = next(m for m in METHODS if name in METHOD_SETTINGS[m])
                raise ValueError(f"RelevanceConfig.{name} is a {owner} setting and means "
                                 f"nothing for method {self.method!r}; leave it unset")
        if self.box_threshold is not None and not 0.0 <= self.box_threshold < 1.0:
            raise ValueError(f"RelevanceConfig.box_threshold must be in [0, 1), got "
                             f"{self.box_threshold}")
        for name in ("sigma", "gradient_budget_mb"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"RelevanceConfig.{name} must be > 0, got {getattr(self, name)}")

    @property
    def methods(self) -> tuple[str, ...]:
        """The method names, one for a single method."""
        return (self.method,) if isinstance(self.method, str) else tuple(self.method)

    @property
    def ensemble_weights(self) -> tuple[float, ...]:
        """Each method's weight, summing to 1."""
        weights = self.weights or (1.0,) * len(self.methods)
        return tuple(w / sum(weights) for w in weights)

    def setting(self, name: str):
        """A method setting: as given, else its method's default."""
        value = getattr(self, name)
        if value is not None:
            return value
        return next(METHOD_SETTINGS[m][name] for m in METHODS if name in METHOD_SETTINGS[m])

    @property
    def needs_background(self) -> bool:
        """True when a method takes background-name embeddings (clip-es's softmax)."""
        return "clip-es" in self.methods
