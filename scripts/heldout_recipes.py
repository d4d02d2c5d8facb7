"""Two held-out coarse-map recipes, designed blind to the refinement stage.

The recipes of ``refine_recipes.py`` were used while tuning the refinement stage; these
two were written without looking at the stage, its evaluation scripts or its tuning
results, from what real CLIP relevance maps look like, to check that the stage
generalises to maps it was never tuned on. They follow ``refine_recipes``' contract
(``recipe(mask_stack, image, rng) -> float32 [K, H, W]`` in [0, 1], each map's maximum 1
unless empty, computed on a grid of cells at least 16 image px, bilinearly upsampled,
deterministic given ``rng``) and differ in kind from its six recipes:
  * ``vit_b32``: a 7x7 grid over the whole, aspect-distorted image (the coarsest view);
  * ``affinity_walk``: errors that follow colour rather than distance to the object.

Calibration (``refine_recipes.calibrate``: (a) argmax with the best background score b,
(d) dense CRF with the best background power t; target (d) - (a) in [+2, +6], (a) about
40-65). Final, VOC-20, all 100 coco-dev images (the same figures as columns (a) and (d) of
``python scripts/eval_refine.py --family held-out``, which measures the refinement stage
on these recipes):
  vit_b32        b 0.15  (a) 41.2  t 7.21  (d) 44.3  (d)-(a) +3.1
  affinity_walk  b 0.45  (a) 56.3  t 1.34  (d) 59.4  (d)-(a) +3.1
Variants tried on the first 40 images ((a)-only where no t is given; t over a subset of
the powers bracketing the best one where marked *):
  vit_b32, the defaults: b 0.20, (a) 45.6, t 7.21, (d) 49.8, +4.2 (kept as designed).
  affinity_walk (noise before the walk, no smoothing, gamma 1 unless said):
    reach 8, colour_sigma 0.15, 4 steps: b 0.30, (a) 42.0 (walk spreads over the image);
    reach 4, 0.10, 3 steps: b 0.20, (a) 59.9;  reach 4, 0.12, 4 steps: b 0.25, (a) 55.9;
    reach 6, 0.10, 3 steps: b 0.25, (a) 52.7, t 4.82, (d) 53.7, +1.0;
      + smooth 1.0: b 0.35, (a) 52.0, t* 2.44, (d) 53.1, +1.2;
      + multiplicative log-normal speckle 0.4: b 0.10, (a) 48.3 (b at the grid's edge);
      + gamma 0.7: b 0.35, (a) 54.6;  + gamma 0.5: b 0.40, (a) 55.0, t* 1.79, (d) 56.0, +1.0;
    reach 4, 0.12, 3 steps, smooth 1.5: b 0.40, (a) 49.4;
    reach 3, 0.20, 4 steps: b 0.25, (a) 51.5, t* 2.44, (d) 53.1, +1.7;
      + speckle 0.3 / 0.5: b 0.15 / 0.10, (a) 49.2 / 45.8;
      + gamma 0.5: b 0.40, (a) 53.9, t* 2.44, (d) 56.6, +2.7 (small objects: uniform grey
        maps, the pre-walk noise diluted as much as the object);
      + gamma 0.5, noise after the walk: b 0.45, (a) 57.4, t* 1.79, (d) 60.7, +3.3;
      + gamma 0.5, noise after the walk, smooth 0.7 (the defaults): b 0.55, (a) 54.9,
        t* 1.34, (d) 59.0, +4.1.
The dense CRF gains little on colour-following maps (it follows colour too); the gain
comes from the flat top (gamma) and the multi-scale blur, which it sharpens to edges.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import refine_recipes as recipes  # noqa: E402


def vit_b32(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
            grid: int = 7, spike_sigma: float = 0.7, part_spread: float = 0.3,
            part_floor: float = 0.15, spill: tuple[float, float] = (0.1, 0.5),
            noise: float = 0.03) -> np.ndarray:
    """Gradient relevance of a ViT-B/32 fed the whole image resized to 224x224.

    Models: CLIP preprocessing without the centre crop squashes the whole image to 224 px
    square, so a ViT-B/32 sees a ``grid`` x ``grid`` patch grid (32 px at 224, H/7 x W/7
    image px: about 45-91 px cells on coco-dev, non-square on non-square photos) and
    relevance resolves nothing finer.
      * Sparse peaks: relevance is coverage x a log-normal per-patch factor (i.i.d.,
        ``spike_sigma``: at this resolution neighbouring patches are already far apart)
        x a bump on a discriminative part (sigma ``part_spread`` x the object's extent
        over a floor ``part_floor``), so one or two patches carry most of it.
      * Context spill: each patch bordering the object (8-neighbourhood) gets U(``spill``)
        of the relevance level there; at 7x7 that is a wide band of background.
      * Small objects light whole cells: an object of a tenth of a cell still peaks at 1
        after normalisation, so its map is a blob two cells wide.
      * Weak positive noise (``noise`` x the peak).
    """
    height, width = image.shape[:2]
    # never under MIN_PATCH_PX image px a cell (a no-op on photos of 112 px and more)
    grid_hw = tuple(max(1, min(grid, side // recipes.MIN_PATCH_PX)) for side in (height, width))
    texture = recipes._texture(image, grid_hw)
    maps = []
    for mask in mask_stack:
        cover = recipes._area(mask, grid_hw)
        level = part_floor + (1 - part_floor) * recipes._part_bump(cover, texture, rng, part_spread)
        relevance = cover * level * np.exp(spike_sigma * rng.standard_normal(grid_hw))
        border = ndimage.binary_dilation(cover > 0, np.ones((3, 3), bool)) & (cover == 0)
        relevance = relevance + border * rng.uniform(*spill, grid_hw) * level * relevance.max()
        relevance = relevance + np.abs(rng.normal(0.0, noise, grid_hw)) * relevance.max()
        maps.append(recipes._upsample(recipes._unit(relevance), (height, width)))
    return recipes._stack(maps, height, width)


def _walk_matrix(image: np.ndarray, grid_hw: tuple[int, int], colour_sigma: float,
                 texture_weight: float, reach: float) -> np.ndarray:
    """Row-stochastic ``[n, n]`` transition matrix over the grid's n cells:
    exp(-|feature_i - feature_j|^2 / colour_sigma^2 - |cell_i - cell_j|^2 / reach^2), with
    feature = (mean RGB in [0, 1], texture_weight x texture), normalised per row."""
    features = np.concatenate([recipes._patch_colour(image, grid_hw),
                               texture_weight * recipes._texture(image, grid_hw)[..., None]], axis=2)
    features = features.reshape(-1, features.shape[2])
    cells = np.argwhere(np.ones(grid_hw, bool)).astype(np.float32)

    def dist2(x):
        return ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)

    affinity = np.exp(-dist2(features) / colour_sigma ** 2 - dist2(cells) / reach ** 2)
    return (affinity / affinity.sum(axis=1, keepdims=True)).astype(np.float32)


def affinity_walk(mask_stack: np.ndarray, image: np.ndarray, rng: np.random.Generator, *,
                  part_spread: tuple[float, float] = (0.2, 0.35), part_floor: float = 0.05,
                  colour_sigma: float = 0.2, texture_weight: float = 0.5, reach: float = 3.0,
                  steps: int = 4, smooth: float = 0.7, noise: float = 0.03,
                  gamma: float = 0.5) -> np.ndarray:
    """CLIP-ES-like CAMs refined by a random walk over a colour affinity.

    Models: a peaky, under-covering CAM on the image's own 16 px grid (coverage x a bump
    on a discriminative part, sigma U(``part_spread``) of the object's extent over a floor
    ``part_floor``) propagated by ``steps`` steps of a random walk (``cam <- T cam``)
    whose row-stochastic transition T is a Gaussian affinity between cells: mean colour
    and texture (``colour_sigma``; texture weighted ``texture_weight``) times a spatial
    window (``reach`` cells; AffinityNet-like local radius), as affinities from patch
    features or attention are mostly appearance-driven. The walk fills in the object
    where it looks like its discriminative part, but also lifts background cells whose
    colour resembles the object (a brown dog on a brown sofa, a white boat on white
    water) and under-fills parts of another colour (a person's clothes vs. face): errors
    follow colour, not distance.
      * Multi-scale averaging blurs the result by ``smooth`` cells (Gaussian).
      * Weak positive read-out noise (``noise`` x the peak).
      * Flat top: the normalised map is raised to ``gamma`` < 1, as propagated maps
        saturate over the object (and small objects, diluted by the walk, keep a high
        background relative to their peak).
    """
    height, width = image.shape[:2]
    grid_hw = recipes._grid_16(height, width)
    texture = recipes._texture(image, grid_hw)
    walk = _walk_matrix(image, grid_hw, colour_sigma, texture_weight, reach)
    maps = []
    for mask in mask_stack:
        cover = recipes._area(mask, grid_hw)
        part = recipes._part_bump(cover, texture, rng, rng.uniform(*part_spread))
        cam = (cover * (part_floor + (1 - part_floor) * part)).ravel()
        for _ in range(steps):
            cam = walk @ cam
        cam = ndimage.gaussian_filter(cam.reshape(grid_hw), smooth)
        cam = cam + np.abs(rng.normal(0.0, noise, grid_hw)) * cam.max()
        maps.append(recipes._upsample(recipes._unit(cam) ** gamma, (height, width)))
    return recipes._stack(maps, height, width)


HELD_OUT: dict[str, recipes.Recipe] = {
    "vit_b32": vit_b32,
    "affinity_walk": affinity_walk,
}

