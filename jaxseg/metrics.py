"""Scoring predicted label maps against ground truth: a streaming confusion matrix.

Predictions: ``PRED/<stem>.png`` (palette or grayscale PNG) per image. With a
``PRED/<stem>.json`` sidecar (as written by ``python -m jaxseg.segment``), pixel value 0
is background and value ``i + 1`` is ``sidecar["labels"][i]``; labels are matched to
the ground-truth classes by :func:`jaxseg.labels.vocab.normalize_class_name`, and a
label that matches no class counts as background (with a warning). Without a
sidecar, pixel values are taken as ground-truth class ids already (ignore value
and void ids count as background).

Ground truth: ``GT/<stem>.png`` of class ids. ``voc`` class space (default) is
PASCAL VOC (ids 0-20, 0 = background); a ``.yaml`` file with a ``classes:`` mapping
id -> name (like coco-dev's ``classes.yaml``) or a text file whose line ``i`` names
class id ``i`` give others. Pixels equal to the ignore value and classes named
"unlabeled", "void" or "ignore" are not scored. A class space with no class named
"background" gets a pseudo class "background" for predicted background pixels: those
pixels count as misses of the true class, and the pseudo class is shown but left out
of the mean (the ground truth never has it).

Scores are percentages: per-class IoU, precision and recall, mean IoU over the
classes present in the ground truth or the prediction (classes absent from both
have no defined IoU and are left out of the mean), and pixel accuracy. The command
line is ``jaxseg.cli.evaluate``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import warnings
from typing import Callable, Sequence

import numpy as np

from jaxseg.labels.vocab import VOC_CLASSES, normalize_class_name
from jaxseg.run.imageio import read_mask

_VOID_NAMES = frozenset({"unlabeled", "unlabelled", "void", "ignore"})
PICTURE_SUFFIXES = ("_overlay", "_maps")  # pictures written beside predictions


class ConfusionMatrix:
    """Pixel confusion counts over a fixed class list; memory is ``[K, K]`` whatever the data size.

    Rows are ground-truth classes, columns predicted classes.

    Args:
      names: the ``K`` class names; class index ``k`` is ``names[k]``.
      ignore_index: ground-truth value whose pixels are not counted.
      excluded_from_mean: class indices shown in the scores but left out of the
        mean IoU (e.g. a pseudo "background" class the ground truth never has).
    """

    def __init__(self, names: Sequence[str], ignore_index: int = 255,
                 excluded_from_mean: Sequence[int] = ()):
        self.names = tuple(names)
        self.ignore_index = ignore_index
        self.excluded_from_mean = frozenset(excluded_from_mean)
        self.counts = np.zeros((len(self.names), len(self.names)), np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Adds one image.

        Args:
          pred: integer ``[H, W]`` predicted class indices in ``[0, K)``.
          gt: integer ``[H, W]`` ground-truth class indices in ``[0, K)`` or ``ignore_index``.
        """
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape "
                             f"{gt.shape}; pass masks of the same size")
        valid = gt != self.ignore_index
        pred_valid, gt_valid = pred[valid].astype(np.int64), gt[valid].astype(np.int64)
        num_classes = len(self.names)
        for what, values in (("prediction", pred_valid), ("ground truth", gt_valid)):
            if values.size and (values.min() < 0 or values.max() >= num_classes):
                raise ValueError(f"{what} has class index {values.min()}..{values.max()} outside "
                                 f"[0, {num_classes}); map it to the {num_classes} classes first")
        flat = np.bincount(gt_valid * num_classes + pred_valid, minlength=num_classes ** 2)
        self.counts += flat.reshape(num_classes, num_classes)

    def scores(self) -> dict:
        """Per-class and mean scores, in percent.

        Returns:
          A dict with ``miou`` (None if no class is present), ``pixel_accuracy``,
          ``num_pixels``, ``classes`` (one dict per class: ``name``, ``iou``,
          ``precision``, ``recall`` (None where undefined), ``gt_pixels``,
          ``pred_pixels``, ``in_mean``), ``absent_classes`` (names absent from
          both prediction and ground truth, left out of the mean),
          ``excluded_classes`` and ``confusion_matrix`` (rows ground truth).
        """
        true_pos = np.diag(self.counts)
        gt_pixels, pred_pixels = self.counts.sum(axis=1), self.counts.sum(axis=0)
        union = gt_pixels + pred_pixels - true_pos

        def percent(numerator, denominator):
            return None if denominator == 0 else 100.0 * float(numerator) / float(denominator)

        classes, in_mean_ious = [], []
        for index, name in enumerate(self.names):
            in_mean = bool(union[index] > 0) and index not in self.excluded_from_mean
            iou = percent(true_pos[index], union[index])
            classes.append({
                "name": name, "iou": iou,
                "precision": percent(true_pos[index], pred_pixels[index]),
                "recall": percent(true_pos[index], gt_pixels[index]),
                "gt_pixels": int(gt_pixels[index]), "pred_pixels": int(pred_pixels[index]),
                "in_mean": in_mean,
            })
            if in_mean:
                in_mean_ious.append(iou)
        num_pixels = int(self.counts.sum())
        return {
            "miou": float(np.mean(in_mean_ious)) if in_mean_ious else None,
            "pixel_accuracy": percent(true_pos.sum(), num_pixels),
            "num_pixels": num_pixels,
            "classes": classes,
            "absent_classes": [name for name, total in zip(self.names, union) if total == 0],
            "excluded_classes": [self.names[index] for index in sorted(self.excluded_from_mean)],
            "confusion_matrix": self.counts.tolist(),
        }


@dataclasses.dataclass(frozen=True)
class ClassSpace:
    """The ground truth's classes and how raw mask values map to confusion-matrix indices.

    Attributes:
      ids: raw ground-truth id of each scored class; class index ``k < len(ids)`` is ``ids[k]``.
      names: name of each class index; one longer than ``ids`` when ``pseudo_background``.
      void_ids: raw ids that are never scored (e.g. COCO's 0 = "unlabeled").
      background_index: class index that prediction background (label 0) maps to.
      pseudo_background: True when the ground truth has no background class and
        ``names[-1]`` is an added "background" class.
    """

    ids: tuple[int, ...]
    names: tuple[str, ...]
    void_ids: tuple[int, ...]
    background_index: int
    pseudo_background: bool

    def new_confusion_matrix(self) -> ConfusionMatrix:
        """An empty matrix over these classes; ground-truth void is marked -1."""
        excluded = (self.background_index,) if self.pseudo_background else ()
        return ConfusionMatrix(self.names, ignore_index=-1, excluded_from_mean=excluded)

    def _map_raw(self, mask: np.ndarray, ignore: int, void_value: int, what: str) -> np.ndarray:
        mask = np.asarray(mask)
        # -2 marks raw values that are neither a class nor void; --ignore overrides a class id.
        table = np.full(max(int(mask.max(initial=0)), ignore, *self.ids, *self.void_ids) + 1, -2,
                        np.int64)
        table[list(self.void_ids)] = void_value
        table[list(self.ids)] = np.arange(len(self.ids))
        if ignore >= 0:
            table[ignore] = void_value
        mapped = table[mask]
        if (mapped == -2).any():
            unknown = np.unique(mask[mapped == -2]).tolist()[:10]
            raise ValueError(f"{what} has values {unknown} that are neither a class id nor the "
                             f"ignore value {ignore}; check --classes and --ignore")
        return mapped

    def gt_to_index(self, gt: np.ndarray, ignore: int = 255,
                    what: str = "ground truth") -> np.ndarray:
        """Maps raw ground-truth ids ``[H, W]`` to class indices; void and ``ignore`` -> -1."""
        return self._map_raw(gt, ignore, -1, what)

    def raw_prediction_to_index(self, pred: np.ndarray, ignore: int = 255,
                                what: str = "prediction") -> np.ndarray:
        """Maps predicted raw ids ``[H, W]`` to class indices; void and ``ignore`` -> background."""
        return self._map_raw(pred, ignore, self.background_index, what)

    def match_labels(self, labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Lookup: per-image label index (0: background, ``i + 1``: ``labels[i]``) -> class index.

        Args:
          labels: the image's label names, e.g. a prediction sidecar's ``labels``.

        Returns:
          ``(lookup, unmatched)``: int64 ``[len(labels) + 1]`` class indices, and
          the labels that match no class (mapped to background).
        """
        index_of = {normalize_class_name(name): index
                    for index, name in enumerate(self.names[:len(self.ids)])}
        lookup = [self.background_index]
        unmatched = []
        for label in labels:
            key = normalize_class_name(label)
            # An explicit "background" label means background even without a background class.
            if key not in index_of and key != "background":
                unmatched.append(label)
            lookup.append(index_of.get(key, self.background_index))
        return np.array(lookup, np.int64), unmatched


def _class_space(ids: Sequence[int], names: Sequence[str], source: str) -> ClassSpace:
    """Builds a ClassSpace, setting aside void classes and finding or adding background."""
    scored_ids, scored_names, scored_keys, void_ids = [], [], [], []
    for raw_id, name in zip(ids, names):
        key = normalize_class_name(name)
        if key in _VOID_NAMES:
            void_ids.append(raw_id)
            continue
        if key in scored_keys:
            earlier = scored_names[scored_keys.index(key)]
            raise ValueError(f"{source}: classes {earlier!r} and {name!r} have the same "
                             "normalised name, so predictions cannot be matched; rename one")
        scored_ids.append(raw_id)
        scored_names.append(name)
        scored_keys.append(key)
    if not scored_ids:
        raise ValueError(f"{source} lists no class to score; list at least one class")
    if "background" in scored_keys:
        return ClassSpace(tuple(scored_ids), tuple(scored_names), tuple(void_ids),
                          scored_keys.index("background"), False)
    return ClassSpace(tuple(scored_ids), (*scored_names, "background"), tuple(void_ids),
                      len(scored_ids), True)


def _read_yaml_classes(path: str) -> tuple[list[int], list[str]]:
    import yaml  # Only needed for .yaml class files.

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ValueError(f"classes file {path} is not valid YAML: {error}") from error
    table = document.get("classes") if isinstance(document, dict) else None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"classes file {path} has no 'classes:' mapping of id -> name; "
                         "write e.g. 'classes: {0: background, 1: cat}'")
    try:
        ids = [int(raw_id) for raw_id in table]
    except (TypeError, ValueError) as error:
        raise ValueError(f"classes file {path}: class ids must be integers ({error})") from error
    if min(ids) < 0:
        raise ValueError(f"classes file {path}: class ids must be >= 0, got {min(ids)}")
    return ids, [str(name) for name in table.values()]


def _read_text_classes(path: str) -> tuple[list[int], list[str]]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    for line_number, line in enumerate(lines, start=1):
        if not line:
            raise ValueError(f"{path}:{line_number}: empty line; line i names class id i, "
                             "so every line must hold a class name")
    return list(range(len(lines))), lines


def load_class_space(classes: str | os.PathLike = "voc") -> ClassSpace:
    """Loads the ground truth's class space.

    Args:
      classes: ``"voc"`` (ids 0-20 with 0 = background), a ``.yaml``/``.yml``
        file with a ``classes:`` id -> name mapping, or a text
        file whose line ``i`` names class id ``i``.

    Returns:
      The class space; classes named "unlabeled"/"void"/"ignore" become void.
    """
    if str(classes).strip().lower() == "voc":
        return _class_space(range(len(VOC_CLASSES) + 1), ("background", *VOC_CLASSES), "voc")
    path = str(classes)
    if not os.path.isfile(path):
        raise ValueError(f"--classes {path!r} is neither 'voc' nor an existing file")
    try:
        if path.lower().endswith((".yaml", ".yml")):
            ids, names = _read_yaml_classes(path)
        else:
            ids, names = _read_text_classes(path)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read classes file {path}: {error}") from error
    return _class_space(ids, names, path)


def read_sidecar_labels(path: pathlib.Path) -> list[str] | None:
    """The ``labels`` list of a prediction sidecar JSON, or None if there is no sidecar."""
    if not path.exists():
        return None
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"cannot read prediction sidecar {path}: {error}") from error
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        raise ValueError(f"prediction sidecar {path} needs a 'labels' list of class names")
    return labels


def evaluate(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike,
             classes: str | os.PathLike = "voc", ignore: int = 255,
             on_warning: Callable[[str], None] | None = None) -> dict:
    """Scores every prediction in ``pred_dir`` against ``gt_dir``, one image at a time.

    Args:
      pred_dir: folder of ``<stem>.png`` predictions, with optional ``<stem>.json`` sidecars.
      gt_dir: folder of ``<stem>.png`` ground-truth masks.
      classes: ground-truth class space, see :func:`load_class_space`.
      ignore: ground-truth value that is not scored (negative: none).
      on_warning: receives each warning line; defaults to ``warnings.warn``.

    Returns:
      :meth:`ConfusionMatrix.scores` plus ``num_images``, ``unscored_gt``
      (ground-truth stems with no prediction) and ``unmatched_labels``.
    """
    warn = on_warning or (lambda message: warnings.warn(message, stacklevel=3))
    pred_root, gt_root = pathlib.Path(pred_dir), pathlib.Path(gt_dir)
    for what, root in (("prediction", pred_root), ("ground truth", gt_root)):
        if not root.is_dir():
            raise ValueError(f"{what} folder {root} does not exist; pass an existing folder")
    # `jaxseg.segment --overlay / --heatmaps` write <stem>_overlay.png / <stem>_maps.png beside
    # <stem>.png: pictures, not predictions.
    pred_paths = sorted(path for path in pred_root.glob("*.png") if not any(
        path.stem.endswith(suffix) and path.with_name(path.stem[:-len(suffix)] + ".png").exists()
        for suffix in PICTURE_SUFFIXES))
    if not pred_paths:
        raise ValueError(f"prediction folder {pred_root} holds no .png prediction")
    space = load_class_space(classes)
    matrix = space.new_confusion_matrix()
    unmatched_labels: list[str] = []
    for pred_path in pred_paths:
        gt_path = gt_root / pred_path.name
        if not gt_path.exists():
            raise ValueError(f"prediction {pred_path} has no ground truth {gt_path}")
        pred = read_mask(pred_path, "prediction")
        gt = read_mask(gt_path, "ground truth")
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred_path} is {pred.shape[1]}x{pred.shape[0]} but "
                             f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]}; "
                             "predict at the ground truth's size")
        labels = read_sidecar_labels(pred_path.with_suffix(".json"))
        if labels is None:
            pred_index = space.raw_prediction_to_index(pred, ignore, f"prediction {pred_path}")
        else:
            lookup, unmatched = space.match_labels(labels)
            if int(pred.max(initial=0)) >= len(lookup):
                raise ValueError(f"prediction {pred_path} has label index {int(pred.max())} but "
                                 f"its sidecar lists {len(labels)} labels")
            for label in unmatched:
                if label not in unmatched_labels:
                    unmatched_labels.append(label)
                    warn(f"predicted label {label!r} matches no ground-truth class; "
                         "its pixels count as background")
            pred_index = lookup[pred]
        matrix.update(pred_index, space.gt_to_index(gt, ignore, f"ground truth {gt_path}"))
    predicted_stems = {path.stem for path in pred_paths}
    unscored = sorted(path.stem for path in gt_root.glob("*.png")
                      if path.stem not in predicted_stems)
    if unscored:
        warn(f"{len(unscored)} ground-truth masks in {gt_root} have no prediction and are "
             "not scored")
    return {**matrix.scores(), "num_images": len(pred_paths), "unscored_gt": unscored,
            "unmatched_labels": unmatched_labels}
