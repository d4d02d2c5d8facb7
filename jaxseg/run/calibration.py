"""Refinement levels calibrated on a sample of a dataset run's own maps.

``--calibrate-levels N`` of ``python -m jaxseg.segment``: before the run, N images spread
evenly over its list are segmented up to their maps, each image's Otsu levels are read
(``jaxseg.refinement.calibrate.map_levels``), and the whole run refines at their medians
(``calibrate_levels``). The sample is the same in every process and on every resume (a
fixed choice from the planned list, deterministic maps), so the levels, and with them the
masks, are too; they are also written to ``levels.json`` in the output folder, for the
record.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Sequence

import numpy as np

from jaxseg.config import SegmentConfig
from jaxseg.refinement.calibrate import calibrate_levels, map_levels
from jaxseg.run import imageio
from jaxseg.run.datasets import Item
from jaxseg.segmenter import Segmenter

LEVELS_FILE = "levels.json"


def sample_items(items: Sequence[Item], count: int) -> list[Item]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[index] for index in np.linspace(0, len(items) - 1, count).round().astype(int)]


def calibrated_config(segmenter: Segmenter, items: Sequence[Item], count: int, out_dir: str,
                      batch_size: int, warn: Callable[[str], None]) -> SegmentConfig:
    """The segmenter's config with refinement levels calibrated on ``count`` of ``items``.

    Args:
      segmenter: the run's segmenter (its config's ``refine`` is calibrated).
      items: the run's items, in the planned order.
      count: sample size (>= 1).
      out_dir: the output folder; ``levels.json`` is written there.
      batch_size: images per device call.
      warn: reports a sample image that cannot be read (it is left out).

    Returns:
      The config to run with.

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
    outputs = segmenter.relevance_stage(images, labels, batch_size) if images else []
    refine_config = segmenter.config.refine
    levels = [map_levels(image, output.scores, refine_config)
              for image, output in zip(images, outputs) if output.scores.shape[0] > 0]
    if not levels:
        raise ValueError("--calibrate-levels: no sample image has labels to calibrate on; "
                         "check the labels, or drop --calibrate-levels")
    refine_config = calibrate_levels(levels, refine_config)
    os.makedirs(out_dir, exist_ok=True)
    imageio.write_json(os.path.join(out_dir, LEVELS_FILE), {
        "levels": {"theta": refine_config.levels[0], "mu_bg": refine_config.levels[1],
                   "mu_fg": refine_config.levels[2]},
        "background_score": refine_config.background_score,
        "images": len(levels), "sample": stems})
    return dataclasses.replace(segmenter.config, refine=refine_config)
