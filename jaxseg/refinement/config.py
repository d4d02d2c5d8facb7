"""``RefineConfig``: the settings of the refinement stage (modules named relative to
``jaxseg.refinement``)."""

from __future__ import annotations

import dataclasses

from jaxseg.checks import check_numbers
from jaxseg.refinement.classifier import ClassifierConfig


# (field, lower bound, whether the bound itself is refused): values below these crash the
# stage or mean nothing. A refinement image under 16 pixels a side leaves the graph cut
# next to nothing to work on (a long side of 1 crashed the batched program).
_BOUNDS = (("long_side", 16, False), ("max_cycles", 1, False), ("pairwise_weight", 0, False),
           ("prior_weight", 0, False), ("smooth_spatial", 0, False), ("local_radius", 0, False),
           ("background_margin", 0, False), ("feature_dims", 0, False),
           ("local_sigma", 0, False), ("move_margin", 0, False), ("score_temperature", 0, True),
           ("colour_bandwidth", 0, True), ("smooth_colour", 0, True),
           ("local_colour_range", 0, True), ("upsample_colour", 0, True))


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage (one config for all images; hashable, jit-static).

    Each map is first rescaled to [0, 1] by its own minimum and maximum. Maps of
    different kinds (sparse gradient relevance, under-covering CAMs, blurry halos,
    low-contrast dense similarities) put the object/background boundary at very
    different rescaled scores (the best fixed background score ranged over 0.2-0.6 on
    the recipes of ``scripts/refine_recipes.py``), so by default the stage reads each
    image's own levels: Otsu's split of the image's best rescaled map gives a threshold
    theta, the mean mu_bg of the pixels below it and the mean mu_fg of those above it
    (``seeds.image_levels``), and the settings below are placed relative to them.

    Attributes:
      smooth_spatial: before anything reads them, the maps (at refinement size) are
        smoothed along the image but not across its colour edges
        (``smoothing.edge_aware_smooth``) with this spatial standard deviation, as a
        fraction of the long side (0: off). This does cheaply what the bilateral kernel
        of a dense CRF does: a map's evidence spreads over its object's region and stops
        at its boundary (recipe-family mean mIoU +1.0 on every second coco-dev image).
      smooth_colour: that filter's colour standard deviation (summed absolute 8-bit RGB
        differences between neighbours).
      threshold_rule: "otsu" (the levels above), "dataset" (every image is read at the
        same ``levels``, calibrated on a sample of the dataset's maps by
        ``calibrate.calibrate_levels``; placed as under "otsu") or "fixed" (theta = 0,
        mu_bg = 0, mu_fg = 1: the thresholds are plain rescaled scores, for maps whose
        levels are known in advance).
      levels: (theta, mu_bg, mu_fg) of the "dataset" rule (unused by the others).
      fg_threshold: a pixel is confident foreground of label k when k's rescaled score
        is the highest of all labels and >= theta + fg_threshold * (mu_fg - theta)
        (fixed rule: >= fg_threshold).
      bg_threshold: a pixel is confident background when the best rescaled score,
        averaged over a window of ``background_margin`` (otsu and dataset rules: isolated
        spikes do not veto a background region), stays <= mu_bg + bg_threshold *
        (theta - mu_bg) everywhere within ``background_margin`` of it (fixed rule:
        the unaveraged score <= bg_threshold).
      background_margin: radius, as a fraction of the image's short side, of the square
        neighbourhood that must be free of scores above the background cut for a pixel to
        be confident background. The object pixels whose score falls below the threshold
        (blurred borders, parts away from the map's peak) lie next to its higher scores;
        this keeps them out of the background's training pixels (about half a ViT-B/16
        patch).
      background_score: the background competes with the rescaled scores at
        theta + background_score (fixed rule: at background_score) when scores are
        turned into probabilities (``seeds.score_probabilities``); argmax over
        ``[background, scores]`` is then the thresholded argmax.
      score_temperature: softmax temperature of ``seeds.score_probabilities``, times
        mu_fg - mu_bg (otsu and dataset rules: low-contrast maps get a proportionally
        sharper softmax).
      prior_weight: exponent of ``seeds.score_probabilities`` multiplied into the
        distilled probabilities to form the graph-cut unaries (0: the classifier alone;
        colour alone cannot say where an object is, so the maps keep a strong say).
      distillation: when False the unaries come from ``seeds.score_probabilities`` alone
        (graph cut without distillation, for ablations).
      classifier: the distillation classifier's settings (``ClassifierConfig``).
      colour_bandwidth: Lab distance (CIE units) the Fourier features resolve.
      position_weight: scale of the normalised (y, x) position fed with the colour
        (0: off; 5 and 10 lowered the mean mIoU over the recipe family by 5 and 6).
      local_radius: radius of the edge-aware window whose Lab mean and standard deviation
        are classifier inputs, as a fraction of the long side of the image the classifier
        is fitted on (0: off; see ``features.local_colour_statistics``). A pixel's
        colour alone separates objects from background poorly; its surroundings (texture,
        mixed colours) add what one colour lacks.
      local_sigma: spatial standard deviation of that window, same unit.
      local_colour_range: colour standard deviation (CIE Lab units) of that window's
        weights: neighbours much farther in colour than this barely count, so the window
        stops at edges.
      feature_dims: principal components of the optional dense features kept per pixel.
      pairwise_weight: weight of the contrast-sensitive Potts term (nats per unit edge).
      max_cycles: alpha-expansion sweeps over all labels at most (stops earlier when
        a sweep changes nothing); on coco-dev a second sweep changed mIoU by < 0.1.
      move_margin: a pixel joins an expansion move only if switching costs at most this
        many nats of unary; inf keeps every move exact (4 was ~3x faster, -0.4 mIoU).
      long_side: every image is refined at this long side (larger ones shrunk, smaller
        ones enlarged, so that the graph cut weighs outlines against areas alike at every
        image size; see ``refine.refinement_size``) and its labels resized to the image
        along its edges (see ``refine.cut_unaries``). Named ``max_size`` until small
        images were enlarged too (2026-12-07). 192: the best
        mean mIoU over the recipe family among 160, 192, 224 and 256 (57.8 against
        57.3-57.4, on the family before ``tta_vit`` and ``dense_clip`` were recalibrated
        (BENCHMARKS.md); leave-one-recipe-out picks it on every fold), with 0.56x the pixels
        of 256 for the device and the host's graph cut.
      upsample_colour: colour standard deviation (Euclidean 8-bit RGB) of the joint
        bilateral upsampling that puts the labels of an image refined at ``long_side`` on
        the full-size image's edges.
      seed: seed of the PRNG key (training pixels, the classifier's initialisation and
        Fourier map).
    """

    smooth_spatial: float = 0.05
    smooth_colour: float = 30.0
    threshold_rule: str = "otsu"
    levels: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fg_threshold: float = 0.3
    bg_threshold: float = 0.5
    background_margin: float = 0.035
    background_score: float = 0.0
    score_temperature: float = 0.3
    prior_weight: float = 1.5
    distillation: bool = True
    classifier: ClassifierConfig = ClassifierConfig()
    colour_bandwidth: float = 12.0
    position_weight: float = 0.0
    local_radius: float = 0.01
    local_sigma: float = 0.005
    local_colour_range: float = 20.0
    feature_dims: int = 8
    pairwise_weight: float = 12.0
    max_cycles: int = 1
    move_margin: float = float("inf")
    long_side: int = 192
    upsample_colour: float = 20.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.classifier, ClassifierConfig):
            raise ValueError(f"RefineConfig.classifier must be a ClassifierConfig, got "
                             f"{self.classifier!r}")
        # move_margin's inf means exact moves.
        check_numbers(self, allow_inf=("move_margin",))
        if self.threshold_rule not in ("otsu", "dataset", "fixed"):
            raise ValueError(f"RefineConfig.threshold_rule must be 'otsu', 'dataset' or 'fixed', "
                             f"got {self.threshold_rule!r}")
        for name, low, strict in _BOUNDS:
            value = getattr(self, name)
            if not (value > low if strict else value >= low):  # NaN fails both
                raise ValueError(f"RefineConfig.{name} must be {'>' if strict else '>='} {low}, "
                                 f"got {value!r}")
        if len(self.levels) != 3:
            raise ValueError(f"RefineConfig.levels must be (theta, mu_bg, mu_fg), got {self.levels!r}")
        # A tuple of floats, so that a list or array given here keeps the config hashable.
        object.__setattr__(self, "levels", tuple(float(level) for level in self.levels))
        theta, low, high = self.levels
        # The default levels would put the background cut at 0, so every pixel would be
        # foreground: the "dataset" rule needs levels read off real maps.
        if self.threshold_rule == "dataset" and not low < theta < high:
            raise ValueError(f"RefineConfig(threshold_rule='dataset') needs calibrated levels "
                             f"with mu_bg < theta < mu_fg, got {self.levels}; build the config "
                             f"with jaxseg.refinement.calibrate.calibrate_levels")
