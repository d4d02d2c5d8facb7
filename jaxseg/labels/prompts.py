"""Class names -> CLIP prompts: cleaning, fitting to the 77-token context, embedding.

:func:`prepare_labels` is the one rule for user labels, used by the Python API and the
command line alike: names are stripped, empty ones and repeats dropped, and a name whose
prompts would not fit CLIP's context is cut to its longest fitting word prefix, each
with a warning. :func:`class_embeddings` embeds names with prompt ensembling.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np

from jaxseg.labels.vocab import normalize_class_name


def clean_labels(labels: Sequence[str]) -> list[str]:
    """Strips labels, drops empty ones and repeats, keeping order.

    A repeat is a label with the normalised name of an earlier one
    (:func:`jaxseg.labels.vocab.normalize_class_name`): the same name in another case or
    spacing, or an alias of the same VOC/COCO class ("sofa" after "couch", "tv" after
    "tvmonitor"). A repeat would split one class's pixels between two indices, and an
    empty label has no meaning for CLIP, so both are dropped with a warning.
    """
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of names or 'auto', got the string {labels!r}")
    if not isinstance(labels, Iterable):
        raise ValueError(f"labels must be a list of names or 'auto', got {labels!r}")
    kept, first = [], {}
    for label in labels:
        text = " ".join(str(label).split())
        key = normalize_class_name(text) if text else ""
        if not key:
            warnings.warn(f"ignoring empty label {label!r}", stacklevel=3)
        elif key in first and first[key].casefold() == text.casefold():
            warnings.warn(f"ignoring repeated label {text!r}", stacklevel=3)
        elif key in first:
            warnings.warn(f"ignoring label {text!r}: it names the same class as {first[key]!r} "
                          f"(jaxseg.labels.vocab.normalize_class_name)", stacklevel=3)
        else:
            kept.append(text)
            first[key] = text
    return kept


def fit_label(label: str, tokenizer, templates: Sequence[str], context_length: int) -> str:
    """``label`` cut to the longest word prefix (or character prefix, for one huge word)
    whose every prompt fits ``context_length`` tokens with BOS and EOS; ``label`` itself
    when it fits. ``tokenizer.encode(text)`` gives the ids of a text."""
    budget = context_length - 2

    def fits(text: str) -> bool:
        return all(len(tokenizer.encode(t.format(text))) <= budget for t in templates)

    if fits(label):
        return label
    words = label.split()
    while len(words) > 1 and not fits(" ".join(words)):
        words.pop()
    text = " ".join(words)
    if fits(text):
        return text
    low, high = 0, len(text)  # longest fitting character prefix of the single word
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(text[:middle]) else (low, middle - 1)
    return text[:low]


def prepare_labels(labels: Sequence[str], tokenizer, templates: Sequence[str],
                   context_length: int) -> list[str]:
    """User labels -> the labels segmented: :func:`clean_labels`, then :func:`fit_label`
    on each (a warning for each shortened one), then cleaned again (a cut can make two
    names equal or empty)."""
    fitted = []
    for name in clean_labels(labels):
        short = fit_label(name, tokenizer, templates, context_length)
        if short != name:
            warnings.warn(f"label {name[:40]!r}{'...' if len(name) > 40 else ''} does not fit "
                          f"CLIP's {context_length}-token prompt; using {short!r}", stacklevel=2)
        fitted.append(short)
    return clean_labels(fitted)


def class_embeddings(clip, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """Prompt-ensembled class embeddings ``[K, P]`` (unit norm).

    Each label is put into every template (``"a photo of a {}."``), encoded, the
    unit embeddings are averaged and the mean is renormalised (CLIP's zero-shot
    recipe).
    """
    for name, value in (("labels", labels), ("templates", templates)):
        if isinstance(value, str):  # iterating it would embed each character
            raise ValueError(f"class_embeddings: {name} must be a list of strings, got the "
                             f"string {value!r}")
    if not labels:
        return np.zeros((0, clip.config.projection_dim), np.float32)
    prompts = [template.format(label) for label in labels for template in templates]
    embeds = np.asarray(clip.encode_prompts(prompts), np.float32)
    embeds = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    mean = embeds.reshape(len(labels), len(templates), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)
