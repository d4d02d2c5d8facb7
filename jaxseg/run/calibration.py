"""Refinement levels calibrated on a sample of a dataset run's own maps.

A graph-cut dataset run of ``AUTO_MIN_IMAGES`` images or more calibrates by default
(``--calibrate-levels N`` sets the sample, 0 turns it off): before the run, N images
spread evenly over its list are segmented up to their maps, each image's Otsu levels and
share curve are read (``jaxseg.refinement.calibrate.read_calibration``), and the whole run
refines at the medians of the levels, the background placed where the sample's maps
cover ``--coverage`` of the pixels (``calibrate_levels``). The sample is the same in every
process (a fixed choice from the planned list, deterministic maps), so the levels, and
with them the masks, are too. Process 0 writes them to ``levels.json`` in the output
folder, and a resumed run reads them back from there (``read_record``) instead of
calibrating again, so the images it adds are refined like those already written even when
its image list has changed; a folder that holds images refined at their own levels and no
record resumes at their own levels (``plan_calibration``). The record keeps a digest of
the model and settings that made the sample's maps (``settings_key``); a resume with
other ones is warned.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from jaxseg.refinement.calibrate import (
    DATASET_COVERAGE, calibrate_levels, dataset_config, read_calibration)
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.segmenter import Segmenter

LEVELS_FILE = "levels.json"
LEVEL_NAMES = ("theta", "mu_bg", "mu_fg")  # RefineConfig.levels, in order
# The image whose JSON sidecar would be named like the record.
RECORD_STEM = os.path.splitext(LEVELS_FILE)[0]
OVERWRITING = "overwriting"  # the record's mark while an --overwrite redoes the folder
# A graph-cut run of this many images or more calibrates by default, on up to
# AUTO_SAMPLE of them: on every kind of map of scripts/eval_refine.py but one of eleven
# the calibrated levels gained over each image's own (BENCHMARKS.md, issue 14), and the
# background's cut needs a sample of about 50 to settle (over samples of 32 images its
# standard deviation is 0.018-0.043 of the rescaled range).
AUTO_MIN_IMAGES = 50
AUTO_SAMPLE = 100


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
            [(item.path, f"its sidecar would overwrite {LEVELS_FILE}, the record of the "
                         f"calibrated levels; rename the image")
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
        record["requested"] = int(record["requested"])
        record["coverage"] = float(record["coverage"])
        theta, low, high = (record["levels"][name] for name in LEVEL_NAMES)
        # Levels of rescaled maps: an edited or damaged record would refine every image
        # to nothing (or fail deep in the run) without this.
        if not (0.0 <= low < theta < high <= 1.0 and abs(record["background_score"]) <= 1.0
                and 0.0 < record["coverage"] < 1.0 and record["requested"] >= 1):
            raise ValueError("levels out of range (0 <= mu_bg < theta < mu_fg <= 1, "
                             "|background_score| <= 1, coverage in (0, 1), requested >= 1)")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        raise ValueError(f"{path}: not a record of --calibrate-levels ({type(error).__name__}: "
                         f"{error}); move it away, or pass --overwrite to redo this run's "
                         f"images") from None
    return record


def holds_record(out_dir: str) -> bool:
    """Whether ``out_dir`` has a ``levels.json`` that is not an image's sidecar (one that
    cannot be read counts: it may be a damaged record)."""
    return os.path.exists(os.path.join(out_dir, LEVELS_FILE)) and not holds_sidecar(out_dir)


def mark_overwriting(out_dir: str, overwriting: bool = True) -> None:
    """Marks ``out_dir``'s record, if it holds one, as under an ``--overwrite`` (or clears
    the mark): until that run has redone all its images, a resume must not take the
    record's levels, since the images not yet redone were refined at other ones."""
    try:
        record = _load(out_dir)
    except (OSError, ValueError, RecursionError):
        return  # read_record refuses an unreadable record on a resume anyway
    if isinstance(record, dict) and not _is_sidecar(record):
        record.pop(OVERWRITING, None)
        imageio.write_json(os.path.join(out_dir, LEVELS_FILE),
                           {**record, OVERWRITING: True} if overwriting else record)


def remove_record(out_dir: str) -> None:
    """Removes ``out_dir``'s ``levels.json`` unless it is an image's sidecar."""
    if holds_record(out_dir):
        os.remove(os.path.join(out_dir, LEVELS_FILE))


def check_overwrite(out_dir: str, stems: Sequence[str], calibrates: bool) -> None:
    """Raises ValueError when an ``--overwrite`` would change the levels of images it does
    not redo: ``out_dir`` holds outputs of images not in ``stems`` and has a record (whose
    levels the run replaces or drops) or the run calibrates (new levels)."""
    try:
        sidecars = {entry.name[:-len(".json")] for entry in os.scandir(out_dir)
                    if entry.name.endswith(".json")}  # temporaries end in .tmp-<pid>
    except FileNotFoundError:
        return
    has_record = holds_record(out_dir)
    if has_record:
        sidecars.discard(RECORD_STEM)
    others = sorted(sidecars - set(stems))
    if others and (calibrates or has_record):
        raise ValueError(f"{out_dir} holds images this run does not list ({len(others)}, e.g. "
                         f"{others[0]}), refined at levels this --overwrite changes; list them "
                         f"too or use another --out (to redo some images at the folder's "
                         f"levels, delete their outputs and resume without --overwrite)")


def check_record(record: dict, count: Optional[int], coverage: Optional[float],
                 path: str) -> None:
    """Raises ValueError, naming the record's settings, unless a run with
    ``--calibrate-levels count --coverage coverage`` (None: the flag not given) may resume
    at the record's levels: without ``--calibrate-levels`` any record is resumed (at its
    ``--coverage``, if one is given), with it the flags must be the record's."""
    if record.get(OVERWRITING):
        raise ValueError(f"{path}: an --overwrite stopped before it redid all of this folder's "
                         f"images, some of which were refined at other levels; run it again "
                         f"with --overwrite")
    recorded = (f"--calibrate-levels {record.get('requested')!r} "
                f"--coverage {record.get('coverage')!r}")
    if count == 0:
        raise ValueError(f"{path}: this folder's images were refined at levels calibrated with "
                         f"{recorded}; drop --calibrate-levels 0 to resume at them, or pass "
                         f"--overwrite to redo this run's images at their own levels")
    if count is None:  # the default: the record's sample, and its share unless one is given
        wanted = (record.get("requested"),
                  record.get("coverage") if coverage is None else coverage)
    else:
        wanted = (count, DATASET_COVERAGE if coverage is None else coverage)
    if (record.get("requested"), record.get("coverage")) != wanted:
        raise ValueError(f"{path}: this folder's images were refined at levels calibrated with "
                         f"{recorded}; resume with those, or pass --overwrite to calibrate "
                         f"again and redo this run's images")


class CalibrationPlan(NamedTuple):
    """How a dataset run refines (``plan_calibration``)."""

    count: int  # images to calibrate on; 0: every image at its own levels
    coverage: float  # the share calibrate_levels places the background at
    note: str  # what the run does and why, for the console ("" when nothing is to be said)


def plan_calibration(requested: Optional[int], coverage: Optional[float], refine_mode: str,
                     images: int, record: Optional[dict], done: int,
                     out_dir: str) -> CalibrationPlan:
    """Whether and on how many images a dataset run calibrates its refinement's levels.

    A folder's first run calibrates on ``requested`` images, by default on
    ``min(AUTO_SAMPLE, images)`` when it has ``AUTO_MIN_IMAGES`` or more; a resumed run
    refines like the images already written: at the record's levels, or at each image's
    own when the folder holds images and no record.

    Args:
      requested: ``--calibrate-levels`` (None: not given; 0: each image's own levels).
      coverage: ``--coverage`` (None: not given).
      refine_mode: the run's ``SegmentConfig.refine_mode``.
      images: how many images the run lists.
      record: ``read_record`` of the folder (None: none, or ``--overwrite``).
      done: how many of the run's images the folder holds already (0 with
        ``--overwrite``).
      out_dir: the output folder.

    Returns:
      The plan.

    Raises:
      ValueError: one line naming the flag or file at fault and what to do.
    """
    path = os.path.join(out_dir, LEVELS_FILE)
    if requested is not None and requested < 0:
        raise ValueError(f"--calibrate-levels must be >= 0 (0: each image at its own levels), "
                         f"got {requested}")
    if coverage is not None and not 0.0 < coverage < 1.0:
        raise ValueError(f"--coverage must be in (0, 1), got {coverage}")
    if refine_mode != "graphcut":
        if requested or coverage is not None:
            flag = "--calibrate-levels" if requested else "--coverage"
            raise ValueError(f"{flag} calibrates jaxseg's graph-cut refinement; drop it or use "
                             f"--refine graphcut (this run refines with {refine_mode})")
        return CalibrationPlan(0, DATASET_COVERAGE, "")
    if record is not None:
        check_record(record, requested, coverage, path)
        return CalibrationPlan(record["requested"], record["coverage"],
                               f"refining at the levels calibrated in {path}")
    share = DATASET_COVERAGE if coverage is None else coverage
    note = ""
    if requested is not None:
        count = requested
    elif done:
        count = 0
        if images >= AUTO_MIN_IMAGES:
            note = (f"refining each image at its own levels, as the {done} of this run's images "
                    f"already in {out_dir} were (it holds no {LEVELS_FILE}); pass --overwrite "
                    f"to redo them all at calibrated levels")
    else:
        count = min(AUTO_SAMPLE, images) if images >= AUTO_MIN_IMAGES else 0
        if count:
            note = (f"calibrating the refinement's levels on {count} of the run's images, "
                    f"objects taken to cover {share} of a labelled image (--coverage F; "
                    f"--calibrate-levels 0: each image at its own levels)")
    if count == 0 and coverage is not None:
        why = ("--calibrate-levels 0; drop one of the two" if requested == 0 else
               f"as the {done} of its images already in {out_dir} were; pass --overwrite "
               f"with --calibrate-levels N to redo them all at calibrated levels, or drop "
               f"--coverage" if done else
               f"runs of fewer than {AUTO_MIN_IMAGES} images do by default; add "
               f"--calibrate-levels N to calibrate on N of them, or drop --coverage")
        raise ValueError(f"--coverage sets the share calibrated levels cut at, and this run "
                         f"refines each image at its own levels ({why})")
    if count and holds_sidecar(out_dir):
        raise ValueError(f"{path} is an image's sidecar, where the calibrated levels' record "
                         f"would be written; use another --out, or --calibrate-levels 0")
    if count and done:
        raise ValueError(f"{out_dir} holds {done} of this run's images refined at their own "
                         f"levels (it has no {LEVELS_FILE}); resume without --calibrate-levels, "
                         f"or pass --overwrite to redo them all at calibrated levels")
    return CalibrationPlan(count, share, note)


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
                         write: bool = True, settings: str = "",
                         required: bool = True, overwriting: bool = False) -> Segmenter:
    """The segmenter with refinement levels calibrated on ``count`` of ``items``, or at
    those of a resumed run's ``record``.

    Args:
      segmenter: the run's segmenter (its config's ``refine`` is calibrated).
      items: the run's items, in the planned order.
      count: sample size (>= 1).
      coverage: the expected share of object pixels (``calibrate_levels``).
      out_dir: the output folder, where ``levels.json`` is written.
      batch_size: images per device call.
      warn: reports a sample image that cannot be read or whose maps are not finite (it
        is left out), and a ``record`` made with other ``settings``.
      record: ``read_record``'s record of the folder, checked by ``check_record``; its
        levels are used and nothing is calibrated or written.
      write: write ``levels.json`` (process 0 of a run; the others compute the same).
      settings: ``settings_key`` of the run, written to the record.
      required: asked for (``--calibrate-levels N``); when False (the default rule) a
        sample that gives nothing to calibrate on is warned and the run refines each image
        at its own levels, writing no record.
      overwriting: write the record marked as under an ``--overwrite``
        (``mark_overwriting``).

    Returns:
      The segmenter to run with (``Segmenter.with_refine``: it shares the given one's
      caches); the given one itself when it falls back to each image's own levels.

    Raises:
      ValueError: when ``required`` and no sample image has labels and maps that are not
        flat.
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
        except (OSError, ValueError, imageio.ImageReadError) as error:
            warn(f"{item.path}: left out of the calibration sample "
                 f"({getattr(error, 'reason', error)})")
            continue
        labels.append(item.labels)
        stems.append(item.stem)
    outputs = (segmenter.relevance_stage(images, labels, batch_size, unaries=False)
               if images else [])
    refine_config = segmenter.config.refine
    readings = []
    for image, output, stem in zip(images, outputs, stems):
        if output.scores.shape[0] > 0:
            try:
                readings.append(read_calibration(image, output.scores, refine_config))
            except ValueError as error:  # maps not finite: that image fails in the run
                warn(f"{stem}: left out of the calibration sample ({error})")
    try:
        if not readings:
            raise ValueError("no sample image was read with labels")
        refine_config = calibrate_levels(readings, refine_config, coverage)
    except ValueError as error:  # no reading, or readings of flat maps only
        if required:
            raise ValueError(f"--calibrate-levels: nothing to calibrate on ({error}); check the "
                             f"labels, or pass --calibrate-levels 0") from None
        warn(f"refining each image at its own levels: nothing to calibrate on ({error})")
        return segmenter
    if not write:
        return segmenter.with_refine(refine_config)
    os.makedirs(out_dir, exist_ok=True)
    imageio.remove_stale_temporaries(out_dir, {LEVELS_FILE})  # a killed run's record
    imageio.write_json(os.path.join(out_dir, LEVELS_FILE), {
        "levels": dict(zip(LEVEL_NAMES, refine_config.levels)),
        "background_score": refine_config.background_score, "coverage": coverage,
        "requested": count, "images": len(readings), "sample": stems, "settings": settings,
        **({OVERWRITING: True} if overwriting else {})})
    return segmenter.with_refine(refine_config)
