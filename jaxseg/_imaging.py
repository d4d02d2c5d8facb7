"""Small image helpers shared by the refinement stage and its evaluation script."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resizes a uint8 ``[H, W, 3]`` image to ``size_hw`` with PIL's antialiased bilinear filter."""
    height, width = size_hw
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def resize_maps(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resizes float maps ``[C, h, w]`` to ``[C, H, W]`` (pixel-centre aligned).

    PIL's float mode keeps full precision and antialiases when shrinking, which is
    what both the downscaling of score maps and the upsampling of patch grids need.
    """
    height, width = size_hw
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == (height, width):
        return maps
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(channel))
                          .resize((width, height), Image.BILINEAR)) for channel in maps]
    if not resized:
        return np.zeros((0, height, width), np.float32)
    return np.stack(resized).astype(np.float32)


def sample_maps(maps: np.ndarray, pixels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``resize_maps(maps, size_hw)`` read at flat ``pixels`` only: ``[C, len(pixels)]``.

    When upsampling, PIL's bilinear filter is the plain pixel-centre interpolation with
    edge clamping, computed here for the given pixels alone: the full-size maps, which
    for a large image would take gigabytes, are never built. (Shrinking antialiases, so
    it goes through ``resize_maps``.)
    """
    maps = np.asarray(maps, np.float32)
    height, width = size_hw
    if height < maps.shape[1] or width < maps.shape[2]:
        return resize_maps(maps, size_hw).reshape(len(maps), -1)[:, pixels]
    rows, cols = np.divmod(np.asarray(pixels, np.int64), width)

    def axis(index, out_size, in_size):
        source = np.clip((index + 0.5) * (in_size / out_size) - 0.5, 0.0, in_size - 1)
        low = np.floor(source).astype(np.int64)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (source - low).astype(np.float32)

    y0, y1, fy = axis(rows, height, maps.shape[1])
    x0, x1, fx = axis(cols, width, maps.shape[2])
    top = maps[:, y0, x0] * (1 - fx) + maps[:, y0, x1] * fx
    bottom = maps[:, y1, x0] * (1 - fx) + maps[:, y1, x1] * fx
    return top * (1 - fy) + bottom * fy
