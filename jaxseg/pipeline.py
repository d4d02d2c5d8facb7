"""The segmentation pipeline: labels -> TTA relevance -> refinement -> mask.

``segment`` is the one-image entry point; ``segment_batch`` runs the device
stage (relevance) for several images in one call and refines each on the host.
The two stages are also exposed separately (``relevance_stage``,
``refine_stage``) so dataset runs can overlap them.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Optional, Sequence, Union

import numpy as np

from jaxseg.autolabel import AutoLabelConfig, auto_labels
from jaxseg.imageio import as_rgb_uint8
from jaxseg.refine import RefineConfig, refine
from jaxseg.relevance import class_embeddings, relevance_tta_batch
from jaxseg.tta import TTAConfig
from jaxseg.vocab import normalize_class_name

Labels = Union[Sequence[str], str]


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """Every stage's settings (frozen, hashable).

    Attributes:
      tta: test-time augmentation and prompt templates.
      refine: pseudo-labels, distillation and graph cut.
      start_layer: first vision block of the relevance rollout (-1: last block).
      softmax: relevance of softmax-over-labels scores instead of raw logits.
      use_features: give CLIP's patch features to the distillation classifier.
      auto: automatic labelling, used when ``labels="auto"``.
    """

    tta: TTAConfig = TTAConfig()
    refine: RefineConfig = RefineConfig()
    start_layer: int = -1
    softmax: bool = False
    use_features: bool = True
    auto: AutoLabelConfig = AutoLabelConfig()


@dataclasses.dataclass
class SegmentResult:
    """Output of ``segment``.

    Attributes:
      mask: int32 ``[H, W]``: 0 background, ``i + 1`` = ``labels[i]``.
      scores: float32 ``[K, H, W]`` TTA relevance in image coordinates, in [0, 1].
      labels: the labels used, in order (after cleaning or automatic labelling).
      timings: seconds per stage (``relevance``, ``refine``; ``auto_labels`` if used).
      label_scores: for automatic labels, the probability of each chosen label.
    """

    mask: np.ndarray
    scores: np.ndarray
    labels: list[str]
    timings: dict[str, float]
    label_scores: Optional[list[float]] = None


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Strips labels, drops empty ones and repeats (same normalised name), keeping order.

    A repeated label would split one class's pixels between two indices, and an
    empty one has no meaning for CLIP, so both are dropped with a warning.
    """
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of names or 'auto', got the string {labels!r}")
    kept, seen = [], set()
    for label in labels:
        text = " ".join(str(label).split())
        key = normalize_class_name(text) if text else ""
        if not key:
            warnings.warn(f"ignoring empty label {label!r}", stacklevel=3)
        elif key in seen:
            warnings.warn(f"ignoring repeated label {text!r}", stacklevel=3)
        else:
            kept.append(text)
            seen.add(key)
    return kept


@functools.lru_cache(maxsize=8192)
def _label_embedding(clip, label: str, templates: tuple[str, ...]) -> np.ndarray:
    # Cached per (model, label, templates): dataset runs reuse a few dozen labels.
    return class_embeddings(clip, [label], templates)[0]


def label_embeddings(clip, labels: Sequence[str], templates: tuple[str, ...]) -> np.ndarray:
    """``[K, P]`` prompt-ensembled embeddings, cached per label."""
    if not labels:
        return np.zeros((0, clip.config.projection_dim), np.float32)
    return np.stack([_label_embedding(clip, label, templates) for label in labels])


def relevance_stage(clip, images: Sequence[np.ndarray], labels: Sequence[Sequence[str]],
                    config: SegmentConfig, batch_size: Optional[int] = None, mesh=None):
    """Device stage for a batch: ``[(scores [K, H, W], features [gh, gw, P] | None)]``.

    Images with no labels are skipped on the device (their scores are empty).
    ``mesh``: optional ``jax.sharding.Mesh`` with a ``"data"`` axis to split the
    batch over (``batch_size`` a multiple of its size; see ``jaxseg.sharding``).
    """
    outputs: list = [(np.zeros((0,) + image.shape[:2], np.float32), None) for image in images]
    todo = [i for i, names in enumerate(labels) if names]
    if todo:
        results = relevance_tta_batch(
            clip, [images[i] for i in todo],
            [label_embeddings(clip, labels[i], config.tta.templates) for i in todo],
            config.tta, config.start_layer, config.softmax, batch_size, mesh)
        for i, (scores, features) in zip(todo, results):
            outputs[i] = (scores, features if config.use_features else None)
    return outputs


def refine_stage(image: np.ndarray, scores: np.ndarray, features: Optional[np.ndarray],
                 config: SegmentConfig) -> np.ndarray:
    """Host stage: ``refine`` with the pipeline's settings (picklable for process pools)."""
    return refine(image, scores, features, config.refine)


def timed_refine(image: np.ndarray, scores: np.ndarray, features: Optional[np.ndarray],
                 config: SegmentConfig) -> tuple[np.ndarray, float]:
    """``refine_stage`` and its seconds (module level: it runs in pool workers)."""
    start = time.perf_counter()
    mask = refine_stage(image, scores, features, config)
    return mask, time.perf_counter() - start


def timed_auto_labels(clip, image: np.ndarray, config: SegmentConfig
                      ) -> tuple[list[str], list[float], float]:
    """``auto_labels`` of one uint8 ``[H, W, 3]`` image: names, their scores, seconds."""
    start = time.perf_counter()
    chosen = auto_labels(clip, image, config.auto.vocabulary, config.auto, config.tta)
    return [name for name, _ in chosen], [score for _, score in chosen], time.perf_counter() - start


def segment_batch(clip, images: Sequence[np.ndarray], labels: Sequence[Labels],
                  config: SegmentConfig = SegmentConfig(),
                  batch_size: Optional[int] = None) -> list[SegmentResult]:
    """Segments several images; relevance for all of them runs in one device call.

    Args:
      clip: a ``jaxseg.CLIP``.
      images: image arrays (see ``as_rgb_uint8``).
      labels: per image, a list of class names or ``"auto"``.
      config: pipeline settings.
      batch_size: pad the device batch to this many images (a fixed size avoids
        recompiling for the last, smaller batch of a dataset).
    """
    images = [as_rgb_uint8(image) for image in images]
    timings = [dict() for _ in images]
    names, label_scores = [], []
    for image, wanted, timing in zip(images, labels, timings):
        if isinstance(wanted, str) and wanted == "auto":
            chosen, score, timing["auto_labels"] = timed_auto_labels(clip, image, config)
            names.append(chosen)
            label_scores.append(score)
        else:
            names.append(clean_labels(wanted))
            label_scores.append(None)
    start = time.perf_counter()
    relevance = relevance_stage(clip, images, names, config, batch_size)
    per_image = (time.perf_counter() - start) / len(images)
    results = []
    for image, (scores, features), chosen, score, timing in zip(
            images, relevance, names, label_scores, timings):
        timing["relevance"] = per_image
        mask, timing["refine"] = timed_refine(image, scores, features, config)
        results.append(SegmentResult(mask, scores, chosen, timing, score))
    return results


def segment(clip, image: np.ndarray, labels: Labels,
            config: SegmentConfig = SegmentConfig()) -> SegmentResult:
    """Segments one image given its class names (or ``"auto"``).

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      image: ``[H, W, 3]`` uint8 RGB (grey, RGBA, uint16 and float are converted).
      labels: class names present in the image, or ``"auto"`` to pick them from
        ``config.auto.vocabulary`` with CLIP. Empty and repeated names are dropped.
      config: every stage's settings.

    Returns:
      ``SegmentResult`` with ``mask`` int32 ``[H, W]`` (0 background, ``i + 1`` =
      ``labels[i]``), ``scores`` float32 ``[K, H, W]`` and the labels used.
    """
    return segment_batch(clip, [image], [labels], config)[0]
