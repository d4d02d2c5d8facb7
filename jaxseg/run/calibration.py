"""Refinement levels calibrated on a sample of a dataset run's own maps.

``--calibrate-levels N`` of ``python -m jaxseg.segment``: before the run, N images spread
evenly over its list are segmented up to their maps, each image's Otsu levels and share
curve are read (``jaxseg.refinement.calibrate.read_calibration``), and the whole run
refines at the medians of the levels, the background placed where the sample's maps
cover ``--coverage`` of the pixels (``calibrate_levels``). The sample is the same in every
process and on every resume (a fixed choice from the planned list, deterministic maps),
so the levels, and with them the masks, are too; they are also written to
``levels.json`` in the output folder, for the record.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from jaxseg.refinement.calibrate import calibrate_levels, read_calibration
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.segmenter import Segmenter

LEVELS_FILE = "levels.json"


def sample_items(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[index] for index in np.linspace(0, len(items) - 1, count).round().astype(int)]


def calibrated_segmenter(segmenter: Segmenter, items: Sequence[Item], count: int,
                         coverage: float, out_dir: str, batch_size: int,
                         warn: Callable[[str], None]) -> Segmenter:
    """The segmenter with refinement levels calibrated on ``count`` of ``items``.

    Args:
      segmenter: the run's segmenter (its config's ``refine`` is calibrated).
      items: the run's items, in the planned order.
      count: sample size (>= 1).
      coverage: the expected share of object pixels (``calibrate_levels``).
      out_dir: the output folder; ``levels.json`` is written there.
      batch_size: images per device call.
      warn: reports a sample image that cannot be read (it is left out).

    Returns:
      The segmenter to run with (``Segmenter.with_refine``: it shares the given one's
      caches).

    Raises:
      ValueError: when no sample image has labels.
    """
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
    imageio.write_json(os.path.join(out_dir, LEVELS_FILE), {
        "levels": {"theta": refine_config.levels[0], "mu_bg": refine_config.levels[1],
                   "mu_fg": refine_config.levels[2]},
        "background_score": refine_config.background_score, "coverage": coverage,
        "images": len(readings), "sample": stems})
    return segmenter.with_refine(refine_config)
