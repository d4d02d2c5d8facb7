"""Class vocabularies for automatic labelling, and class-name normalisation shared with evaluation.

A vocabulary is the list of classes the automatic labeller may choose from
(``--labels auto --vocab voc|coco|FILE``). Each entry has a canonical name (the
one written to prediction sidecars and matched against ground truth) and
optional synonyms, which are friendlier texts for prompting CLIP.

Vocabulary file format (UTF-8 text, one class per line)::

    # comments start with '#', blank lines are skipped
    cat
    pottedplant: potted plant, house plant
"""

from __future__ import annotations

import dataclasses
import os
import re

# The 20 PASCAL VOC classes in their official order (class id i + 1; 0 is background).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The 80 COCO "thing" classes in COCO's category order (ids 1-90 with gaps).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

# VOC writes compound names as one word; CLIP reads the spaced form far better.
_VOC_PROMPT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "diningtable": ("dining table",),
    "pottedplant": ("potted plant",),
    "tvmonitor": ("tv monitor",),
}

# Spellings of the same class across VOC, COCO and everyday English, keyed and valued by
# the separator-free lowercase form. Kept small on purpose: only unambiguous renames.
_ALIASES: dict[str, str] = {
    "airplane": "aeroplane",
    "plane": "aeroplane",
    "motorcycle": "motorbike",
    "couch": "sofa",
    "tv": "tvmonitor",
    "television": "tvmonitor",
    "monitor": "tvmonitor",
}

# COCO panoptic stuff names carry these qualifiers ("sky-other-merged", "door-stuff").
_COCO_SUFFIXES = re.compile(r"(?:[-_ ](?:merged|other|stuff))+$")
_SEPARATORS = re.compile(r"[\s\-_]+")


@dataclasses.dataclass(frozen=True)
class VocabEntry:
    """One vocabulary class.

    Attributes:
      name: canonical class name, written to prediction sidecars and matched
        against ground-truth class names with :func:`normalize_class_name`.
      synonyms: other names for the same class, e.g. friendlier prompt texts.
    """

    name: str
    synonyms: tuple[str, ...] = ()

    @property
    def all_names(self) -> tuple[str, ...]:
        """The canonical name followed by the synonyms."""
        return (self.name, *self.synonyms)


def normalize_class_name(name: str) -> str:
    """Canonical matching key of a class name.

    Lowercases, drops COCO's ``-merged`` / ``-other`` / ``-stuff`` qualifiers,
    removes spaces, hyphens and underscores, then applies a small alias table so
    that VOC and COCO spellings agree ("potted plant" -> "pottedplant",
    "tv" -> "tvmonitor", "airplane" -> "aeroplane", "couch" -> "sofa",
    "table-merged" -> "table").

    Args:
      name: a class name as written by a user, a vocabulary or a dataset.

    Returns:
      The matching key; two names denote the same class when their keys are equal.
    """
    key = _COCO_SUFFIXES.sub("", name.strip().lower())
    key = _SEPARATORS.sub("", key)
    return _ALIASES.get(key, key)


def _builtin(names: tuple[str, ...], synonyms: dict[str, tuple[str, ...]]) -> list[VocabEntry]:
    return [VocabEntry(name, synonyms.get(name, ())) for name in names]


def _parse_line(line: str, where: str) -> VocabEntry | None:
    """Parses one vocabulary line; None for blank and comment-only lines."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    name, colon, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"{where}: empty class name in {line.strip()!r}; write 'name' or "
                         "'name: synonym, synonym'")
    synonyms: tuple[str, ...] = ()
    if colon:
        synonyms = tuple(part.strip() for part in rest.split(","))
        if not rest.strip() or any(not part for part in synonyms):
            raise ValueError(f"{where}: empty synonym in {line.strip()!r}; write "
                             "'name: synonym, synonym' or just 'name'")
    return VocabEntry(name, synonyms)


def read_vocabulary_file(path: str | os.PathLike) -> list[VocabEntry]:
    """Reads a vocabulary text file (format in the module docstring).

    Args:
      path: the file.

    Returns:
      The entries in file order.

    Raises:
      ValueError: unreadable file, malformed line, duplicate class, or no class at
        all; the message names the file and line.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read vocabulary file {path}: {error}") from error
    entries: list[VocabEntry] = []
    first_line_of: dict[str, int] = {}
    for line_number, line in enumerate(lines, start=1):
        where = f"{path}:{line_number}"
        entry = _parse_line(line, where)
        if entry is None:
            continue
        key = normalize_class_name(entry.name)
        if key in first_line_of:
            raise ValueError(f"{where}: class {entry.name!r} repeats the class on line "
                             f"{first_line_of[key]}; merge them with 'name: synonym'")
        first_line_of[key] = line_number
        entries.append(entry)
    if not entries:
        raise ValueError(f"vocabulary file {path} lists no class; write one class name per line")
    return entries


def load_vocabulary(spec: str | os.PathLike) -> list[VocabEntry]:
    """Loads a vocabulary by name or from a file.

    Args:
      spec: ``"voc"`` (the 20 PASCAL VOC classes, compound names with spaced
        synonyms), ``"coco"`` (the 80 COCO thing classes) or the path of a
        vocabulary text file.

    Returns:
      The vocabulary entries, without a background class.

    Raises:
      ValueError: ``spec`` is neither a built-in name nor a readable, valid file.
    """
    builtin = str(spec).strip().lower()
    if builtin == "voc":
        return _builtin(VOC_CLASSES, _VOC_PROMPT_SYNONYMS)
    if builtin == "coco":
        return _builtin(COCO_CLASSES, {})
    if not os.path.isfile(spec):
        raise ValueError(f"vocabulary {str(spec)!r} is neither 'voc', 'coco' nor an existing "
                         "file; pass one of those or the path of a text file")
    return read_vocabulary_file(spec)
