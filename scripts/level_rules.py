"""How well can a per-image rule choose the level at which coarse maps are cut?

The refinement stage reads each image's maps at a level chosen from the maps themselves
(Otsu's split, ``RefineConfig.threshold_rule``). This script measures, on the recipes of
``refine_recipes.RECIPES`` and the stage's own smoothed, rescaled maps at refinement size,
the argmax prediction ``best label where max_k s_k > tau, else background`` for a level tau
chosen per image by:

- ``fixed``: one tau for every image (the best per recipe, and the best on the mean);
- ``otsu``: Otsu's threshold of the best map plus an offset (same two choices);
- ``colour MI``: the tau whose foreground/background split (or whose label map, for
  ``colour MI (labels)``) has the most mutual information with the image's colour
  (512 RGB bins), plus an offset: a level where the objects' colours differ most from the
  rest of the image;
- ``boundary contrast``: the tau whose boundary (4-neighbours on either side of it) has
  the highest mean contrast ``1 - exp(-beta |I_p - I_q|^2)`` (GrabCut's beta: half the
  inverse mean squared step), plus an offset: a level whose outline runs along the image's
  edges; ``boundary contrast (Otsu +- 8)`` searches only within 8 steps of Otsu's level;
- ``per-image oracle``: the tau with the best pixel accuracy on that image's ground truth
  (no rule can do better; it bounds what level selection alone can give).

Offsets and fixed levels step by 0.02. Scores are VOC-20 mIoU at refinement size (ground
truth resized by nearest neighbour), so they are close to but not the same as
``eval_refine.py``'s full-size figures.

Usage: python scripts/level_rules.py [--data ../shared/data/coco-dev] [--stride 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import refine_recipes as recipes  # noqa: E402
from eval_refine import VOC_IDS  # noqa: E402
from jaxseg.imaging import resize_image  # noqa: E402
from jaxseg.refinement import seeds  # noqa: E402
from jaxseg.refinement.config import RefineConfig  # noqa: E402
from jaxseg.refinement.refine import lay_on_canvas, refinement_size  # noqa: E402
from jaxseg.refinement.unaries import read_maps  # noqa: E402

STEPS = 50  # levels tau = n / STEPS, n = 1 .. STEPS - 1
COLOUR_BINS = 8  # per RGB channel


@jax.jit
def _best_map(canvas, size_hw, maps, label_mask):
    """The stage's reading of the maps (``unaries.read_maps``): best rescaled score, its
    label and Otsu's threshold."""
    relative, levels = read_maps(canvas, size_hw, maps, label_mask, RefineConfig())
    top, best = seeds.best_score(relative, label_mask)
    return top, best, levels[0]


def _entropy(counts: np.ndarray, axis: int = 0) -> np.ndarray:
    p = counts / np.maximum(counts.sum(axis=axis, keepdims=True), 1)
    return -(p * np.log(np.where(p > 0, p, 1))).sum(axis=axis)


def colour_information(top: np.ndarray, best: np.ndarray, colour: np.ndarray, num_labels: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Mutual information (nats) between the image's colour bin and (i) foreground vs
    background, (ii) the label map, at every level n / STEPS.

    Args:
      top: float ``[N]`` each pixel's best rescaled score in [0, 1].
      best: int ``[N]`` the label (0 .. num_labels - 1) of that score.
      colour: int ``[N]`` each pixel's colour bin (< COLOUR_BINS ** 3).
      num_labels: K.

    Returns:
      Two float ``[STEPS - 1]`` arrays, index n - 1 for the level n / STEPS.
    """
    level = np.clip((top * STEPS).astype(int), 0, STEPS - 1)
    bins = COLOUR_BINS ** 3
    counts = np.zeros((num_labels, STEPS, bins))
    np.add.at(counts, (best, level, colour), 1)
    above = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [K, level, colour]: top >= level
    per_colour = counts.sum(axis=(0, 1))
    weight = per_colour / per_colour.sum()
    binary, labels = [], []
    for index in range(STEPS - 1):
        foreground = above[:, index].sum(axis=0)
        split = np.stack([foreground, per_colour - foreground])
        binary.append(_entropy(split.sum(axis=1)) - (weight * _entropy(split)).sum())
        label_map = np.concatenate([(per_colour - foreground)[None], above[:, index]])
        labels.append(_entropy(label_map.sum(axis=1)) - (weight * _entropy(label_map)).sum())
    return np.array(binary), np.array(labels)


def boundary_contrast(top: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Mean contrast of the boundary at every level n / STEPS (-1 where under 20 pairs cross).

    Args:
      top: float ``[H, W]`` each pixel's best rescaled score.
      image: uint8 ``[H, W, 3]`` the image.

    Returns:
      float ``[STEPS - 1]``, index n - 1 for the level n / STEPS.
    """
    colour = image.astype(np.float32)
    low, high, step = [], [], []
    head, tail, every = slice(None, -1), slice(1, None), slice(None)
    for first, second in (((head, every), (tail, every)), ((every, head), (every, tail))):
        low.append(np.minimum(top[first], top[second]).ravel())
        high.append(np.maximum(top[first], top[second]).ravel())
        step.append(((colour[first] - colour[second]) ** 2).sum(-1).ravel())
    low, high, step = np.concatenate(low), np.concatenate(high), np.concatenate(step)
    contrast = 1 - np.exp(-step / (2 * step.mean() + 1e-9))
    # A pair crosses the level tau when low <= tau < high: add it over that range of levels.
    # In top's dtype: the argmax compares top > n / STEPS in it.
    levels = (np.arange(1, STEPS) / STEPS).astype(top.dtype)
    start, stop = np.searchsorted(levels, low), np.searchsorted(levels, high)
    total, count = np.zeros(STEPS), np.zeros(STEPS)
    for values, out in ((contrast, total), (np.ones_like(contrast), count)):
        np.add.at(out, start, values)
        np.add.at(out, stop, -values)
    total, count = np.cumsum(total)[:-1], np.cumsum(count)[:-1]
    return np.where(count >= 20, total / np.maximum(count, 1), -1.0)


def image_levels(item: tuple[str, np.ndarray, np.ndarray, list[int]]) -> dict:
    """Per recipe, for one ``recipes.load_item`` item with at least one label: confusions
    ``[STEPS - 1, 21, 21]`` of the argmax at every level, and the level index each rule
    picks (Otsu's, the two colour-information maxima and the two boundary-contrast maxima)."""
    image_id, image, gt, class_ids = item
    config = RefineConfig()
    height, width = refinement_size(*image.shape[:2], config)
    small = resize_image(image, (height, width))
    small_gt = np.asarray(Image.fromarray(gt).resize((width, height), Image.NEAREST))
    quantised = (small // (256 // COLOUR_BINS)).astype(np.int64)
    colour = ((quantised[..., 0] * COLOUR_BINS + quantised[..., 1]) * COLOUR_BINS
              + quantised[..., 2]).ravel()
    out = {}
    for name, recipe in recipes.RECIPES.items():
        canvas, maps, size_hw, label_mask = lay_on_canvas(
            image, recipes.coarse_maps(recipe, image_id, image, gt, class_ids), config)
        top, best, otsu = jax.device_get(_best_map(canvas, size_hw, maps, label_mask))
        top, best = top[:height, :width], best[:height, :width]
        confusions = np.stack([
            recipes.confusion(small_gt, class_ids, np.where(top > n / STEPS, best + 1, 0), VOC_IDS)
            for n in range(1, STEPS)])
        binary, labels = colour_information(top.ravel(), best.ravel(), colour, len(class_ids))
        otsu_index = int(round(float(otsu) * STEPS)) - 1
        contrast = boundary_contrast(top, small)
        near = np.abs(np.arange(STEPS - 1) - otsu_index) <= 8
        out[name] = {"confusions": confusions, "otsu": otsu_index,
                     "colour MI": int(binary.argmax()), "colour MI (labels)": int(labels.argmax()),
                     "boundary contrast": int(contrast.argmax()),
                     "boundary contrast (Otsu +- 8)": int(np.where(near, contrast, -2).argmax())}
    return out


def report(results: dict[str, dict]) -> None:
    names = list(recipes.RECIPES)
    last = STEPS - 2

    def miou(name, pick):
        return recipes.miou(sum(r[name]["confusions"][int(np.clip(pick(r[name]), 0, last))]
                                for r in results.values()))

    print(f"\nVOC-20 mIoU at refinement size, {len(results)} images with VOC labels; "
          f"recipes: {', '.join(names)}\n")
    print("| rule | per recipe (best offset each) | mean | one offset for all | mean |\n"
          "|---|---|---:|---|---:|")
    rules = {"fixed": (lambda entry: 0, range(0, STEPS - 1))}
    for rule in ("otsu", "colour MI", "colour MI (labels)", "boundary contrast",
                 "boundary contrast (Otsu +- 8)"):
        rules[rule] = (lambda entry, rule=rule: entry[rule], range(-15, 16))
    for rule, (base, offsets) in rules.items():
        table = np.array([[miou(name, lambda e, o=o: base(e) + o) for name in names] for o in offsets])
        each, one = table.max(axis=0), table[table.mean(axis=1).argmax()]
        print(f"| {rule} | {' / '.join(f'{v:.1f}' for v in each)} | {each.mean():.1f} | "
              f"{' / '.join(f'{v:.1f}' for v in one)} | {one.mean():.1f} |")
    oracle = [miou(name, lambda e: np.trace(e["confusions"], axis1=1, axis2=2).argmax())
              for name in names]
    print(f"| per-image oracle | {' / '.join(f'{v:.1f}' for v in oracle)} | {np.mean(oracle):.1f} "
          f"| - | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=recipes.DEFAULT_DATA)
    parser.add_argument("--stride", type=int, default=1, help="every n-th image only")
    args = parser.parse_args()
    results = {}
    for image_id in recipes.image_ids(args.data, "voc20")[::args.stride]:
        item = recipes.load_item(args.data, "voc20", image_id)
        if item[3]:
            results[image_id] = image_levels(item)
    report(results)


if __name__ == "__main__":
    main()
