"""Where the refinement stage loses mIoU: seed noise, the colour model, and error locations.

Uses the coarse maps of ``eval_refine.py`` (same degradation, same images, VOC-20) and
runs the full stage ``jaxseg.refinement.refine.refine`` with its training pixels (pseudo-labels)
replaced, to separate the causes of error:

  default seeds                 pseudo-labels from the maps (what users get)
  ground truth at seed pixels   the same pixels, labelled by the ground truth (seed noise removed)
  ground truth everywhere       every pixel a training pixel with its true label
                                (the ceiling of the colour classifier + prior + graph cut)
  ground truth everywhere, no prior   the same with ``prior_weight=0`` (colour alone)

The seeds are replaced by wrapping ``refine_module.pseudo_labels`` (the stage has no
hook for external seeds, and a diagnostic should not add one to the API).

It then histograms the default stage's errors by their distance to the true object
boundary, in ViT-B/16 patches (short side / 14): false positives by distance outside
the object, misses by distance inside it.

Usage: python scripts/refine_ceiling.py [--data ../shared/data/coco-dev] [--limit N]
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import distance_transform_edt

from jaxseg.refinement import refine as refine_module
from eval_refine import (DEFAULT_DATA, NUM_CLASS_IDS, PATCHES_SHORT_SIDE, add_prediction,
                         coarse_maps, load_label_set, miou)
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import refine

DISTANCE_BINS = (0.0, 0.5, 1.0, 2.0, 4.0, np.inf)


def seeds_from_truth(truth: np.ndarray, class_ids: list[int], everywhere: bool, default):
    """A stand-in for ``pseudo_labels`` that labels its pixels by ``truth`` (-1 void):
    every pixel, or only those the ``default`` pseudo-labels are confident about."""

    def pseudo_labels(scores: np.ndarray, config: RefineConfig) -> np.ndarray:
        height, width = scores.shape[1:]
        small = np.asarray(Image.fromarray(truth).resize((width, height), Image.NEAREST))
        labels = np.full((height, width), -1, np.int32)
        labels[small == 0] = 0
        for label, class_id in enumerate(class_ids, start=1):
            labels[small == class_id] = label
        if not everywhere:
            labels[default(scores, config) < 0] = -1
        return labels
    return pseudo_labels


def error_distances(prediction: np.ndarray, truth: np.ndarray, class_ids: list[int]):
    """Counts of false positives and misses per distance bin (patches) to each object."""
    patch = min(truth.shape) / PATCHES_SHORT_SIDE
    counts = np.zeros((2, len(DISTANCE_BINS) - 1), np.int64)
    for class_id in class_ids:
        inside = truth == class_id
        false_positive = (prediction == class_id) & (truth >= 0) & ~inside
        missed = inside & (prediction != class_id)
        counts[0] += np.histogram(distance_transform_edt(~inside)[false_positive] / patch, DISTANCE_BINS)[0]
        counts[1] += np.histogram(distance_transform_edt(inside)[missed] / patch, DISTANCE_BINS)[0]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    args = parser.parse_args()
    variants = {
        "default seeds": (None, RefineConfig()),
        "ground truth at seed pixels": (False, RefineConfig()),
        "ground truth everywhere": (True, RefineConfig()),
        "ground truth everywhere, no prior": (True, RefineConfig(prior_weight=0.0)),
    }
    confusions = {name: np.zeros((NUM_CLASS_IDS, NUM_CLASS_IDS), np.int64) for name in variants}
    distances = np.zeros((2, len(DISTANCE_BINS) - 1), np.int64)
    default_pseudo_labels = refine_module.pseudo_labels
    start, count = time.perf_counter(), 0
    for image_id, image, truth, class_ids in itertools.islice(load_label_set(args.data, "voc20"),
                                                              args.limit):
        count += 1
        scores = coarse_maps(image_id, truth, class_ids)
        for name, (everywhere, config) in variants.items():
            refine_module.pseudo_labels = (
                default_pseudo_labels if everywhere is None
                else seeds_from_truth(truth, class_ids, everywhere, default_pseudo_labels))
            prediction = refine(image, scores, None, config)
            add_prediction(confusions[name], truth, class_ids, prediction)
            if everywhere is None:
                distances += error_distances(np.array([0] + class_ids)[prediction], truth, class_ids)
    refine_module.pseudo_labels = default_pseudo_labels
    print(f"VOC-20 full stage, {count} images ({time.perf_counter() - start:.0f} s)\n")
    print("| training pixels | mIoU (%) |\n| --- | ---: |")
    for name, confusion in confusions.items():
        print(f"| {name} | {miou(confusion):.1f} |")
    edges = [f"{low:g}-{high:g}" for low, high in zip(DISTANCE_BINS[:-1], DISTANCE_BINS[1:])]
    print("\nErrors of the default stage by distance to the object boundary (patches), "
          "thousands of pixels:\n")
    print("| error | " + " | ".join(edges) + " |\n| --- |" + " ---: |" * len(edges))
    for name, row in zip(("false positive (outside)", "missed (inside)"), distances):
        print(f"| {name} | " + " | ".join(f"{value / 1e3:.0f}" for value in row) + " |")


if __name__ == "__main__":
    main()
