"""Image arrays: conversion to RGB uint8, and resizing images and float maps.

This is the one place jaxseg converts and resizes images (PIL filters).

CLIP's own preprocessing (``jaxseg.clip.preprocess``) keeps its resize, as part of the
standalone CLIP port.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any common image array -> uint8 ``[H, W, 3]`` RGB.

    Accepts ``[H, W]`` grey, ``[H, W, 1|3|4]`` (alpha dropped), uint8, uint16
    (``v * 255 / 65535`` rounded, the rule of ``read_image``) or float in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4] and non-empty, got "
                         f"shape {image.shape}")
    if image.dtype == np.uint16:
        image = np.round(image * (255.0 / 65535.0)).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        # Clipping a 0-255 (or normalised) float image would turn it into a black-and-white one.
        low, high = float(image.min()), float(image.max())  # NaN propagates to both
        finite = np.isfinite(low) and np.isfinite(high)
        if not finite or low < -0.01 or high > 1.01:
            found = f"[{low:.3g}, {high:.3g}]" if finite else "NaN or inf"
            raise ValueError(f"a float image must hold values in [0, 1], got {found}; divide "
                             f"0-255 values by 255 or pass uint8")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"image dtype {image.dtype} is not supported; use uint8, uint16 or "
                         "float in [0, 1]")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def resize_image(image: np.ndarray, size_hw: tuple[int, int],
                 resample: int = Image.BILINEAR) -> np.ndarray:
    """Resizes a uint8 ``[H, W, 3]`` image to ``size_hw`` with a PIL filter (antialiased
    when shrinking); bilinear by default, e.g. ``PIL.Image.BICUBIC`` for CLIP's views."""
    height, width = size_hw
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


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
