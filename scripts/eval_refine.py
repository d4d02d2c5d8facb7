"""Measures the refinement stage on real photos with a family of coarse-map recipes.

No CLIP weights are reachable here, so each present class's ground-truth mask is turned
into a coarse map by every recipe of ``refine_recipes.RECIPES`` (gradient relevance at the
224 px view, CAM-like under-covering maps at the image's 16 px grid, over-covering halos,
confident wrong classes, TTA-averaged sparse relevance, dense-CLIP similarities; each
documented and calibrated there), and the methods below turn the maps back into masks,
scored by mIoU against the ground truth (VOC-20 on coco-dev: background scored, void
ignored, confusions summed over all images).

Methods, per recipe:
  (a) argmax of the per-map rescaled scores against a background score, at its best
      background score for that recipe (0.05 .. 0.95);
  (b) graph cut alone: ``refine`` with ``RefineConfig(distillation=False)``;
  (c) the full stage, ``refine`` with ``RefineConfig()``: one config for every recipe and
      image;
  (d) dense CRF with CLIP-ES's settings, at its best background power for that recipe;
  (e) the full stage with levels calibrated on the run's maps: each recipe's images read
      at the medians of their own Otsu levels, the background placed where the recipe's
      maps cover 20 % of the pixels (``calibrate.calibrate_levels``, what a dataset run
      can do; it reads the maps, not the ground truth).
Baselines (a) and (d) get their best constant per recipe, which no user can choose
without ground truth; the script also prints them with the one constant that is best on
the mean over recipes. (c) and (e) get no per-recipe choice.

With ``--candidates FILE`` (a JSON list of ``RefineConfig`` overrides, e.g.
``[{}, {"prior_weight": 1.0}]``) every candidate runs as (c) too, and the script prints
the leave-one-recipe-out table: for each recipe, the candidate with the best mean mIoU on
the other recipes, and its result on the held-out one. Column (c) is the first candidate
(put ``{}``, the defaults, first).

``--family held-out`` runs the same measures on ``heldout_recipes.HELD_OUT`` instead:
recipes written after the stage's defaults were frozen, by someone who had not read the
stage, and never used to choose anything (an unseen-recipe check of the kind an
independent reviewer runs). ``--family blind`` does the same on ``blind_recipes.BLIND``,
three more recipes written blind to the stage and to the project's recipes, from the
independent check's one-line descriptions of its own.

``--constants B T`` also prints (a) at background score B and (d) at power T (values of
their grids), e.g. the main family's best single constants when measuring the held-out
family, whose own best single constants the script prints anyway.

Maps and baseline confusions are cached per image under ``--cache`` (``--cache``/<family>
for the other families; the CRF runs 12 times per image and recipe: on two cores the
first run took 69 min for the main family and 19 min for the held-out one).

Usage: python scripts/eval_refine.py [--data ../shared/data/coco-dev] [--limit N]
       [--candidates FILE] [--workers 2] [--cache DIR] [--family main|held-out|blind]
       [--constants B T]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import blind_recipes  # noqa: E402
import heldout_recipes  # noqa: E402
import refine_recipes as recipes  # noqa: E402
from jaxseg.imaging import resize_image  # noqa: E402
from jaxseg.refinement.calibrate import (  # noqa: E402
    CalibrationReading, calibrate_levels, read_calibration)
from jaxseg.refinement.classifier import ClassifierConfig  # noqa: E402
from jaxseg.refinement.config import RefineConfig  # noqa: E402
from jaxseg.refinement.refine import refine  # noqa: E402
from jaxseg.run.pool import exit_with_parent  # noqa: E402

TIMING_IMAGE = "000000000049"
VOC_IDS = 21  # background and the 20 VOC classes
FAMILIES = {"main": recipes.RECIPES, "held-out": heldout_recipes.HELD_OUT,
            "blind": blind_recipes.BLIND}


def config_of(overrides: dict) -> RefineConfig:
    """``RefineConfig`` with JSON overrides (a nested ``classifier`` dict allowed)."""
    overrides = dict(overrides)
    if "classifier" in overrides:
        overrides["classifier"] = ClassifierConfig(**overrides["classifier"])
    return dataclasses.replace(RefineConfig(), **overrides)


def cached_baselines(job) -> str:
    """Writes one image's maps (float16 ``<recipe>_<id>.npy``) and its (a) and (d)
    confusions for every constant (``<id>.pkl``) to the cache, unless already there."""
    data, cache, image_id, family = job
    path = cache / f"{image_id}.pkl"
    if path.exists():
        return image_id
    _, image, gt, class_ids = recipes.load_item(data, "voc20", image_id)
    crf = recipes._CRF(image, len(class_ids) + 1) if class_ids else None
    out = {}
    for name, recipe in FAMILIES[family].items():
        maps = recipes.coarse_maps(recipe, image_id, image, gt, class_ids)
        out[name] = {
            "a": {b: recipes.confusion(gt, class_ids, recipes.argmax_predict(maps, b), VOC_IDS)
                  for b in recipes.THRESHOLDS},
            "d": {t: recipes.confusion(gt, class_ids, recipes.dense_crf(image, maps, t, crf), VOC_IDS)
                  for t in recipes.POWERS}}
        np.save(cache / f"{name}_{image_id}.npy", maps.astype(np.float16))
    partial = path.with_suffix(".tmp")
    partial.write_bytes(pickle.dumps(out))
    os.replace(partial, path)  # a killed run never leaves a half-written entry
    return image_id


def readings_of(job) -> dict[str, CalibrationReading]:
    """Each recipe's ``read_calibration`` of one image's cached maps (images with labels
    only)."""
    data, cache, image_id, family = job
    _, image, _, class_ids = recipes.load_item(data, "voc20", image_id)
    if not class_ids:
        return {}
    return {name: read_calibration(image, np.load(cache / f"{name}_{image_id}.npy")
                                   .astype(np.float32)) for name in FAMILIES[family]}


def refined(job) -> tuple[dict, np.ndarray]:
    """Confusions of graph cut alone, every candidate and the stage with calibrated levels
    on the given images of one recipe, and seconds spent per configuration (one recipe
    per job, so that a worker compiles few configurations)."""
    data, cache, name, image_ids, configs = job
    out, seconds = {}, np.zeros(len(configs))
    for image_id in image_ids:
        _, image, gt, class_ids = recipes.load_item(data, "voc20", image_id)
        maps = np.load(cache / f"{name}_{image_id}.npy").astype(np.float32)
        for index, config in enumerate(configs):
            start = time.perf_counter()
            matrix = recipes.confusion(gt, class_ids, refine(image, maps, None, config), VOC_IDS)
            out[(name, index)] = out.get((name, index), 0) + matrix
            seconds[index] += time.perf_counter() - start
    return out, seconds


def time_target(data: Path, repeats: int = 5) -> float:
    """Seconds of ``refine`` on image 000000000049 resized to 500x375 with its K = 3 VOC
    labels and the first recipe's maps (after compile, best of ``repeats``)."""
    _, image, gt, class_ids = recipes.load_item(data, "voc20", TIMING_IMAGE)
    image = resize_image(image, (375, 500))
    gt = np.asarray(Image.fromarray(gt.astype(np.int32)).resize((500, 375), Image.NEAREST))
    maps = recipes.coarse_maps(next(iter(recipes.RECIPES.values())), TIMING_IMAGE, image, gt,
                               class_ids)
    refine(image, maps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        refine(image, maps)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=recipes.DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--candidates", type=Path, help="JSON list of RefineConfig overrides")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(".cache/eval_refine"),
                        help="maps and baseline confusions per image")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="main",
                        help="the recipe family: the six of refine_recipes, the held-out ones "
                             "or the blind ones")
    parser.add_argument("--constants", type=float, nargs=2, metavar=("B", "T"),
                        help="also print (a) at background score B and (d) at power T")
    args = parser.parse_args()
    if args.constants and (args.constants[0] not in recipes.THRESHOLDS
                           or args.constants[1] not in recipes.POWERS):
        parser.error(f"--constants: B must be one of {recipes.THRESHOLDS} and T one of "
                     f"{recipes.POWERS}")
    candidates = json.loads(args.candidates.read_text()) if args.candidates else [{}]
    ids = recipes.image_ids(args.data, "voc20")[:args.limit]
    cache = args.cache if args.family == "main" else args.cache / args.family
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    # Workers end with this process, however it is killed.
    pool_options = {"initializer": exit_with_parent, "initargs": (os.getpid(),)}
    with context.Pool(args.workers, **pool_options) as pool:
        for _ in pool.imap_unordered(cached_baselines,
                                     [(args.data, cache, i, args.family) for i in ids]):
            pass
        readings = {}
        for by_recipe in pool.imap(readings_of, [(args.data, cache, i, args.family) for i in ids],
                                   chunksize=8):
            for name, reading in by_recipe.items():
                readings.setdefault(name, []).append(reading)
    shared = [config_of({"distillation": False})] + [config_of(c) for c in candidates]
    calibrations = {name: calibrate_levels(readings[name], shared[1])
                    for name in FAMILIES[args.family]}
    jobs = [(args.data, cache, name, ids, shared + [calibrated])
            for name, calibrated in calibrations.items()]
    # One recipe per job and a fresh worker for each: every configuration compiles once per
    # canvas, and a process never holds more than one recipe's (more than about ten
    # compiled configurations exhaust one process's LLVM memory on this machine).
    with context.Pool(args.workers, maxtasksperchild=1, **pool_options) as pool:
        totals, seconds = {}, 0.0
        for out, spent in pool.imap_unordered(refined, jobs):
            seconds = seconds + spent
            for key, matrix in out.items():
                totals[key] = totals.get(key, 0) + matrix
    baselines = {}
    for image_id in ids:
        for name, parts in pickle.loads((cache / f"{image_id}.pkl").read_bytes()).items():
            for method, by_constant in parts.items():
                for constant, matrix in by_constant.items():
                    key = (name, method, constant)
                    baselines[key] = baselines.get(key, 0) + matrix
    report(args, ids, candidates, totals, baselines, calibrations,
           seconds / (len(ids) * len(FAMILIES[args.family])), time.perf_counter() - start)


def report(args, ids, candidates, totals, baselines, calibrations, seconds, wall) -> None:
    names = list(FAMILIES[args.family])
    scores = {key: recipes.miou(matrix) for key, matrix in baselines.items()}

    def best(name, method):
        constant = max((k for k in scores if k[:2] == (name, method)), key=scores.get)
        return constant[2], scores[constant]

    print(f"\nVOC-20, {len(ids)} images of {args.data.name}, {args.family} recipes ({wall:.0f} s)\n")
    print("| recipe | (a) argmax (best b) | (b) graph cut | (c) full stage | (d) dense CRF "
          "(best t) | (c) - (a) | (c) - (d) | (e) calibrated levels | (e) - (a) | (e) - (d) |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    calibrated = len(candidates) + 1  # (e): after (b) and the candidates
    for name in names:
        b, argmax = best(name, "a")
        t, crf = best(name, "d")
        cut, full, levels = (recipes.miou(totals[(name, index)]) for index in (0, 1, calibrated))
        rows.append((argmax, cut, full, crf, levels))
        print(f"| {name} | {argmax:.1f} ({b:g}) | {cut:.1f} | {full:.1f} | {crf:.1f} ({t:g}) | "
              f"{full - argmax:+.1f} | {full - crf:+.1f} | {levels:.1f} | {levels - argmax:+.1f} | "
              f"{levels - crf:+.1f} |")
    mean = np.mean(rows, axis=0)
    print(f"| mean | {mean[0]:.1f} | {mean[1]:.1f} | {mean[2]:.1f} | {mean[3]:.1f} | "
          f"{mean[2] - mean[0]:+.1f} | {mean[2] - mean[3]:+.1f} | {mean[4]:.1f} | "
          f"{mean[4] - mean[0]:+.1f} | {mean[4] - mean[3]:+.1f} |")
    baselines_of = (("a", "(a) argmax, b"), ("d", "(d) dense CRF, t"))

    def constant_line(method, label, constant):
        values = [scores[(n, method, constant)] for n in names]
        listed = ", ".join(f"{n} {v:.1f}" for n, v in zip(names, values))
        return f"- {label} = {constant:g}: {listed}; mean {np.mean(values):.1f}"

    print("\nBaselines with one constant for all recipes (the best on the mean):\n")
    for method, label in baselines_of:
        constants = {k[2] for k in scores if k[1] == method}
        chosen = max(sorted(constants),
                     key=lambda c: np.mean([scores[(n, method, c)] for n in names]))
        print(constant_line(method, label, chosen))
    if args.constants:
        print("\nBaselines at the given constants:\n")
        for (method, label), given in zip(baselines_of, args.constants):
            print(constant_line(method, label, given))
    print("\n(e)'s calibration per recipe (theta, mu_bg, mu_fg; background score): " + ", ".join(
        f"{name} ({', '.join(f'{level:.3f}' for level in config.levels)}; "
        f"{config.background_score:+.3f})" for name, config in calibrations.items()))
    print(f"\nseconds per image and recipe (in {args.workers} worker processes): "
          f"graph cut alone {seconds[0]:.3f}, full stage {seconds[1]:.3f}, calibrated levels "
          f"{seconds[calibrated]:.3f}")
    if len(candidates) > 1:
        table = np.array([[recipes.miou(totals[(name, index + 1)]) for name in names]
                          for index in range(len(candidates))])
        print("\nCandidates (mIoU per recipe; mean):\n")
        for index, overrides in enumerate(candidates):
            print(f"- {json.dumps(overrides)}: " + ", ".join(f"{v:.1f}" for v in table[index])
                  + f"; mean {table[index].mean():.2f}")
        print("\nLeave-one-recipe-out: the candidate with the best mean on the other recipes, "
              "scored on the held-out one\n\n| held out | chosen candidate | (c) held out | "
              "(c) - (a) | (c) - (d) |\n|---|---|---:|---:|---:|")
        for column, name in enumerate(names):
            chosen = int(np.delete(table, column, axis=1).mean(axis=1).argmax())
            argmax, _, _, crf, _ = rows[column]
            value = table[chosen, column]
            print(f"| {name} | {json.dumps(candidates[chosen])} | {value:.1f} | "
                  f"{value - argmax:+.1f} | {value - crf:+.1f} |")
    print(f"\nrefine on a 500x375 image, K = 3 (after compile, best of 5): "
          f"{time_target(args.data):.3f} s")


if __name__ == "__main__":
    main()
