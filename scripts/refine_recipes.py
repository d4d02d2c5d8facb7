"""A family of coarse-map recipes for evaluating the refinement stage, calibrated against dense CRF.

No CLIP weights are reachable here, so the refinement stage (coarse per-class maps ->
mask) is evaluated on real photos with coarse maps synthesised from the ground truth.
A single recipe invites over-fitting the refiner to that recipe's quirks; this module
defines several recipes that differ in KIND (resolution, sparsity, under/over-coverage,
class confusion, test-time augmentation), each modelling a phenomenon of real CLIP maps.

Every recipe has the signature ``recipe(mask_stack, image, rng) -> maps``:
  * ``mask_stack``: bool ``[K, H, W]``, the masks of the image's present classes, in
    label order;
  * ``image``: uint8 ``[H, W, 3]`` RGB;
  * ``rng``: ``np.random.Generator``, seeded from the image id (``seed_for``); a
    recipe is deterministic given it;
  * returns float32 ``[K, H, W]`` in [0, 1] (each map's maximum is 1 unless empty).
Every map is computed on a patch grid whose cells are at least 16 image pixels wide and
then bilinearly upsampled (PIL, pixel-centre aligned), so no boundary information finer
than a 16 px grid leaks; image cues (texture, colour) enter as per-patch averages only.

Calibration target (real CLIP-ES maps on VOC12 train: argmax 70.8 -> dense CRF 75.0,
i.e. +4.2 mIoU): for each recipe, on coco-dev VOC-20,
  (a) argmax over ``[b, s_1..s_K]`` (per-map min-max rescaled s) with the best b of a grid,
  (d) dense CRF with CLIP-ES's settings (``dense_crf``) with the best background power t
      of a grid, bg = (1 - max_k s_k) ** t,
must satisfy (d) - (a) in [+2, +6] and (a) in roughly 40-65. mIoU is over the classes
present in the ground truth, accumulated over all images (background class 0 scored
for VOC-20, void ignored; on the full COCO set 0 = unlabeled is void and predicted
background is a miss), as in ``eval_refine.py``.

Usage: python scripts/refine_recipes.py [--data ../shared/data/coco-dev] [--limit N]
       [--sets voc20 coco] [--recipes NAME ...] [--powers ...] [--workers N]

Importable helpers: ``RECIPES``, ``load_voc20``, ``load_coco``, ``seed_for``,
``masks_of``, ``coarse_maps``, ``argmax_predict``, ``argmax_best``, ``dense_crf``,
``crf_best``, ``confusion``, ``add_prediction``, ``miou``, ``calibrate``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage

from jaxseg.refinement import seeds  # the per-map rescaling the stage uses

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared/data/coco-dev"
NUM_CLASS_IDS = 256  # class ids are < 256 in both label sets
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05..0.95
# CRF background powers t whose break-even score m = (1 - m) ** t (a pixel whose best map
# reads m is background below it) runs over 0.15..0.70 in steps of 0.05, so (d) gets as
# fine and as wide a choice as (a)'s background score.
POWERS: tuple[float, ...] = tuple(round(math.log(m) / math.log(1 - m), 2)
                                  for m in (0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15))
MIN_PATCH_PX = 16  # no recipe resolves anything finer than this

Recipe = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


# --------------------------------------------------------------------------- data

def load_voc20(data_dir: Path | str = DEFAULT_DATA) -> Iterator[tuple[str, np.ndarray, np.ndarray, list[int]]]:
    """Yields (image id, uint8 [H, W, 3] image, int32 [H, W] GT with -1 void, class ids)
    for the VOC-20 label set (``masks_voc20``, 255 void, 0 background, 1-20 VOC classes),
    images in id order, class ids in ``labels_voc20.json`` order."""
    for image_id in image_ids(data_dir, "voc20"):
        yield load_item(data_dir, "voc20", image_id)


def load_coco(data_dir: Path | str = DEFAULT_DATA) -> Iterator[tuple[str, np.ndarray, np.ndarray, list[int]]]:
    """As ``load_voc20`` for the full COCO panoptic set (``masks``, 0 unlabeled = void,
    class ids = COCO panoptic category ids, things and stuff)."""
    for image_id in image_ids(data_dir, "coco"):
        yield load_item(data_dir, "coco", image_id)


def _labels(data: Path, label_set: str) -> dict[str, list[str]]:
    return json.loads((data / ("labels_voc20.json" if label_set == "voc20" else "labels.json")).read_text())


def _coco_name_to_id(data: Path) -> dict[str, int]:
    """``classes:`` of classes.yaml (``  <id>: <name>`` lines), read without a YAML parser."""
    name_to_id, in_classes = {}, False
    for line in (data / "classes.yaml").read_text().splitlines():
        if line.startswith("classes:"):
            in_classes = True
            continue
        match = re.match(r"^\s+(\d+):\s*(.+?)\s*$", line) if in_classes else None
        if match:
            name_to_id[match.group(2).strip("'\"")] = int(match.group(1))
    return name_to_id


def image_ids(data_dir: Path | str, label_set: str = "voc20") -> list[str]:
    """The image ids of a label set, sorted."""
    return sorted(_labels(Path(data_dir), label_set))


def load_item(data_dir: Path | str, label_set: str, image_id: str):
    """One (image id, image, GT with -1 void, class ids) of ``load_voc20`` / ``load_coco``."""
    data = Path(data_dir)
    if label_set == "voc20":
        name_to_id = {name: index for index, name in enumerate(VOC_CLASSES, start=1)}
        mask_dir, void = data / "masks_voc20", 255
    else:
        name_to_id = _coco_name_to_id(data)
        mask_dir, void = data / "masks", 0
    image = np.array(Image.open(data / "images" / f"{image_id}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(mask_dir / f"{image_id}.png")).astype(np.int32)
    gt = np.where(gt == void, -1, gt)
    return image_id, image, gt, [name_to_id[name] for name in _labels(data, label_set)[image_id]]


LOADERS = {"voc20": load_voc20, "coco": load_coco}


def seed_for(image_id: str) -> int:
    """The recipes' seed: the numeric image id (crc32 of the id if it is not numeric)."""
    return int(image_id) if image_id.isdigit() else zlib.crc32(image_id.encode())


def masks_of(gt: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """bool ``[K, H, W]``: the GT mask of each class id, in order."""
    if not class_ids:
        return np.zeros((0,) + gt.shape, bool)
    return np.stack([gt == class_id for class_id in class_ids])


def coarse_maps(recipe: Recipe, image_id: str, image: np.ndarray, gt: np.ndarray,
                class_ids: list[int]) -> np.ndarray:
    """The recipe's float32 ``[K, H, W]`` maps for one image, rng seeded from its id."""
    masks = masks_of(gt, class_ids)
    if len(masks) == 0:
        return np.zeros((0,) + gt.shape, np.float32)
    maps = recipe(masks, image, np.random.default_rng(seed_for(image_id)))
    return np.clip(np.asarray(maps, np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------- grid helpers

def _grid_short(height: int, width: int, short: int) -> tuple[int, int]:
    """A ViT view's grid: ``short`` patches on the short side (fewer if a patch would be
    under MIN_PATCH_PX image pixels), the long side in proportion."""
    short = max(1, min(short, min(height, width) // MIN_PATCH_PX))
    scale = short / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _grid_16(height: int, width: int) -> tuple[int, int]:
    """The image's own 16 px grid: ceil(H / 16) x ceil(W / 16)."""
    return math.ceil(height / 16), math.ceil(width / 16)


def _area(mask: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Fraction of each grid cell covered by ``mask`` (PIL box filter), float32."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(mask, np.float32))
                      .resize(grid_hw[::-1], Image.BOX), np.float32)


def _upsample(grid: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear, pixel-centre aligned upsampling of a ``[h, w]`` grid (PIL float mode)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(grid, np.float32))
                      .resize(size_hw[::-1], Image.BILINEAR), np.float32)


def _patch_colour(image: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Mean RGB of each grid cell, float32 ``[h, w, 3]`` in [0, 1]."""
    return np.asarray(Image.fromarray(image).resize(grid_hw[::-1], Image.BOX), np.float32) / 255.0


def _texture(image: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """Per-cell mean gradient magnitude of the grey image, rescaled to [0, 1] by the
    95th percentile over cells (CAMs and relevance favour textured, detailed parts)."""
    grey = image.astype(np.float32).mean(axis=2)
    magnitude = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    cells = _area(magnitude, grid_hw)
    return np.clip(cells / max(float(np.percentile(cells, 95)), 1e-6), 0.0, 1.0)


def _dist2(grid_hw, centre) -> np.ndarray:
    rows, cols = np.mgrid[0:grid_hw[0], 0:grid_hw[1]]
    return ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).astype(np.float32)


def _extent(cover: np.ndarray) -> float:
    """The object's size on the grid, in cells (larger side of its bounding box)."""
    inside = np.argwhere(cover > 0.3)
    if len(inside) == 0:
        return 1.0
    return float(max(np.ptp(inside[:, 0]), np.ptp(inside[:, 1]), 0) + 1)


def _part_bump(cover: np.ndarray, texture: np.ndarray, rng: np.random.Generator,
               spread: float) -> np.ndarray:
    """Gaussian bump on a discriminative part: centred on a cell inside the object drawn
    with probability ~ coverage x (0.2 + texture), sigma = spread x the object's extent."""
    weights = np.where(cover > 0.3, cover * (0.2 + texture), 0.0).ravel()
    if weights.sum() <= 0:
        weights = (cover == cover.max()).ravel().astype(np.float64)
    centre = np.unravel_index(rng.choice(weights.size, p=weights / weights.sum()), cover.shape)
    sigma = max(spread * _extent(cover), 0.5)
    return np.exp(-_dist2(cover.shape, centre) / (2 * sigma ** 2))


def _hot_patches(grid: np.ndarray, cover: np.ndarray, texture: np.ndarray,
                 rng: np.random.Generator, rate: float, low: float, high: float,
                 favour_flat: bool = True, peak: float | None = None) -> np.ndarray:
    """Adds Poisson(rate) isolated hot cells outside the object (value U(low, high) of
    the map's maximum). ViT relevance puts such spikes on high-norm 'register-like'
    tokens, which sit mostly in flat, redundant background (sky, walls)."""
    outside = np.flatnonzero(cover.ravel() < 0.05)
    count = rng.poisson(rate)
    if count == 0 or len(outside) == 0:
        return grid
    weights = (1.2 - texture.ravel()[outside]) if favour_flat else np.ones(len(outside))
    picks = rng.choice(outside, size=min(count, len(outside)), replace=False,
                       p=weights / weights.sum())
    peak = max(float(grid.max()), 1e-6) if peak is None else peak
    grid = grid.copy().ravel()
    grid[picks] += rng.uniform(low, high, len(picks)) * peak
    return grid.reshape(cover.shape)


def _dominant_instance(mask: np.ndarray, rng: np.random.Generator, others: tuple[float, float],
                       keep_prob: float) -> np.ndarray:
    """float mask in which one instance (connected component of at least 2% of the
    class's pixels, drawn with probability ~ area ** 2) keeps weight 1 and every other
    instance keeps it with probability ``keep_prob``, else gets U(others): image-level
    relevance credits the most salient instance and neglects the rest."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(np.float32)
    sizes = np.asarray(ndimage.sum(mask, labels, np.arange(1, count + 1)), np.float64)
    weights = np.where(sizes >= 0.02 * sizes.sum(), 1.0, 0.0)
    main = rng.choice(count, p=sizes ** 2 / (sizes ** 2).sum())
    for index in np.flatnonzero(weights):
        if index != main and rng.random() >= keep_prob:
            weights[index] = rng.uniform(*others)
    weights[sizes < 0.02 * sizes.sum()] = 1.0  # fragments follow their neighbours' coverage
    return np.concatenate([[0.0], weights]).astype(np.float32)[labels]


def _unit(grid: np.ndarray) -> np.ndarray:
    grid = np.clip(grid, 0.0, None)
    return (grid / max(float(grid.max()), 1e-6)).astype(np.float32)


def _ring(cover: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """Soft band around the object between ``inner`` and ``outer`` cells from it."""
    core = _core(cover)
    if not core.any():
        return np.zeros_like(cover)
    distance = ndimage.distance_transform_edt(~core)
    band = np.clip((distance - inner + 1) / 1.0, 0, 1) * np.clip((outer - distance + 1) / 1.0, 0, 1)
    return (band * ~core).astype(np.float32)


def _core(cover: np.ndarray) -> np.ndarray:
    """Cells that count as the object: coverage >= 0.5 (>= half the maximum for objects
    smaller than a cell)."""
    return cover >= min(0.5, 0.5 * float(cover.max())) if cover.max() > 0 else np.zeros(cover.shape, bool)


# --------------------------------------------------------------------------- recipes

def _field(shape: tuple[int, int], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length
    ``scale`` cells (i.i.d. when ``scale`` is 0)."""
    field = rng.standard_normal(shape)
    if scale > 0:
        field = ndimage.gaussian_filter(field, scale, mode="wrap")
    return (field / max(float(field.std()), 1e-6)).astype(np.float32)


def _relevance_view(mask: np.ndarray, texture: np.ndarray, grid_hw: tuple[int, int],
                    rng: np.random.Generator, spike_sigma: float, spike_scale: float,
                    part_spread: float, part_floor: float, cover_power: float, smooth: float,
                    keep_prob: float, others: tuple[float, float], context: float,
                    context_reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Sparse ViT relevance of one class on one view's grid (before hot patches and
    noise), and the class's coverage of the grid. See ``chefer_224``."""
    cover = _area(mask, grid_hw)
    weighted = cover
    if keep_prob < 1.0:
        weighted = _area(_dominant_instance(mask, rng, others, keep_prob), grid_hw)
    level = part_floor + (1 - part_floor) * _part_bump(weighted, texture, rng, part_spread)
    grid = weighted ** cover_power * np.exp(spike_sigma * _field(grid_hw, rng, spike_scale)) * level
    if context > 0:
        lit = np.clip(_field(grid_hw, rng, 1.5), 0.0, None)  # coherent stretches of the ring
        grid = grid + context * _ring(cover, 0.0, context_reach) * level * lit
    if smooth > 0:
        grid = ndimage.gaussian_filter(grid, smooth)
    return grid, cover


def chefer_224(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
               short: int = 14, spike_sigma: float = 0.6, spike_scale: float = 1.0,
               part_spread: float = 0.35, part_floor: float = 0.2, cover_power: float = 1.0,
               smooth: float = 0.6, keep_prob: float = 0.3, others: tuple[float, float] = (0.1, 0.5),
               context: float = 0.5, context_reach: float = 2.0, hot_rate: float = 1.0,
               hot_low: float = 0.3, hot_high: float = 0.8, noise: float = 0.03) -> np.ndarray:
    """Gradient-relevance-like (Chefer et al.; CLIP-ES Grad-CAM) at the 224 px view.

    Models: relevance of a ViT-B/16 fed the image resized to 224 px on the short side,
    i.e. a 14-patch grid on the short side (34 px cells on a 480 px side).
      * Sparse and spiky: relevance is log-normal over the object (``spike_sigma``; the
        log-field is correlated over ``spike_scale`` cells, so a few clusters of patches
        carry most of it and the rest of the object is weak), concentrated around a
        discriminative part (bump of ``part_spread`` x the object's extent over a floor
        ``part_floor``).
      * One instance dominates: with several instances of a class, one (drawn ~ area^2)
        gets full relevance, each other one keeps it with probability ``keep_prob``
        and otherwise only U(``others``).
      * Context spill: coherent stretches of the ring up to ``context_reach`` cells
        around the object get ``context`` x the local relevance level (the ground under
        a car, the water under a boat).
      * Poisson(``hot_rate``) isolated hot patches on flat background (high-norm
        artifact tokens), weak positive noise, a little attention mixing (``smooth``).
    """
    height, width = image.shape[:2]
    grid_hw = _grid_short(height, width, short)
    texture = _texture(image, grid_hw)
    maps = []
    for mask in mask_stack:
        grid, cover = _relevance_view(mask, texture, grid_hw, rng, spike_sigma, spike_scale,
                                      part_spread, part_floor, cover_power, smooth, keep_prob,
                                      others, context, context_reach)
        grid = _hot_patches(grid, cover, texture, rng, hot_rate, hot_low, hot_high)
        grid = grid + np.abs(rng.normal(0.0, noise, grid_hw)) * grid.max()
        maps.append(_upsample(_unit(grid), (height, width)))
    return _stack(maps, height, width)


def cam_16(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
           part_spread: tuple[float, float] = (0.25, 0.4), part_floor: float = 0.05,
           texture_weight: float = 0.3, ring_gain: tuple[float, float] = (0.2, 0.5),
           ring_outer: float = 3.0, smooth: float = 1.0, noise: float = 0.03) -> np.ndarray:
    """CAM-like under-covering at the image's own 16 px grid (ceil(H/16) x ceil(W/16)).

    Models: class activation maps (CAM / Grad-CAM on CNN or CLIP features) peak on the
    most discriminative PART (drawn towards textured cells: faces, wheels) and fade
    towards the extremities (``part_floor + (1 - part_floor) * bump``, sigma U(part_spread)
    of the object's extent), so thin or far parts are under-covered; they correlate with
    texture; the large receptive field bleeds activation into a context ring up to
    ``ring_outer`` cells around the object (gain U(ring_gain) of the peak), and the map is
    smooth (Gaussian ``smooth`` cells).
    """
    height, width = image.shape[:2]
    grid_hw = _grid_16(height, width)
    texture = _texture(image, grid_hw)
    maps = []
    for mask in mask_stack:
        cover = _area(mask, grid_hw)
        part = _part_bump(cover, texture, rng, rng.uniform(*part_spread))
        grid = cover * (part_floor + (1 - part_floor) * part)
        grid = grid * (1 - texture_weight + texture_weight * texture)
        ring = ndimage.gaussian_filter(_ring(cover, 0.0, ring_outer), 0.7)
        grid = grid + rng.uniform(*ring_gain) * grid.max() * ring * (0.5 + 0.5 * texture)
        grid = ndimage.gaussian_filter(grid, smooth)
        grid = grid + rng.normal(0.0, noise, grid_hw) * grid.max()
        maps.append(_upsample(_unit(grid), (height, width)))
    return _stack(maps, height, width)


def halo(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
         short: int = 14, sigma: tuple[float, float] = (1.0, 1.8), gamma: tuple[float, float] = (0.6, 0.9),
         offset: tuple[float, float] = (0.0, 0.15), noise: float = 0.03, shift: float = 1.0) -> np.ndarray:
    """Over-covering blurry halos.

    Models: maps from heavily smoothed or affinity-propagated relevance (CLIP-ES's
    class-aware attention affinity, random-walk refinement, multi-layer attention
    averaging) and from low-resolution views: the activation spreads well beyond the
    object (Gaussian blur of sigma U(sigma) cells on the 224 px view's grid), is flat
    on top and has a shallow slope at the boundary (``blur ** gamma`` with gamma < 1,
    low contrast), registered up to ``shift`` cells off the object (attention and
    propagation drift towards neighbouring tokens), with a weak global offset (the CLS
    token's similarity to the whole scene). Where the boundary lies on the slope depends on the object's size, so no
    single threshold fits all objects.
    """
    height, width = image.shape[:2]
    grid_hw = _grid_short(height, width, short)
    maps = []
    for mask in mask_stack:
        cover = _area(mask, grid_hw)
        grid = ndimage.gaussian_filter(cover, rng.uniform(*sigma))
        if shift > 0:
            grid = ndimage.shift(grid, rng.uniform(-shift, shift, 2), order=1, mode="nearest")
        grid = _unit(grid) ** rng.uniform(*gamma)
        grid = grid + rng.uniform(*offset) + rng.normal(0.0, noise, grid_hw)
        maps.append(_upsample(_unit(grid), (height, width)))
    return _stack(maps, height, width)


def cooccur(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
            leak_prob: float = 0.9, leak_gain: tuple[float, float] = (0.6, 1.0),
            leak_reach: float = 3.0, context_prob: float = 0.8,
            context_gain: tuple[float, float] = (0.5, 0.9), context_outer: float = 7.0,
            colour_tol: float = 0.12) -> np.ndarray:
    """Confident wrong class: co-occurring objects and context.

    Models: CLIP's image-level training ties classes to their usual company, so a class's
    map also fires strongly on (i) a neighbouring object of another present class
    (person/horse, rider/motorbike, table/plates, chair/table): with probability
    ``leak_prob`` per ordered pair of present classes, class k's map gains U(leak_gain)
    of its peak on class j's cells, strongest near k (decay ``leak_reach`` cells); and
    (ii) a context region (boat -> water, train -> rails, aeroplane -> sky, car -> road):
    with probability ``context_prob``, the cells within ``context_outer`` cells of the
    object whose mean colour is close to the dominant colour of the ring just around it
    (a per-cell colour test on the 16 px grid, so no fine boundary leaks). The base maps
    are moderately under-covering CAMs on the 16 px grid.
    """
    height, width = image.shape[:2]
    grid_hw = _grid_16(height, width)
    texture = _texture(image, grid_hw)
    colour = _patch_colour(image, grid_hw)
    covers = [_area(mask, grid_hw) for mask in mask_stack]
    bases = []
    for cover in covers:
        part = _part_bump(cover, texture, rng, rng.uniform(0.4, 0.6))
        bases.append(cover * (0.35 + 0.65 * part) * (0.8 + 0.2 * texture))
    maps = []
    for k, cover in enumerate(covers):
        grid = bases[k].copy()
        peak = max(float(grid.max()), 1e-6)
        core = _core(cover)
        near = np.exp(-ndimage.distance_transform_edt(~core) / leak_reach) if core.any() else np.ones_like(cover)
        for j, other in enumerate(covers):
            if j != k and rng.random() < leak_prob:
                grid = grid + rng.uniform(*leak_gain) * peak * other * near
        if rng.random() < context_prob:
            ring = _ring(cover, 0.0, 1.5) * (1.0 - np.clip(sum(covers), 0, 1))
            if ring.sum() > 0:
                dominant = np.median(colour[ring > 0.5], axis=0) if (ring > 0.5).any() else colour.mean((0, 1))
                close = np.linalg.norm(colour - dominant, axis=2) < colour_tol
                region = close & (_ring(cover, 0.0, context_outer) > 0)
                grid = grid + rng.uniform(*context_gain) * peak * region.astype(np.float32)
        grid = ndimage.gaussian_filter(grid, 0.8)
        grid = grid + rng.normal(0.0, 0.03, grid_hw) * grid.max()
        maps.append(_upsample(_unit(grid), (height, width)))
    return _stack(maps, height, width)


def tta_vit(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
            crops: int = 8, scale: tuple[float, float] = (0.55, 0.9), taper: float = 0.15,
            spike_sigma: float = 0.8, spike_scale: float = 1.0, part_spread: float = 0.35,
            part_floor: float = 0.2, cover_power: float = 1.0, smooth: float = 1.5,
            keep_prob: float = 0.3, others: tuple[float, float] = (0.1, 0.5),
            context: float = 0.5, context_reach: float = 2.0, hot_rate: float = 1.0,
            noise: float = 0.03) -> np.ndarray:
    """Sparse ViT relevance averaged over test-time-augmentation crops.

    Models: relevance computed on several views (the full image at 224 px short side plus
    ``crops`` random square crops of U(``scale``) of the short side, each resized to
    224 px, i.e. a 14x14 grid on the crop, cells never under 16 image px), each view a
    sparse, spiky map made as in ``chefer_224`` (same constants, except a per-view
    smoothing of 1.5 cells instead of 0.6: with 0.6 dense CRF gained +6.7 over argmax,
    above the +2..+6 of real maps) with its own spikes,
    dominant instance, context stretches and hot patches, normalised per view (a view
    without the class keeps its hot patches and noise at the strength they would have
    next to an object), warped back to the image and averaged with coverage weights (a
    window ramping to 0.1 over ``taper`` of the crop towards its edges). Averaging fills
    in the object and offsets the grids, but keeps blotches; cells near the image border
    are seen by fewer views.
    """
    height, width = image.shape[:2]
    short_side = min(height, width)
    views = [(0, 0, height, width)]
    for _ in range(crops):
        side = max(int(short_side * rng.uniform(*scale)), min(short_side, 14 * MIN_PATCH_PX))
        views.append((int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1)),
                      side, side))
    total = np.zeros((len(mask_stack), height, width), np.float32)
    weight = np.zeros((height, width), np.float32)
    for top, left, view_h, view_w in views:
        grid_hw = _grid_short(view_h, view_w, 14)
        texture = _texture(image[top:top + view_h, left:left + view_w], grid_hw)
        window = _window(view_h, view_w, taper)
        for k, mask in enumerate(mask_stack):
            grid, cover = _relevance_view(mask[top:top + view_h, left:left + view_w], texture,
                                          grid_hw, rng, spike_sigma, spike_scale, part_spread,
                                          part_floor, cover_power, smooth, keep_prob, others,
                                          context, context_reach)
            reference = max(float(grid.max()), 1.0)
            grid = _hot_patches(np.maximum(grid, 1e-6), cover, texture, rng, hot_rate, 0.3, 0.8,
                                peak=reference)
            grid = grid + np.abs(rng.normal(0.0, noise, grid_hw)) * reference
            total[k, top:top + view_h, left:left + view_w] += window * _upsample(
                grid / max(float(grid.max()), 1e-6), (view_h, view_w))
        weight[top:top + view_h, left:left + view_w] += window
    maps = total / np.maximum(weight, 1e-6)
    return np.stack([_unit(m) for m in maps]) if len(maps) else maps


def dense_clip(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
               short: int = 21, base: float = 0.18, signal: float = 0.06,
               confusion: tuple[float, float] = (0.0, 0.5), speckle: float = 0.01,
               scene: float = 0.01, blotch: float = 0.006, blotch_scale: float = 1.5) -> np.ndarray:
    """Dense-CLIP-like patch similarities (MaskCLIP / NACLIP / SCLIP).

    Models: cosine similarity of each patch token to each class's text embedding, on the
    grid of a 336 px short-side view (21 cells, 16 px at 336 px, never under 16 image
    px): every class sits at a similar baseline (``base``), the present class is only
    ``signal`` higher with decent coverage (slightly smoothed by attention), i.i.d.
    per-patch ``speckle``, a per-patch 'scene' offset shared by all classes (texture
    driven), and confusion between classes: class k gains U(confusion) of class j's
    signal on j's cells (similar classes: dog/cat, car/bus, chair/sofa).
    """
    height, width = image.shape[:2]
    grid_hw = _grid_short(height, width, short)
    texture = _texture(image, grid_hw)
    covers = [ndimage.gaussian_filter(_area(mask, grid_hw), 0.5) for mask in mask_stack]
    shared = scene * (texture - texture.mean())
    maps = []
    for k, cover in enumerate(covers):
        grid = base + signal * cover + shared
        for j, other in enumerate(covers):
            if j != k:
                grid = grid + rng.uniform(*confusion) * signal * other
        grid = grid + rng.normal(0.0, speckle, grid_hw) + blotch * _field(grid_hw, rng, blotch_scale)
        grid = (grid - grid.min()) / max(float(np.ptp(grid)), 1e-6)
        maps.append(_upsample(grid, (height, width)))
    return _stack(maps, height, width)


def _window(height: int, width: int, taper: float) -> np.ndarray:
    """Separable weight, 1 inside and ramping to 0.1 over ``taper`` of each side."""
    def ramp(n):
        t = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / max(taper * n, 1e-6)
        return 0.1 + 0.9 * np.clip(t, 0, 1)
    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _stack(maps, height, width) -> np.ndarray:
    return np.stack(maps).astype(np.float32) if maps else np.zeros((0, height, width), np.float32)


RECIPES: dict[str, Recipe] = {
    "chefer_224": chefer_224,
    "cam_16": cam_16,
    "halo": halo,
    "cooccur": cooccur,
    "tta_vit": tta_vit,
    "dense_clip": dense_clip,
}


# --------------------------------------------------------------------------- baselines and scoring

def normalize_scores(maps: np.ndarray) -> np.ndarray:
    """The stage's per-map rescaling (``seeds.normalize_scores``) of a whole ``[K, H, W]``."""
    return np.asarray(seeds.normalize_scores(maps, np.ones(maps.shape[1:], bool),
                                             np.ones(len(maps), bool)))


def argmax_predict(maps: np.ndarray, background: float) -> np.ndarray:
    """(a): int32 ``[H, W]``, argmax over ``[background, rescaled s_1..s_K]`` (0 = background)."""
    relative = normalize_scores(maps)
    if len(relative) == 0:
        return np.zeros(maps.shape[1:], np.int32)
    best = relative.argmax(axis=0)
    return np.where(relative.max(axis=0) > background, best + 1, 0).astype(np.int32)


class _CRF:
    """pydensecrf DenseCRF2D with CLIP-ES's pairwise terms, built once per image and
    label count; ``__call__`` sets a new unary and runs 10 mean-field iterations."""

    def __init__(self, image: np.ndarray, num_labels: int):
        import pydensecrf.densecrf as dcrf
        height, width = image.shape[:2]
        self.shape = (num_labels, height, width)
        self.crf = dcrf.DenseCRF2D(width, height, num_labels)
        self.crf.addPairwiseGaussian(sxy=1, compat=3)
        self.crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.array(image, np.uint8, order="C"), compat=4)

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        from pydensecrf.utils import unary_from_softmax
        self.crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities)))
        q = np.array(self.crf.inference(10)).reshape(self.shape)
        return q.argmax(axis=0).astype(np.int32)


def crf_probabilities(maps: np.ndarray, power: float) -> np.ndarray:
    """``[bg, s_1..s_K]`` with rescaled s and bg = (1 - max_k s_k) ** power."""
    relative = normalize_scores(maps)
    return np.concatenate([(1.0 - relative.max(axis=0, keepdims=True)) ** power, relative])


def dense_crf(image: np.ndarray, maps: np.ndarray, power: float = 1.0, crf: _CRF | None = None) -> np.ndarray:
    """(d): CLIP-ES's dense CRF, int32 ``[H, W]`` (0 = background, k = k-th map).

    Unary ``unary_from_softmax([(1 - max s) ** power, s_1..s_K])`` of the per-map rescaled
    maps, 10 iterations, ``addPairwiseGaussian(sxy=1, compat=3)``,
    ``addPairwiseBilateral(sxy=67, srgb=3, rgbim=<plain RGB image>, compat=4)``.
    ``crf``: a ``_CRF(image, K + 1)`` to reuse across calls on the same image.
    """
    if len(maps) == 0:
        return np.zeros(image.shape[:2], np.int32)
    crf = crf or _CRF(image, len(maps) + 1)
    return crf(crf_probabilities(maps, power))


def confusion(gt: np.ndarray, class_ids: list[int], prediction: np.ndarray,
              size: int = NUM_CLASS_IDS) -> np.ndarray:
    """``[size, size]`` confusion (rows: ground truth; void -1 ignored) of a ``[H, W]``
    prediction whose value k is the k-th of ``class_ids`` (0 background); class ids < size."""
    predicted = np.array([0] + list(class_ids), np.int64)[prediction]
    valid = gt >= 0
    return np.bincount(gt[valid] * size + predicted[valid], minlength=size ** 2).reshape(size, size)


def add_prediction(matrix: np.ndarray, gt: np.ndarray, class_ids: list[int],
                   prediction: np.ndarray) -> None:
    """Adds a prediction's :func:`confusion` to ``matrix`` (its size taken from it)."""
    matrix += confusion(gt, class_ids, prediction, len(matrix))


def miou(confusion: np.ndarray) -> float:
    """Mean IoU (%) over the classes present in the ground truth (rows)."""
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = confusion.sum(1) > 0
    return float(np.mean(intersection[present] / union[present]) * 100)


def _new_confusion() -> np.ndarray:
    return np.zeros((NUM_CLASS_IDS, NUM_CLASS_IDS), np.int64)


def _best(confusions: dict[float, np.ndarray]) -> tuple[float, float, dict[float, float]]:
    scores = {key: miou(value) for key, value in confusions.items()}
    key = max(scores, key=scores.get)
    return key, scores[key], scores


def argmax_best(samples: Iterable[tuple[np.ndarray, list[int], np.ndarray]],
                thresholds: Iterable[float] = THRESHOLDS) -> tuple[float, float, dict[float, float]]:
    """(a) with its best background score: ``samples`` of (gt, class ids, maps); returns
    (best b, its mIoU, {b: mIoU})."""
    thresholds = tuple(thresholds)
    confusions = {b: _new_confusion() for b in thresholds}
    for gt, class_ids, maps in samples:
        for b in thresholds:
            add_prediction(confusions[b], gt, class_ids, argmax_predict(maps, b))
    return _best(confusions)


def crf_best(samples: Iterable[tuple[np.ndarray, np.ndarray, list[int], np.ndarray]],
             powers: Iterable[float] = POWERS) -> tuple[float, float, dict[float, float]]:
    """(d) with its best background power: ``samples`` of (image, gt, class ids, maps);
    returns (best power, its mIoU, {power: mIoU})."""
    powers = tuple(powers)
    confusions = {t: _new_confusion() for t in powers}
    for image, gt, class_ids, maps in samples:
        crf = _CRF(image, len(maps) + 1) if len(maps) else None
        for t in powers:
            add_prediction(confusions[t], gt, class_ids, dense_crf(image, maps, t, crf))
    return _best(confusions)


# --------------------------------------------------------------------------- calibration

def _image_confusions(item, recipes, thresholds, powers):
    image_id, image, gt, class_ids = item
    out = {}
    crf = _CRF(image, len(class_ids) + 1) if class_ids else None
    for name, recipe in recipes.items():
        clock = time.perf_counter()
        maps = coarse_maps(recipe, image_id, image, gt, class_ids)
        synthesis = time.perf_counter() - clock
        argmax_conf = {b: _new_confusion() for b in thresholds}
        for b in thresholds:
            add_prediction(argmax_conf[b], gt, class_ids, argmax_predict(maps, b))
        clock = time.perf_counter()
        crf_conf = {t: _new_confusion() for t in powers}
        for t in powers:
            add_prediction(crf_conf[t], gt, class_ids, dense_crf(image, maps, t, crf))
        crf_seconds = (time.perf_counter() - clock) / max(len(powers), 1)
        out[name] = (argmax_conf, crf_conf, synthesis, crf_seconds)
    return out


def _worker(args):
    data_dir, label_set, image_id, recipe_names, thresholds, powers = args
    return _image_confusions(load_item(data_dir, label_set, image_id),
                             {name: RECIPES[name] for name in recipe_names}, thresholds, powers)


def calibrate(data_dir: Path | str = DEFAULT_DATA, recipes: dict[str, Recipe] | Iterable[str] | None = None,
              limit: int | None = None, label_set: str = "voc20",
              thresholds: Iterable[float] = THRESHOLDS, powers: Iterable[float] = POWERS,
              workers: int = 1) -> dict[str, dict]:
    """(a) and (d), each with its best constant, for each recipe on the first ``limit``
    images of ``label_set``. ``recipes``: a {name: recipe} dict or names of ``RECIPES``
    (default all). Returns {name: {"argmax": (b, mIoU, {b: mIoU}), "crf": (t, mIoU, {t: mIoU}),
    "gain": crf - argmax, "synthesis_s": seconds per image to make the maps, "crf_s":
    seconds per image of one dense-CRF run (inference + scoring, lattice built once per
    image and shared), "images": n}}.
    ``workers`` > 1 spreads images over processes (registry recipes only)."""
    if recipes is None:
        recipes = dict(RECIPES)
    elif not isinstance(recipes, dict):
        recipes = {name: RECIPES[name] for name in recipes}
    thresholds, powers = tuple(thresholds), tuple(powers)
    totals = {name: ({b: _new_confusion() for b in thresholds}, {t: _new_confusion() for t in powers})
              for name in recipes}
    timings = {name: [0.0, 0.0] for name in recipes}
    ids = image_ids(data_dir, label_set)[:limit]
    if workers > 1:
        assert all(RECIPES.get(name) is recipe for name, recipe in recipes.items()), \
            "workers > 1 needs registry recipes"
        from multiprocessing import Pool

        from jaxseg.run.pool import exit_with_parent
        jobs = [(data_dir, label_set, image_id, tuple(recipes), thresholds, powers) for image_id in ids]
        pool = Pool(workers, initializer=exit_with_parent, initargs=(os.getpid(),))
        results = pool.imap_unordered(_worker, jobs)
    else:
        pool = None
        results = (_image_confusions(load_item(data_dir, label_set, image_id), recipes, thresholds, powers)
                   for image_id in ids)
    count = 0
    for result in results:
        count += 1
        for name, (argmax_conf, crf_conf, synthesis, crf_seconds) in result.items():
            timings[name][0] += synthesis
            timings[name][1] += crf_seconds
            for b in thresholds:
                totals[name][0][b] += argmax_conf[b]
            for t in powers:
                totals[name][1][t] += crf_conf[t]
    if pool is not None:
        pool.close()
        pool.join()
    report = {}
    for name, (argmax_conf, crf_conf) in totals.items():
        argmax_result, crf_result = _best(argmax_conf), _best(crf_conf)
        report[name] = {"argmax": argmax_result, "crf": crf_result,
                        "gain": crf_result[1] - argmax_result[1], "images": count,
                        "synthesis_s": timings[name][0] / max(count, 1),
                        "crf_s": timings[name][1] / max(count, 1)}
    return report


def format_table(report: dict[str, dict], title: str) -> str:
    lines = [title, "",
             "| recipe | (a) best b | (a) mIoU | (d) best t | (d) mIoU | gain (d)-(a) | maps s/img | CRF s/img |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in report.items():
        (b, a_miou, _), (t, d_miou, _) = row["argmax"], row["crf"]
        lines.append(f"| {name} | {b:.2f} | {a_miou:.1f} | {t:g} | {d_miou:.1f} | {row['gain']:+.1f} "
                     f"| {row['synthesis_s']:.3f} | {row['crf_s']:.3f} |")
    if report:
        mean_a = np.mean([row["argmax"][1] for row in report.values()])
        mean_d = np.mean([row["crf"][1] for row in report.values()])
        lines.append(f"| mean | | {mean_a:.1f} | | {mean_d:.1f} | {mean_d - mean_a:+.1f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--sets", nargs="+", default=["voc20"], choices=sorted(LOADERS))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--powers", nargs="+", type=float, default=list(POWERS))
    parser.add_argument("--workers", type=int, default=1, help="processes (images in parallel)")
    parser.add_argument("--curves", action="store_true", help="also print mIoU per b and per t")
    args = parser.parse_args()
    for label_set in args.sets:
        start = time.perf_counter()
        report = calibrate(args.data, args.recipes, args.limit, label_set, powers=args.powers,
                           workers=args.workers)
        count = next(iter(report.values()))["images"] if report else 0
        print(format_table(report, f"\n{label_set}: {count} images of {args.data.name} "
                                   f"({time.perf_counter() - start:.0f} s)\n"))
        if args.curves:
            for name, row in report.items():
                print(name, "argmax:", " ".join(f"{b:g}:{v:.1f}" for b, v in row["argmax"][2].items()))
                print(name, "crf:   ", " ".join(f"{t:g}:{v:.1f}" for t, v in row["crf"][2].items()))


if __name__ == "__main__":
    main()
