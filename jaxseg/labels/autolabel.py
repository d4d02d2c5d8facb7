"""Automatic image-level labels: multi-label CLIP zero-shot over a vocabulary.

Each vocabulary entry is embedded with every prompt template and every synonym
(unit embeddings averaged). Every TTA variant of the image (full image, its
mirror, the crops) is scored against the whole vocabulary with CLIP's softmax,
and a label's score is its maximum over variants: an object that fills one crop
counts even if it is small in the full image. Labels above ``threshold`` are kept,
at most ``top_k`` of them, best first.

Why these defaults: with a softmax over 20 (VOC) to 80 (COCO) names, a class that
is clearly present takes most of one variant's mass, and a second object in the
same image still wins some crop; 0.15 is well above the uniform 1/20 = 0.05 of
an image showing none of the classes, and VOC/COCO images rarely hold more than
four labelled classes, hence ``top_k`` 4.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.clip.model import encode_image
from jaxseg.labels.prompts import class_embeddings
from jaxseg.labels.vocab import VocabEntry, load_vocabulary
from jaxseg.maps import tta as tta_lib
from jaxseg.maps.chefer import class_scores
from jaxseg.maps.tta import TTAConfig


@dataclasses.dataclass(frozen=True)
class AutoLabelConfig:
    """How ``labels="auto"`` picks labels (see the module docstring for the reasoning).

    Attributes:
      vocabulary: ``"voc"``, ``"coco"`` or a vocabulary file path (used by ``segment``).
      threshold: minimum label probability (softmax over the vocabulary, maximum over
        TTA variants) for a label to be kept.
      top_k: at most this many labels per image.
    """

    vocabulary: str = "voc"
    threshold: float = 0.15
    top_k: int = 4

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0 or self.top_k < 0:
            raise ValueError(f"AutoLabelConfig needs threshold in [0, 1] and top_k >= 0, got "
                             f"{self.threshold} and {self.top_k}")


def vocabulary_embeddings(clip, entries: Sequence[VocabEntry],
                          templates: Sequence[str]) -> np.ndarray:
    """``[E, P]`` unit embeddings: each entry's names x templates, averaged."""
    embeds = []
    for entry in entries:
        mean = class_embeddings(clip, entry.all_names, templates).mean(axis=0)
        embeds.append(mean / np.linalg.norm(mean))
    return np.stack(embeds)


def variant_probabilities(params, canvas, content_hw, vocab_embeds, *, config, dtype,
                          tta: TTAConfig) -> jax.Array:
    """Pure: ``[V, E]`` softmax-over-vocabulary probabilities of each TTA variant."""
    boxes, flips = tta_lib.variant_boxes(content_hw, tta)
    pixels = tta_lib.crop_variants(canvas, boxes, flips, tta.input_size)
    embeds = encode_image(params, pixels, config, dtype)
    return class_scores(params["logit_scale"], embeds, vocab_embeds, softmax=True)


def auto_labels(clip, image: np.ndarray,
                vocabulary: Union[str, Sequence[VocabEntry]] = "voc",
                config: AutoLabelConfig = AutoLabelConfig(),
                tta: TTAConfig = TTAConfig()) -> list[tuple[str, float]]:
    """Picks the labels present in an image from a vocabulary.

    Embeds the vocabulary on every call; a ``jaxseg.Segmenter`` keeps it between images.

    Args:
      clip: a ``jaxseg.CLIP``.
      image: uint8 ``[H, W, 3]`` RGB image.
      vocabulary: ``"voc"``, ``"coco"``, a vocabulary file path, or entries.
      config: threshold and top-k.
      tta: the variants scored (and the prompt templates).

    Returns:
      ``[(name, probability), ...]`` best first; empty when nothing passes (the
      image is then all background).
    """
    entries = tuple(load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary)
    if not entries or config.top_k == 0:
        return []
    vocab_embeds = vocabulary_embeddings(clip, entries, tta.templates)
    canvas, content_hw = tta_lib.prepare_canvas(image, tta)
    probabilities = clip.compiled(variant_probabilities, tta=tta)(
        clip.params, canvas, jnp.asarray(content_hw, jnp.int32), vocab_embeds)
    best = np.asarray(jax.device_get(probabilities)).max(axis=0)
    return select_labels([entry.name for entry in entries], best, config)


def select_labels(names: Sequence[str], scores: np.ndarray,
                  config: AutoLabelConfig) -> list[tuple[str, float]]:
    """Names whose score is >= ``threshold``, best first, at most ``top_k`` (ties: vocab order)."""
    order = sorted(range(len(names)), key=lambda i: (-float(scores[i]), i))
    return [(names[i], float(scores[i])) for i in order
            if scores[i] >= config.threshold][:config.top_k]
