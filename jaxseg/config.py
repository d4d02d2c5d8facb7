"""``SegmentConfig``: every stage's settings, each config living with its stage.

Settings left at None take the relevance method's defaults (:func:`method_defaults`): each
method runs as its authors run it (CLIP-ES and NACLIP on one native-resolution view with
their own prompts, background names and scoring rule; Chefer on jaxseg's TTA views).
:data:`PRESETS` reproduce a method's pseudo-labels end to end (``--preset`` on the command
line).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Optional

from jaxseg.checks import store_tuple
from jaxseg.labels import presets
from jaxseg.labels.autolabel import AutoLabelConfig
from jaxseg.maps.config import RelevanceConfig
from jaxseg.maps.native import NativeConfig
from jaxseg.maps.scoring import ScoreConfig
from jaxseg.maps.tta import TTAConfig
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.crf import CRFConfig

VIEWS = ("tta", "native")
REFINE_MODES = ("graphcut", "crf", "none")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """The text side of a method (hashable).

    Attributes:
      templates: prompt templates, each with one ``{}``; a query's embedding is the mean of
        its unit template embeddings, renormalised.
      background: background names: extra softmax classes of clip-es, the background
        queries of the softmax rule (NACLIP).
      names: ``(normalised class name, queries)`` pairs: the texts a label is prompted with
        (``jaxseg.labels.presets.label_queries``); other labels are prompted as written.
    """

    templates: tuple[str, ...] = presets.DEFAULT_TEMPLATES
    background: tuple[str, ...] = ()
    names: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        # Tuples, so that lists given here keep the config hashable (a jit argument).
        for name in ("templates", "background"):
            if isinstance(getattr(self, name), str) or getattr(self, name) is None:
                raise ValueError(f"PromptConfig.{name} must be a sequence of strings, got "
                                 f"{getattr(self, name)!r}")
            store_tuple(self, name, "str")
        names = self.names.items() if isinstance(self.names, Mapping) else self.names
        if any(isinstance(queries, str) for _, queries in names):
            raise ValueError(f"PromptConfig.names pairs a class name with a sequence of "
                             f"queries, got {self.names!r}")
        object.__setattr__(self, "names", tuple((name, tuple(queries)) for name, queries in names))
        if not self.templates or not all(t.count("{}") == 1 for t in self.templates):
            raise ValueError(f"PromptConfig.templates must be non-empty, each with exactly one "
                             f"'{{}}', got {self.templates}")


def method_defaults(relevance: RelevanceConfig) -> dict:
    """The view, native-view rule, prompts and scoring of a relevance config's method."""
    methods = relevance.methods
    if methods == ("clip-es",):
        return dict(view="native", native=NativeConfig(resize="ceil"),
                    prompts=PromptConfig(presets.CLIP_ES_TEMPLATES, presets.CLIP_ES_VOC_BACKGROUND,
                                         _names(presets.METHOD_PROMPTS["clip-es"][2])),
                    scoring=ScoreConfig(background_power=1.0))
    if methods == ("naclip",):
        return dict(view="native", native=NativeConfig(resize="short_side", two_step=True),
                    prompts=PromptConfig(presets.IMAGENET_TEMPLATES, presets.NACLIP_BACKGROUND,
                                         _names(presets.NACLIP_NAMES)),
                    scoring=ScoreConfig(rule="softmax", logit_scale=40.0, prob_threshold=0.1,
                                        pamr_steps=10))
    # Chefer and ensembles: TTA views, jaxseg's templates, min-max scores.
    background = presets.CLIP_ES_VOC_BACKGROUND if relevance.needs_background else ()
    return dict(view="tta", native=NativeConfig(), prompts=PromptConfig(background=background),
                scoring=ScoreConfig())


def _names(table) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted(table.items()))


# SegmentConfig's stage settings and their types; None takes the method's for _DEFAULTED.
_STAGE_CONFIGS = {"relevance": RelevanceConfig, "tta": TTAConfig, "native": NativeConfig,
                  "prompts": PromptConfig, "scoring": ScoreConfig, "refine": RefineConfig,
                  "crf": CRFConfig, "auto": AutoLabelConfig}
_DEFAULTED = ("native", "prompts", "scoring")


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Every stage's settings (frozen, hashable).

    Attributes:
      relevance: the relevance method(s) and their settings (``jaxseg.maps.config``).
      view: ``"tta"`` (jaxseg's flips and crops, ``tta``) or ``"native"`` (one view at
        about the image's own resolution, ``native``); None: the method's.
      tta: the TTA views (``jaxseg.maps.tta``).
      native: the native view's resize rule (``jaxseg.maps.native``); None: the method's.
      prompts: templates, background names, class names; None: the method's.
      scoring: how maps become scores (``jaxseg.maps.scoring``); None: the method's.
      refine_mode: ``"graphcut"`` (jaxseg's refinement), ``"crf"`` (dense CRF with
        CLIP-ES's settings; needs ``jaxseg[crf]``) or ``"none"`` (argmax of the scores).
      refine: pseudo-labels, distillation and graph cut (``jaxseg.refinement.config``).
      crf: the dense CRF (``jaxseg.refinement.crf``).
      auto: automatic labelling, used when ``labels="auto"`` (``jaxseg.labels.autolabel``).
      use_features: give CLIP's patch features to the distillation classifier.
    """

    relevance: RelevanceConfig = RelevanceConfig()
    view: Optional[str] = None
    tta: TTAConfig = TTAConfig()
    native: Optional[NativeConfig] = None
    prompts: Optional[PromptConfig] = None
    scoring: Optional[ScoreConfig] = None
    refine_mode: str = "graphcut"
    refine: RefineConfig = RefineConfig()
    crf: CRFConfig = CRFConfig()
    auto: AutoLabelConfig = AutoLabelConfig()
    use_features: bool = True

    def __post_init__(self):
        for name, kind in _STAGE_CONFIGS.items():
            value = getattr(self, name)
            if not (isinstance(value, kind) or value is None and name in _DEFAULTED):
                raise ValueError(f"SegmentConfig.{name} must be a {kind.__name__}"
                                 f"{' or None' if name in _DEFAULTED else ''}, got {value!r}")
        if self.view is not None and self.view not in VIEWS:
            raise ValueError(f"SegmentConfig.view must be one of {VIEWS}, got {self.view!r}")
        if self.refine_mode not in REFINE_MODES:
            raise ValueError(f"SegmentConfig.refine_mode must be one of {REFINE_MODES}, got "
                             f"{self.refine_mode!r}")
        # The TTA program hands on the features of its first view, the whole image only
        # when the scales hold 1.0; a crop's features would be stretched over the image.
        view = self.view or method_defaults(self.relevance)["view"]
        if (self.use_features and self.refine_mode == "graphcut" and view == "tta"
                and 1.0 not in self.tta.scales):
            raise ValueError(f"SegmentConfig: the refinement's classifier uses the CLIP features "
                             f"of the whole image, which TTA scales {self.tta.scales} do not view; "
                             f"add 1.0 to TTAConfig.scales or set use_features=False")

    def resolved(self) -> "SegmentConfig":
        """This config with every None replaced by the method's default."""
        defaults = method_defaults(self.relevance)
        resolved = dataclasses.replace(self, **{name: value for name, value in defaults.items()
                                                if getattr(self, name) is None})
        if self.auto.rule is None:  # NACLIP's dense maps pick labels by pixel share
            rule = "dense" if self.relevance.methods == ("naclip",) else "image"
            resolved = dataclasses.replace(resolved, auto=dataclasses.replace(self.auto, rule=rule))
        return resolved


# End-to-end reproductions of the authors' pseudo-labels.
PRESETS: dict[str, SegmentConfig] = {
    # CLIP-ES on VOC: native view, CAA with box threshold 0.4, 25 background names,
    # background (1 - max)^1, their dense CRF fed the image as their script does.
    "clip-es": SegmentConfig(relevance=RelevanceConfig(method="clip-es", caa=True,
                                                       box_threshold=0.4),
                             refine_mode="crf", crf=CRFConfig(clip_es_image=True)),
    # CLIP-ES on COCO: box threshold 0.7, 23 background names.
    "clip-es-coco": SegmentConfig(
        relevance=RelevanceConfig(method="clip-es", caa=True, box_threshold=0.7),
        prompts=PromptConfig(presets.CLIP_ES_TEMPLATES, presets.CLIP_ES_COCO_BACKGROUND,
                             _names(presets.METHOD_PROMPTS["clip-es"][2])),
        refine_mode="crf", crf=CRFConfig(clip_es_image=True)),
    # NACLIP on VOC21: whole image at short side 336, 80 templates, 26 background names,
    # softmax x40, prob_thd 0.1, PAMR (10 steps, dilations 8 and 16), no further refinement.
    "naclip": SegmentConfig(relevance=RelevanceConfig(method="naclip"), refine_mode="none"),
}
