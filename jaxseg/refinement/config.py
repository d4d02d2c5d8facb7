"""``RefineConfig``: the settings of the refinement stage (modules named relative to
``jaxseg.refinement``)."""

from __future__ import annotations

import dataclasses

from jaxseg.refinement.classifier import ClassifierConfig


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage (one config for all images; hashable, jit-static).

    Score thresholds are relative: each map is first rescaled to [0, 1] by its own
    minimum and maximum, so they mean "fraction of this map's range".

    Attributes:
      fg_threshold: a pixel is confident foreground of label k when k's rescaled
        score is >= this and is the highest of all labels. Lower thresholds cover more
        of each object (the maps peak on one part) at the price of more halo pixels
        outside it, which the re-estimation round partly corrects (coco-dev VOC-20 mIoU,
        mean of seeds 0-2: 0.35 -> 73.7, 0.4 -> 73.9, 0.45 -> 73.9, 0.5 -> 73.6, 0.55 -> 71.7).
      bg_threshold: a pixel is confident background when every rescaled score is <= this
        at the pixel and within ``background_margin`` of it.
      background_margin: radius, as a fraction of the image's short side, of the square
        neighbourhood that must be free of scores above ``bg_threshold`` for a pixel to be
        confident background. The object pixels whose score falls below the threshold
        (blurred borders, parts away from the map's peak) lie next to its higher scores;
        this keeps them out of the background's training pixels (0.035, about half a
        ViT-B/16 patch: coco-dev VOC-20 mIoU 71.2 -> 72.5 when it was introduced, before
        the local statistics; 0.07 and 0.14 gave 71.0 and 63.3, too few background pixels
        near objects; see BENCHMARKS.md).
      background_score: rescaled score the background competes with when scores are
        turned into probabilities (``seeds.score_probabilities``); argmax over
        ``[background_score, scores]`` is the plain thresholded argmax.
      score_temperature: softmax temperature of ``seeds.score_probabilities``.
      prior_weight: exponent of ``seeds.score_probabilities`` multiplied into the
        distilled probabilities to form the graph-cut unaries (0: the classifier alone;
        colour alone cannot say where an object is, so the maps keep a strong say).
      distillation: when False the unaries come from ``seeds.score_probabilities`` alone
        (graph cut without distillation, for ablations).
      classifier: the distillation classifier's settings (``ClassifierConfig``).
      colour_bandwidth: Lab distance (CIE units) the Fourier features resolve.
      position_weight: scale of the normalised (y, x) position fed with the colour
        (0: off; 1 and 3 lowered coco-dev VOC-20 mIoU by 1.3 and 3.6, so off by default).
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
      reestimation_rounds: GrabCut-style rounds after the first cut: the classifier is
        fitted again on ``seeds.reestimation_seeds`` (the cut's labels away from its
        boundaries, plus the confident pixels) and the image cut again. The seeds sit on
        the maps' peaks, often one part of an object; the cut spans the whole object, so
        the next classifier also learns the object's other colours.
      reestimation_band: pixels closer than this to a boundary of the cut (as a fraction
        of the long side) are left out of the next round's training pixels: the cut is
        least sure there.
      reestimation_cut_scale: the cuts that only feed a re-estimation round run at this
        fraction of the refinement size (unaries resized bilinearly, labels back by
        nearest neighbour): their labels are used only away from their boundaries, and
        the half-size cut costs a quarter (coco-dev VOC-20 mIoU, mean of seeds 0-2: 73.9 at
        both 0.5 and 1; 500x375, K = 3: ~0.2 s faster at 0.5).
      pairwise_weight: weight of the contrast-sensitive Potts term (nats per unit edge;
        coco-dev VOC-20 mIoU is flat around 8: 6, 8 and 10 all gave 73.9).
      max_cycles: alpha-expansion sweeps over all labels at most (stops earlier when
        a sweep changes nothing); on coco-dev a second sweep changed mIoU by < 0.1.
      move_margin: a pixel joins an expansion move only if switching costs at most this
        many nats of unary; inf keeps every move exact (4 was ~3x faster, -0.4 mIoU).
      max_size: images whose long side exceeds this are refined at this long side and
        their labels upsampled along edges (see ``refine.refine``).
      seed: seed of the PRNG key (training pixels, the classifier's initialisation and
        Fourier map).
    """

    fg_threshold: float = 0.4
    bg_threshold: float = 0.2
    background_margin: float = 0.035
    background_score: float = 0.35
    score_temperature: float = 0.1
    prior_weight: float = 1.5
    distillation: bool = True
    classifier: ClassifierConfig = ClassifierConfig()
    colour_bandwidth: float = 12.0
    position_weight: float = 0.0
    local_radius: float = 0.01
    local_sigma: float = 0.005
    local_colour_range: float = 20.0
    feature_dims: int = 8
    reestimation_rounds: int = 1
    reestimation_band: float = 0.01
    reestimation_cut_scale: float = 0.5
    pairwise_weight: float = 8.0
    max_cycles: int = 1
    move_margin: float = float("inf")
    max_size: int = 320
    seed: int = 0
