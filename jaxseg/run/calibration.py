"""Refinement levels calibrated on a sample of a dataset run's own maps.

``--calibrate-levels N`` of ``python -m jaxseg.segment``: before the run, N images spread
evenly over its list are segmented up to their maps, each image's Otsu levels and share
curve are read (``jaxseg.refinement.calibrate.read_calibration``), and the whole run
refines at the medians of the levels, the background placed where the sample's maps
cover ``--coverage`` of the pixels (``calibrate_levels``). The sample is the same in every
process (a fixed choice from the planned list, deterministic maps), so the levels, and
with them the masks, are too. Process 0 writes them to ``levels.json`` in the output
folder, and a resumed run reads them back from there (``read_record``) instead of
calibrating again, so the images it adds are refined like those already written even when
its image list has changed. The record keeps a digest of the model and settings that made
the sample's maps (``settings_key``); a resume with other ones is warned.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from jaxseg.refinement.calibrate import calibrate_levels, dataset_config, read_calibration
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.segmenter import Segmenter

LEVELS_FILE = "levels.json"
LEVEL_NAMES = ("theta", "mu_bg", "mu_fg")  # RefineConfig.levels, in order
# The image whose JSON sidecar would be named like the record.
RECORD_STEM = os.path.splitext(LEVELS_FILE)[0]


def drop_record_clashes(items: Sequence[Item]) -> tuple[list[Item], list[tuple[str, str]]]:
    """Splits off the items whose sidecar would overwrite ``levels.json``.

    Args:
      items: the run's items.

    Returns:
      The other items, and a ``(path, reason)`` failure for each one split off (any case:
      file systems that ignore case would overwrite the record too).
    """
    def clashes(item: Item) -> bool:
        return item.stem.casefold() == RECORD_STEM

    return ([item for item in items if not clashes(item)],
            [(item.path, f"its sidecar would overwrite {LEVELS_FILE}, the record of "
                         f"--calibrate-levels; rename the image")
             for item in items if clashes(item)])


def _is_sidecar(data) -> bool:
    return isinstance(data, dict) and "labels" in data and "levels" not in data


def _load(out_dir: str):
    """``out_dir``'s parsed ``levels.json``; None when there is none (OSError, ValueError
    or RecursionError when it cannot be read)."""
    try:
        with open(os.path.join(out_dir, LEVELS_FILE), encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


def holds_sidecar(out_dir: str) -> bool:
    """Whether ``out_dir``'s ``levels.json`` is an image's sidecar, not a record."""
    try:
        return _is_sidecar(_load(out_dir))
    except (OSError, ValueError, RecursionError):
        return False


def read_record(out_dir: str) -> Optional[dict]:
    """The record of --calibrate-levels in ``out_dir``.

    Args:
      out_dir: the output folder.

    Returns:
      The record, its levels and background score as floats; None when ``out_dir``
      holds no ``levels.json``, or one that is an image's sidecar (it has the image's
      ``labels`` and no levels).

    Raises:
      ValueError: when the file cannot be read or is not a record.
    """
    path = os.path.join(out_dir, LEVELS_FILE)
    try:
        record = _load(out_dir)
        if record is None or _is_sidecar(record):
            return None
        record["levels"] = {name: float(record["levels"][name]) for name in LEVEL_NAMES}
        record["background_score"] = float(record["background_score"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{path}: not a record of --calibrate-levels ({type(error).__name__}: "
                         f"{error}); move it away, or pass --overwrite to calibrate again "
                         f"and redo this run's images") from None
    return record


def check_record(record: dict, count: Optional[int], coverage: float, path: str) -> None:
    """Raises ValueError, naming the record's settings, unless a run with
    ``--calibrate-levels count --coverage coverage`` may resume at the record's levels."""
    recorded = (f"--calibrate-levels {record.get('requested')!r} "
                f"--coverage {record.get('coverage')!r}")
    if count is None:
        raise ValueError(f"{path}: this folder's images were refined at levels calibrated with "
                         f"{recorded}; add those to resume it, or pass --overwrite to redo "
                         f"this run's images at their own levels")
    if (record.get("requested"), record.get("coverage")) != (count, coverage):
        raise ValueError(f"{path}: this folder's images were refined at levels calibrated with "
                         f"{recorded}; resume with those, or pass --overwrite to calibrate "
                         f"again and redo this run's images")


def settings_key(model: str, config) -> str:
    """A short digest of the model and settings that make a run's maps (``levels.json``
    records it, so a resume with other ones is told its levels may not fit)."""
    return hashlib.sha256(f"{model}\n{config!r}".encode("utf-8")).hexdigest()[:16]


def sample_items(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[index] for index in np.linspace(0, len(items) - 1, count).round().astype(int)]


def calibrated_segmenter(segmenter: Segmenter, items: Sequence[Item], count: int,
                         coverage: float, out_dir: str, batch_size: int,
                         warn: Callable[[str], None], record: Optional[dict] = None,
                         write: bool = True, settings: str = "") -> Segmenter:
    """The segmenter with refinement levels calibrated on ``count`` of ``items``, or at
    those of a resumed run's ``record``.

    Args:
      segmenter: the run's segmenter (its config's ``refine`` is calibrated).
      items: the run's items, in the planned order.
      count: sample size (>= 1).
      coverage: the expected share of object pixels (``calibrate_levels``).
      out_dir: the output folder, where ``levels.json`` is written.
      batch_size: images per device call.
      warn: reports a sample image that cannot be read (it is left out), and a
        ``record`` made with other ``settings``.
      record: ``read_record``'s record of the folder, checked by ``check_record``; its
        levels are used and nothing is calibrated or written.
      write: write ``levels.json`` (process 0 of a run; the others compute the same).
      settings: ``settings_key`` of the run, written to the record.

    Returns:
      The segmenter to run with (``Segmenter.with_refine``: it shares the given one's
      caches).

    Raises:
      ValueError: when no sample image has labels.
    """
    if record is not None:
        if record.get("settings") != settings:
            warn(f"{os.path.join(out_dir, LEVELS_FILE)} was calibrated on the maps of another "
                 f"model or other settings; its levels may not suit this run's maps (pass "
                 f"--overwrite to calibrate again)")
        return segmenter.with_refine(dataset_config(
            segmenter.config.refine, (record["levels"][name] for name in LEVEL_NAMES),
            record["background_score"]))
    images, labels, stems = [], [], []
    for item in sample_items(items, count):
        try:
            images.append(imageio.read_image(item.path))
        except (OSError, ValueError) as error:
            warn(f"{item.path}: left out of --calibrate-levels ({error})")
            continue
        labels.append(item.labels)
        stems.append(item.stem)
    outputs = (segmenter.relevance_stage(images, labels, batch_size, unaries=False)
               if images else [])
    refine_config = segmenter.config.refine
    readings = [read_calibration(image, output.scores, refine_config)
                for image, output in zip(images, outputs) if output.scores.shape[0] > 0]
    if not readings:
        raise ValueError("--calibrate-levels: no sample image has labels to calibrate on; "
                         "check the labels, or drop --calibrate-levels")
    refine_config = calibrate_levels(readings, refine_config, coverage)
    if not write:
        return segmenter.with_refine(refine_config)
    os.makedirs(out_dir, exist_ok=True)
    imageio.remove_stale_temporaries(out_dir, {LEVELS_FILE})  # a killed run's record
    imageio.write_json(os.path.join(out_dir, LEVELS_FILE), {
        "levels": dict(zip(LEVEL_NAMES, refine_config.levels)),
        "background_score": refine_config.background_score, "coverage": coverage,
        "requested": count, "images": len(readings), "sample": stems, "settings": settings})
    return segmenter.with_refine(refine_config)
