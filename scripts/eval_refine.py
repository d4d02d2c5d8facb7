"""Measures the refinement stage on real photos with coarse maps degraded from ground truth.

No CLIP weights are reachable here, so each present class's ground-truth mask is
degraded the way CLIP relevance is, and the methods below turn the degraded maps
back into masks, scored by mIoU against the ground truth.

Degradation recipe (deterministic: numpy generator seeded with the image id, classes
in label order):
  1. Average the binary mask down to the ViT-B/16 patch grid (short side 14 patches,
     long side in proportion), i.e. PIL box filter.
  2. Peak on a discriminative part: multiply by ``0.3 + 0.7 * bump``, a Gaussian bump
     (sigma 0.25-0.5 of the object's grid extent) centred on a random object patch.
  3. Blur with a Gaussian of sigma 0.8 patch.
  4. Spurious blobs: Poisson(1) Gaussian blobs (sigma 0.7-1.5 patches, height 0.2-0.6
     of the map's maximum) centred on random patches outside the object.
  5. Noise: i.i.d. Gaussian, std 0.08 of the map's maximum, per patch.
  6. Clip at 0, divide by the maximum, bilinear upsampling to the image size.

Methods (one config, ``RefineConfig()``, for all images):
  (a) argmax of the rescaled maps against a constant background score (``background_score``),
  (b) graph cut on probabilities read off the maps (``RefineConfig(distillation=False)``),
  (c) the full stage, ``jaxseg.refinement.refine.refine``,
  (d) dense CRF (pydensecrf) with CLIP-ES's settings: softmax unary of
      ``[1 - max_k s_k, s_1..s_K]``, 10 iterations, Gaussian (sxy 1, compat 3),
      bilateral (sxy 67, srgb 3, compat 4). CLIP-ES feeds the mean-subtracted BGR image
      cast to uint8; here the plain RGB image is used.

Label sets: VOC-20 (``masks_voc20``, 255 void, background class 0 scored; the 23 images
without a VOC class have K = 0 and every method returns all background there) and the
full COCO panoptic set (``masks`` + ``labels.json``, 0 unlabeled = void, every pixel has
a class, so predicted background counts as a miss). mIoU over the classes present in
the ground truth, accumulated over all images; seconds per image include K = 0 images.
(a)'s background score 0.35 is the best of 0.2-0.5 for (a) on the first 40 VOC images.

Usage: python scripts/eval_refine.py [--data ../shared/data/coco-dev] [--limit N] [--sets voc20 coco]
       [--seeds 1 2 3 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image
from scipy.ndimage import gaussian_filter

from jaxseg.imaging import resize_image, resize_maps
from jaxseg.refinement.config import RefineConfig
from jaxseg.refinement.refine import refine
from jaxseg.refinement.seeds import normalize_scores
from jaxseg.labels.vocab import VOC_CLASSES

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/coco-dev"
NUM_CLASS_IDS = 256  # class ids are < 256 in both label sets
PATCHES_SHORT_SIDE = 14


def degrade(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Coarse CLIP-like relevance ``[H, W]`` in [0, 1] from a binary ``[H, W]`` mask (recipe above)."""
    height, width = mask.shape
    scale = PATCHES_SHORT_SIDE / min(height, width)
    grid_hw = (max(1, round(height * scale)), max(1, round(width * scale)))
    grid = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(grid_hw[::-1], Image.BOX))
    rows, cols = np.mgrid[0:grid_hw[0], 0:grid_hw[1]]
    inside = np.argwhere(grid > 0.3)
    if len(inside) == 0:
        inside = np.argwhere(grid == grid.max())
    centre = inside[rng.integers(len(inside))]
    extent = max(np.ptp(inside[:, 0]), np.ptp(inside[:, 1]), 1)
    sigma = extent * rng.uniform(0.25, 0.5)
    bump = np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * sigma ** 2))
    grid = gaussian_filter(grid * (0.3 + 0.7 * bump), 0.8)
    peak = max(float(grid.max()), 1e-6)
    outside = np.argwhere(grid < 0.1 * peak)
    for _ in range(rng.poisson(1.0) if len(outside) else 0):
        centre = outside[rng.integers(len(outside))]
        blob_sigma = rng.uniform(0.7, 1.5)
        grid = grid + rng.uniform(0.2, 0.6) * peak * np.exp(
            -((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / (2 * blob_sigma ** 2))
    grid = np.clip(grid + rng.normal(0.0, 0.08 * peak, grid.shape), 0.0, None)
    grid = grid / max(float(grid.max()), 1e-6)
    return resize_maps(grid[None].astype(np.float32), (height, width))[0]


def argmax_baseline(scores: np.ndarray, config: RefineConfig) -> np.ndarray:
    """(a): argmax over ``[background_score, rescaled scores]``."""
    relative = normalize_scores(scores)
    background = np.full((1,) + scores.shape[1:], config.background_score, np.float32)
    return np.concatenate([background, relative]).argmax(axis=0).astype(np.int32)


def dense_crf(image: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(d): CLIP-ES's dense CRF on ``[1 - max s, s]`` (see the module docstring)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    relative = normalize_scores(scores)
    if len(relative) == 0:
        return np.zeros(image.shape[:2], np.int32)
    probabilities = np.concatenate([1.0 - relative.max(axis=0, keepdims=True), relative])
    num_labels, height, width = probabilities.shape
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.array(image, np.uint8, order="C"), compat=4)
    q = np.array(crf.inference(10)).reshape(num_labels, height, width)
    return q.argmax(axis=0).astype(np.int32)


def load_label_set(data: Path, label_set: str):
    """Yields (image id, uint8 image, int32 GT mask with -1 void, class ids of the K labels)."""
    if label_set == "voc20":
        labels = json.loads((data / "labels_voc20.json").read_text())
        name_to_id = {name: index for index, name in enumerate(VOC_CLASSES, start=1)}
        mask_dir, void = data / "masks_voc20", 255
    else:
        labels = json.loads((data / "labels.json").read_text())
        classes = yaml.safe_load((data / "classes.yaml").read_text())["classes"]
        name_to_id = {name: int(index) for index, name in classes.items()}
        mask_dir, void = data / "masks", 0
    for image_id in sorted(labels):
        image = np.array(Image.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(mask_dir / f"{image_id}.png")).astype(np.int32)
        gt = np.where(gt == void, -1, gt)
        yield image_id, image, gt, [name_to_id[name] for name in labels[image_id]]


def coarse_maps(image_id: str, gt: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """Degraded maps ``[K, H, W]`` of the given classes, seeded by the image id."""
    rng = np.random.default_rng(int(image_id))
    maps = [degrade((gt == class_id).astype(np.uint8), rng) for class_id in class_ids]
    return np.stack(maps) if maps else np.zeros((0,) + gt.shape, np.float32)


def add_prediction(confusion: np.ndarray, gt: np.ndarray, class_ids: list[int],
                   prediction: np.ndarray) -> None:
    """Adds a ``[H, W]`` prediction (0 background, k the k-th of ``class_ids``) to the
    ``[NUM_CLASS_IDS, NUM_CLASS_IDS]`` confusion (rows: ground truth; void -1 ignored)."""
    predicted = np.array([0] + class_ids, np.int64)[prediction]
    valid = gt >= 0
    confusion += np.bincount(gt[valid] * NUM_CLASS_IDS + predicted[valid],
                             minlength=NUM_CLASS_IDS ** 2).reshape(NUM_CLASS_IDS, NUM_CLASS_IDS)


def miou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in the ground truth (rows)."""
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = confusion.sum(1) > 0
    return float(np.mean(intersection[present] / union[present]) * 100)


def evaluate(data: Path, label_set: str, limit: int | None,
             extra_seeds: tuple[int, ...] = ()) -> tuple[dict[str, tuple[float, float]], int]:
    """mIoU (%) and seconds per image of each method, and the number of images; (c) is
    also run with ``RefineConfig(seed=s)`` for each of ``extra_seeds``."""
    config = RefineConfig()
    methods = {
        "(a) argmax + background threshold": lambda im, s: argmax_baseline(s, config),
        "(b) graph cut, no distillation": lambda im, s: refine(im, s, None, RefineConfig(distillation=False)),
        "(c) full stage (distillation + graph cut)": lambda im, s: refine(im, s, None, config),
        "(d) dense CRF (CLIP-ES settings)": dense_crf,
    }
    for seed in extra_seeds:
        seeded = RefineConfig(seed=seed)
        methods[f"(c) full stage, seed {seed}"] = lambda im, s, seeded=seeded: refine(im, s, None, seeded)
    confusions = {name: np.zeros((NUM_CLASS_IDS, NUM_CLASS_IDS), np.int64) for name in methods}
    seconds = {name: 0.0 for name in methods}
    count = 0
    for image_id, image, gt, class_ids in itertools.islice(load_label_set(data, label_set), limit):
        scores = coarse_maps(image_id, gt, class_ids)
        for name, method in methods.items():
            start = time.perf_counter()
            prediction = method(image, scores)
            seconds[name] += time.perf_counter() - start
            add_prediction(confusions[name], gt, class_ids, prediction)
        count += 1
    return {name: (miou(confusions[name]), seconds[name] / max(count, 1)) for name in methods}, count


def time_target(data: Path, repeats: int = 3) -> float:
    """Seconds of ``refine`` on image 000000000049 resized to 500x375 with its K = 3 VOC labels."""
    image_id = "000000000049"
    for current_id, image, gt, class_ids in load_label_set(data, "voc20"):
        if current_id == image_id:
            break
    image = resize_image(image, (375, 500))
    gt_small = np.asarray(Image.fromarray(gt.astype(np.int32)).resize((500, 375), Image.NEAREST))
    scores = coarse_maps(image_id, gt_small, class_ids)
    refine(image, scores)  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        refine(image, scores)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--sets", nargs="+", default=["voc20", "coco"], choices=["voc20", "coco"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[],
                        help="also run (c) with these RefineConfig seeds (the default is seed 0)")
    args = parser.parse_args()
    for num_labels in (1, 8, 16):  # compile every class bucket of coco-dev outside the timings
        refine(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0).random((num_labels, 8, 8)))
    for label_set in args.sets:
        results, count = evaluate(args.data, label_set, args.limit, tuple(args.seeds))
        print(f"\n{label_set}: {count} images of {args.data.name}\n")
        print("| method | mIoU (%) | s / image |\n| --- | ---: | ---: |")
        for name, (value, seconds) in results.items():
            print(f"| {name} | {value:.1f} | {seconds:.3f} |")
    print(f"\nrefine on a 500x375 image, K = 3 (after compile, best of 3): {time_target(args.data):.3f} s")


if __name__ == "__main__":
    main()
