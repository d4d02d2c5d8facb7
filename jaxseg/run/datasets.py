"""Work lists for the command line: images with their labels, from files or dataset layouts.

Every source yields :class:`Item` ``(stem, path, labels)``; outputs are named by
the stem, so two inputs with the same stem cannot both be written and the second
is reported as a failure (the same file listed twice is segmented once), as is an input
whose picture would take the name of another's mask (:func:`refuse_picture_clashes`).
``limit`` keeps the first images of a listing before anything is read. Problems with one
image (no labels for it, unreadable ground truth) become per-image failures of the run;
problems with the whole dataset (missing split file, no ``images/`` folder, malformed
labels file) raise :class:`DatasetError`.

Layouts:

- ``voc``: ``ROOT/ImageSets/Segmentation/<split>.txt`` lists image ids; images are
  ``ROOT/JPEGImages/<id>.jpg``; labels are the classes present in
  ``ROOT/SegmentationClass/<id>.png`` (ids 1..20 -> :data:`jaxseg.labels.vocab.VOC_CLASSES`,
  0 and 255 ignored) or, for images without a mask, the object names of
  ``ROOT/Annotations/<id>.xml``.
- ``folder``: images ``ROOT/images/*.{jpg,jpeg,png,bmp,gif,tif,tiff,webp}`` and a
  labels file (default ``ROOT/labels.json``) mapping each stem to its label
  names; an empty list means the image holds none of the classes (all background).
"""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ElementTree
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from jaxseg.labels.vocab import VOC_CLASSES
from jaxseg.run.imageio import read_mask
from jaxseg.run.outputs import EXTRAS

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
Labels = Union[list, str]  # label names, or "auto"


class DatasetError(ValueError):
    """A dataset, labels file or layout cannot be used at all (one-line message)."""


class Item(NamedTuple):
    """One image to segment: output stem, image path, label names (or ``"auto"``)."""

    stem: str
    path: str
    labels: Labels


@dataclasses.dataclass
class Dataset:
    """Items to run and the inputs already known to fail, as ``(path, reason)``."""

    items: list[Item]
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def read_labels_file(path: str) -> dict[str, list[str]]:
    """Reads ``{"<stem>": ["cat", ...], ...}``.

    Raises:
      DatasetError: unreadable file, invalid JSON, or a value that is not a list of strings.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise DatasetError(f"cannot read labels file {path}: {error.strerror or error}") from None
    except ValueError as error:
        raise DatasetError(f"labels file {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"labels file {path} must hold a JSON object "
                           '{"<image stem>": ["label", ...]}')
    for stem, names in data.items():
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise DatasetError(f"labels file {path}: {stem!r} must map to a list of label names, "
                               f"got {json.dumps(names)[:60]}")
    return data


def collect_items(paths: Sequence[str], labels: Optional[Labels] = None,
                  labels_by_stem: Optional[Mapping[str, list]] = None,
                  labels_source: str = "the labels file", limit: Optional[int] = None) -> Dataset:
    """Items for image paths, with the same labels for all or labels per stem.

    Args:
      paths: image files; the output stem is the file name without extension.
      labels: labels shared by every image (a list or ``"auto"``).
      labels_by_stem: per-stem labels (used when ``labels`` is None).
      labels_source: how to name ``labels_by_stem`` in messages.
      limit: only the first ``limit`` paths (None: all).
    """
    dataset, first_path = Dataset([]), {}
    for path in paths[:limit]:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in first_path:
            if os.path.realpath(path) != os.path.realpath(first_path[stem]):
                dataset.failures.append((path, f"has the same output name {stem!r} as "
                                               f"{first_path[stem]}; rename one of them"))
            continue
        first_path[stem] = path
        if labels is not None:
            dataset.items.append(Item(stem, path, labels))
        elif labels_by_stem is not None and stem in labels_by_stem:
            dataset.items.append(Item(stem, path, list(labels_by_stem[stem])))
        else:
            dataset.failures.append((path, f"no labels for {stem!r} in {labels_source}"))
    return dataset


def refuse_picture_clashes(dataset: Dataset, extras: Sequence[str]) -> None:
    """Moves to ``dataset.failures`` every item whose picture (``<stem>_overlay.png`` or
    ``<stem>_maps.png``, for the ``extras`` asked for) has the name of another item's mask.

    The item with the picture is the one refused, so a mask an earlier run wrote under that
    name is never overwritten; the other item is segmented as usual.
    """
    stems = {item.stem for item in dataset.items}
    kept = []
    for item in dataset.items:
        clash = next((extra for extra in EXTRAS if extra in extras
                      and f"{item.stem}_{extra}" in stems), None)
        if clash:
            dataset.failures.append((item.path, f"its {clash} picture {item.stem}_{clash}.png "
                                                f"would take the name of the mask of image "
                                                f"{item.stem}_{clash}; rename one of them"))
        else:
            kept.append(item)
    dataset.items = kept


def folder_dataset(root: str, labels: Optional[Labels] = None,
                   labels_file: Optional[str] = None, limit: Optional[int] = None) -> Dataset:
    """The ``folder`` layout (see the module docstring).

    Args:
      root: folder holding ``images/``.
      labels: labels for every image (a list or ``"auto"``) instead of a labels file.
      labels_file: per-stem labels; default ``ROOT/labels.json`` when neither is given.
      limit: only the first ``limit`` images in name order (None: all).
    """
    images_dir = os.path.join(root, "images")
    if not os.path.isdir(images_dir):
        raise DatasetError(f"{root} is not a folder dataset: it has no images/ folder (expected "
                           f"{os.path.join(root, 'images', '<stem>.jpg')})")
    paths = sorted(os.path.join(images_dir, name) for name in os.listdir(images_dir)
                   if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))
    if not paths:
        raise DatasetError(f"{images_dir} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    if labels is not None:
        return collect_items(paths, labels=labels, limit=limit)
    if labels_file is None:
        labels_file = os.path.join(root, "labels.json")
        if not os.path.isfile(labels_file):
            raise DatasetError(f"no labels for {root}: it has no labels.json; pass --labels-file "
                               "FILE, --labels a,b or --labels auto")
    return collect_items(paths, labels_by_stem=read_labels_file(labels_file),
                         labels_source=labels_file, limit=limit)


def voc_mask_labels(mask_path: str) -> list[str]:
    """VOC class names present in a ``SegmentationClass`` mask, in class order.

    Raises:
      ValueError: unreadable mask or a value outside 0..20 and 255.
    """
    values = np.unique(read_mask(mask_path, "ground-truth mask"))
    unknown = [int(v) for v in values if v != 255 and not 0 <= v <= len(VOC_CLASSES)]
    if unknown:
        raise ValueError(f"ground-truth mask {mask_path} has class ids {unknown} outside VOC's "
                         f"0..{len(VOC_CLASSES)} and 255")
    return [VOC_CLASSES[int(v) - 1] for v in values if 1 <= v <= len(VOC_CLASSES)]


def voc_annotation_labels(xml_path: str) -> list[str]:
    """Object names of a VOC ``Annotations`` XML file, once each, VOC classes in class order.

    Raises:
      ValueError: unreadable or malformed XML.
    """
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise ValueError(f"cannot read annotation {xml_path}: {error}") from None
    names = []
    for element in root.iter("object"):
        name = " ".join((element.findtext("name") or "").split())
        if name and name not in names:
            names.append(name)
    order = {name: index for index, name in enumerate(VOC_CLASSES)}
    return sorted(names, key=lambda name: order.get(name, len(order)))  # stable: ties keep file order


def voc_dataset(root: str, split: str = "val", labels: Optional[Labels] = None,
                limit: Optional[int] = None) -> Dataset:
    """The ``voc`` layout (see the module docstring).

    Args:
      root: ``VOCdevkit/VOC2012`` (or a folder laid out the same way).
      split: name of the list in ``ImageSets/Segmentation`` (``train``, ``val``, ...).
      labels: labels for every image (e.g. ``"auto"``) instead of the ground truth.
      limit: only the first ``limit`` images of the split (None: all).
    """
    split_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise DatasetError(f"{root} is not a VOC2012 folder with a {split!r} split: "
                           f"{split_file} is missing (pass --root VOCdevkit/VOC2012)")
    with open(split_file, encoding="utf-8") as handle:
        ids = [line.strip() for line in handle if line.strip()][:limit]
    dataset = Dataset([])
    for image_id in ids:
        path = os.path.join(root, "JPEGImages", f"{image_id}.jpg")
        if labels is not None:
            dataset.items.append(Item(image_id, path, labels))
            continue
        mask_path = os.path.join(root, "SegmentationClass", f"{image_id}.png")
        xml_path = os.path.join(root, "Annotations", f"{image_id}.xml")
        try:
            if os.path.isfile(mask_path):
                names = voc_mask_labels(mask_path)
            elif os.path.isfile(xml_path):
                names = voc_annotation_labels(xml_path)
            else:
                raise ValueError(f"no ground truth for labels: neither {mask_path} nor {xml_path}")
        except ValueError as error:
            dataset.failures.append((path, str(error)))
            continue
        dataset.items.append(Item(image_id, path, names))
    return dataset
