"""Refinement levels calibrated on a sample of a dataset run's own maps.

``--calibrate-levels N`` of ``python -m jaxseg.segment``: before the run, N images spread
evenly over its list are segmented up to their maps, each image's Otsu levels and share
curve are read (``jaxseg.refinement.calibrate.read_calibration``), and the whole run
refines at the medians of the levels, the background placed where the sample's maps
cover ``--coverage`` of the pixels (``calibrate_levels``). The sample is the same in every
process and on every resume (a fixed choice from the planned list, deterministic maps),
so the levels, and with them the masks, are too. They are written to ``levels.json`` in
the output folder, and a resumed run reads them back from there instead of calibrating
again, so its levels stay those of the images already written even when its image list
has changed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional, Sequence

import numpy as np

from jaxseg.refinement.calibrate import calibrate_levels, read_calibration
from jaxseg.refinement.config import RefineConfig
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.segmenter import Segmenter

LEVELS_FILE = "levels.json"
LEVEL_NAMES = ("theta", "mu_bg", "mu_fg")  # RefineConfig.levels, in order
# The image whose JSON sidecar would be named like the record.
RECORD_STEM = os.path.splitext(LEVELS_FILE)[0]


def keep_record_name(items: Sequence[Item]) -> tuple[list[Item], list[tuple[str, str]]]:
    """``items`` without the one whose sidecar would overwrite ``levels.json``, and a
    ``(path, reason)`` failure for it."""
    kept = [item for item in items if item.stem != RECORD_STEM]
    failures = [(item.path, f"its sidecar {LEVELS_FILE} would overwrite the record of "
                            f"--calibrate-levels; rename the image")
                for item in items if item.stem == RECORD_STEM]
    return kept, failures


def has_record(out_dir: str) -> bool:
    """Whether ``out_dir`` holds a record of --calibrate-levels (not an image's sidecar of
    the same name)."""
    try:
        with open(os.path.join(out_dir, LEVELS_FILE), encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "background_score" in record


def sample_items(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[index] for index in np.linspace(0, len(items) - 1, count).round().astype(int)]


def recorded_levels(out_dir: str, config: RefineConfig) -> Optional[tuple[dict, RefineConfig]]:
    """The calibration recorded in ``out_dir``'s ``levels.json``.

    Args:
      out_dir: the output folder.
      config: the refinement settings to place the recorded levels in.

    Returns:
      None when the folder holds no record; else the record and ``config`` at its levels
      and background score.

    Raises:
      ValueError: when the file exists but is not a calibration record.
    """
    path = os.path.join(out_dir, LEVELS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        levels = tuple(float(record["levels"][name]) for name in LEVEL_NAMES)
        config = dataclasses.replace(config, threshold_rule="dataset", levels=levels,
                                     background_score=float(record["background_score"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a levels record of --calibrate-levels ({error!r}); "
                         f"delete it, or pass --overwrite to calibrate again and redo every "
                         f"image")
    return record, config


def calibrated_segmenter(segmenter: Segmenter, items: Sequence[Item], count: int,
                         coverage: float, out_dir: str, batch_size: int,
                         warn: Callable[[str], None], overwrite: bool = False,
                         note: Callable[[str], None] = lambda text: None) -> Segmenter:
    """The segmenter with refinement levels calibrated on ``count`` of ``items``.

    A run resumed into a folder that already holds ``levels.json`` (without
    ``overwrite``) takes the levels from there, so every image of the folder is refined
    alike; the record must have been calibrated with the same ``count`` and ``coverage``.

    Args:
      segmenter: the run's segmenter (its config's ``refine`` is calibrated).
      items: the run's items, in the planned order.
      count: sample size (>= 1).
      coverage: the expected share of object pixels (``calibrate_levels``).
      out_dir: the output folder; ``levels.json`` is written there.
      batch_size: images per device call.
      warn: reports a sample image that cannot be read (it is left out).
      overwrite: calibrate again even when ``out_dir`` holds a record.
      note: reports that the levels were read from the record.

    Returns:
      The segmenter to run with (``Segmenter.with_refine``: it shares the given one's
      caches).

    Raises:
      ValueError: when no sample image has labels, or a record in ``out_dir`` is
        unreadable or was calibrated with another ``count`` or ``coverage``.
    """
    path = os.path.join(out_dir, LEVELS_FILE)
    recorded = None if overwrite else recorded_levels(out_dir, segmenter.config.refine)
    if recorded is not None:
        record, refine_config = recorded
        settings = (record.get("requested"), record.get("coverage"))
        if settings != (count, coverage):
            raise ValueError(
                f"{path}: this folder's images were refined at levels calibrated with "
                f"--calibrate-levels {settings[0]} --coverage {settings[1]}; resume with "
                f"those, or pass --overwrite to calibrate again and redo every image")
        note(f"refining at the levels calibrated in {path} ({record.get('images')} images)")
        return segmenter.with_refine(refine_config)
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
    os.makedirs(out_dir, exist_ok=True)
    imageio.write_json(path, {
        "levels": dict(zip(LEVEL_NAMES, refine_config.levels)),
        "background_score": refine_config.background_score, "coverage": coverage,
        "requested": count, "images": len(readings), "sample": stems})
    return segmenter.with_refine(refine_config)
