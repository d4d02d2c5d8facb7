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
