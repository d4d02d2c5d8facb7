"""Variants of the refinement stage's last steps, measured on the recipe family.

Each image's maps (every recipe of ``refine_recipes.RECIPES``) go through the stage's
steps 1-2 once (``unaries.unary_parts``: prior, pseudo-labels, distilled probabilities);
only what follows changes, so the rows differ in one thing each:

- ``distilled ** a``: unaries ``distilled ** a * prior ** prior_weight`` (a = 1 is the
  stage, a = 0 the graph cut on the sharpened prior alone), and the per-image oracle that
  picks the best a of each image from its ground truth (bounds what weighing the
  classifier per image can give);
- ``logit adjustment g``: the distilled probabilities times ``(m_k / f_k) ** g``, m_k the
  prior's mean probability of label k, f_k label k's share of the pseudo-labels (the
  classifier learns the seeds' label frequencies; this moves them to the prior's);
- ``second round``: the classifier refitted on the pixels whose mixed probability is
  >= 0.8 (GrabCut's iteration), then mixed with the prior again;
- ``dense CRF on the unaries``: the stage's unaries, resized to the full image, cut by
  CLIP-ES's dense CRF (``refine_recipes._CRF``) instead of the graph cut.

Scores are VOC-20 mIoU at full size; the stage's row is ``eval_refine.py``'s column (c).

Usage: python scripts/refine_variants.py [--data ../shared/data/coco-dev] [--stride 1]
  [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import refine_recipes as recipes  # noqa: E402
from eval_refine import VOC_IDS  # noqa: E402
from jaxseg.imaging import resize_maps  # noqa: E402
from jaxseg.refinement.config import RefineConfig  # noqa: E402
from jaxseg.refinement.refine import cut_unaries, lay_on_canvas  # noqa: E402
from jaxseg.refinement.unaries import UnaryParts, distil, mix_unaries, unary_parts  # noqa: E402
from jaxseg.run.pool import exit_with_parent  # noqa: E402

WEIGHTS = (0.0, 0.5, 1.0, 1.5)
ADJUSTMENTS = (0.5, 1.0)
SECOND_ROUND_LEVEL = 0.8
STAGE = "(c) the stage: distilled ** 1"
VARIANTS = ([STAGE if a == 1.0 else f"distilled ** {a:g}" for a in WEIGHTS]
            + [f"logit adjustment {g:g}" for g in ADJUSTMENTS]
            + ["second round", "dense CRF on the unaries"])

_parts = jax.jit(unary_parts, static_argnames=("config",))
_distil = jax.jit(distil, static_argnames=("config",))


def _mix(distilled: np.ndarray, parts: UnaryParts, label_mask: np.ndarray, config: RefineConfig) -> np.ndarray:
    return np.asarray(mix_unaries(distilled, parts.prior, parts.pseudo, label_mask, config.prior_weight))


def image_variants(job: tuple[Path, str]) -> dict[tuple[str, str], np.ndarray]:
    """Confusions ``[21, 21]`` of every variant on one image, keyed (recipe, variant)."""
    data, image_id = job
    config = RefineConfig()
    _, image, gt, class_ids = recipes.load_item(data, "voc20", image_id)
    if not class_ids:  # background only: every variant predicts it (its pixels still count)
        empty = recipes.confusion(gt, class_ids, np.zeros(gt.shape, np.int32), VOC_IDS)
        return {(name, variant): empty for name in recipes.RECIPES for variant in VARIANTS}
    num_labels = len(class_ids)
    crf = recipes._CRF(image, num_labels + 1)  # its pairwise terms serve every recipe
    out = {}
    for name, recipe in recipes.RECIPES.items():
        # Rounded to float16 as eval_refine.py's cache stores them, so that the stage's
        # row is its column (c): rounding alone moved single recipes by up to 0.6 mIoU.
        full_maps = recipes.coarse_maps(recipe, image_id, image, gt, class_ids)
        canvas, maps, size_hw, label_mask = lay_on_canvas(
            image, full_maps.astype(np.float16).astype(np.float32), config)
        height, width = size_hw
        crop = (slice(0, num_labels + 1), slice(0, height), slice(0, width))
        parts = jax.device_get(_parts(canvas, size_hw, maps, label_mask, None, None, config))
        unaries = {}
        for weight, variant in zip(WEIGHTS, VARIANTS):
            unaries[variant] = _mix(parts.distilled ** weight, parts, label_mask, config)
        frequency = np.bincount(parts.pseudo[parts.pseudo >= 0], minlength=len(label_mask) + 1) + 1.0
        mass = parts.prior[:, :height, :width].mean(axis=(1, 2)) + 1e-3
        log_ratio = np.log(mass / mass.sum()) - np.log(frequency / frequency.sum())
        for gain in ADJUSTMENTS:
            adjusted = parts.distilled * np.exp(gain * log_ratio)[:, None, None]
            unaries[f"logit adjustment {gain:g}"] = _mix(adjusted, parts, label_mask, config)
        mixed = unaries[STAGE]
        confident = np.where(mixed.max(axis=0) >= SECOND_ROUND_LEVEL, mixed.argmax(axis=0), -1)
        confident[height:], confident[:, width:] = -1, -1
        unaries["second round"] = mixed  # a classifier fitted on no pixel means nothing
        if (confident >= 0).any():
            refitted = _distil(canvas, size_hw, None, None, confident.astype(np.int32), label_mask,
                               config, jax.random.key(config.seed + 1))
            unaries["second round"] = _mix(np.asarray(refitted), parts, label_mask, config)
        # mix_unaries gives the prior itself to an image without confident pixels.
        for variant, probabilities in unaries.items():
            out[name, variant] = recipes.confusion(
                gt, class_ids, cut_unaries(image, probabilities[crop], config), VOC_IDS)
        full = resize_maps(mixed[crop], image.shape[:2])
        out[name, VARIANTS[-1]] = recipes.confusion(
            gt, class_ids, crf(np.clip(full, 1e-5, 1).astype(np.float32)), VOC_IDS)
    return out


def report(results: list[dict]) -> None:
    names = list(recipes.RECIPES)
    print(f"\nVOC-20 mIoU, {len(results)} images; recipes: {', '.join(names)}\n")
    print(f"| variant | {' | '.join(names)} | mean |\n|---|{'---:|' * (len(names) + 1)}")
    rows = {variant: [recipes.miou(sum(r[name, variant] for r in results)) for name in names]
            for variant in VARIANTS}
    weight_rows = VARIANTS[:len(WEIGHTS)]
    rows["per-image oracle over a"] = [
        recipes.miou(sum(max((r[name, v] for v in weight_rows), key=np.trace) for r in results))
        for name in names]
    for variant, values in rows.items():
        print(f"| {variant} | {' | '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=recipes.DEFAULT_DATA)
    parser.add_argument("--stride", type=int, default=1, help="every n-th image only")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    jobs = [(args.data, image_id) for image_id in recipes.image_ids(args.data, "voc20")[::args.stride]]
    # Fresh workers now and then: each canvas and label bucket compiles its own programs.
    with multiprocessing.get_context("spawn").Pool(
            args.workers, maxtasksperchild=8, initializer=exit_with_parent,
            initargs=(os.getpid(),)) as pool:
        results = list(pool.imap_unordered(image_variants, jobs))
    report(results)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
