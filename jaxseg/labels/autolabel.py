"""Automatic labels from a vocabulary: CLIP zero-shot per image, or dense-map pixel shares.

Image-level rule (``rule="image"``, every method but NACLIP by default):

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

Dense rule (``rule="dense"``, NACLIP's default): the image is segmented with every
vocabulary class as a label (``Segmenter`` runs it: the method's maps, background and
scoring, no refinement), and a class is kept when it wins at least ``min_share`` of the
pixels (2 %: small objects such as a bottle on a table still count, while the scattered
pixels a wrong class wins on a random-looking map stay below it), at most ``top_k``,
largest share first. The recorded label score is the pixel share.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.checks import check_numbers
from jaxseg.clip.model import encode_image
from jaxseg.labels.presets import DEFAULT_TEMPLATES
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
      rule: ``"image"`` or ``"dense"``; None: dense for NACLIP, image otherwise.
      threshold: image rule: minimum label probability (softmax over the vocabulary,
        maximum over TTA variants) for a label to be kept.
      min_share: dense rule: minimum share of the image's pixels a label must win.
      top_k: at most this many labels per image.
    """

    vocabulary: str = "voc"
    rule: Optional[str] = None
    threshold: float = 0.15
    min_share: float = 0.02
    top_k: int = 4

    def __post_init__(self):
        check_numbers(self)
        if (not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.min_share <= 1.0
                or self.top_k < 0):
            raise ValueError(f"AutoLabelConfig needs threshold and min_share in [0, 1] and "
                             f"top_k >= 0, got {self.threshold}, {self.min_share}, {self.top_k}")
        if self.rule not in (None, "image", "dense"):
            raise ValueError(f"AutoLabelConfig.rule must be 'image' or 'dense', got {self.rule!r}")


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


def batch_probabilities(params, canvases, content_hw, vocab_embeds, *, config, dtype,
                        tta: TTAConfig) -> jax.Array:
    """Pure: ``[I, V, E]`` :func:`variant_probabilities` of a batch of canvases."""
    return jax.vmap(lambda canvas, hw: variant_probabilities(
        params, canvas, hw, vocab_embeds, config=config, dtype=dtype, tta=tta))(
        canvases, content_hw)


def auto_labels(clip, image: np.ndarray,
                vocabulary: Union[str, Sequence[VocabEntry]] = "voc",
                config: AutoLabelConfig = AutoLabelConfig(), tta: TTAConfig = TTAConfig(),
                templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[tuple[str, float]]:
    """Picks the labels present in an image from a vocabulary.

    Embeds the vocabulary on every call; a ``jaxseg.Segmenter`` keeps it between images.

    Args:
      clip: a ``jaxseg.CLIP``.
      image: uint8 ``[H, W, 3]`` RGB image.
      vocabulary: ``"voc"``, ``"coco"``, a vocabulary file path, or entries.
      config: threshold and top-k (the image rule).
      tta: the variants scored.
      templates: the prompt templates.

    Returns:
      ``[(name, probability), ...]`` best first; empty when nothing passes (the
      image is then all background).
    """
    entries = tuple(load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary)
    if not entries or config.top_k == 0:
        return []
    vocab_embeds = vocabulary_embeddings(clip, entries, templates)
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


def select_by_share(names: Sequence[str], label_map: np.ndarray,
                    config: AutoLabelConfig) -> list[tuple[str, float]]:
    """The dense rule: names (label ``k`` of ``label_map`` is ``names[k - 1]``) winning at
    least ``min_share`` of the pixels, largest share first, at most ``top_k``."""
    shares = np.bincount(label_map.ravel(), minlength=len(names) + 1)[1:] / label_map.size
    return select_labels(names, shares, dataclasses.replace(config, threshold=config.min_share))
