"""Image preprocessing that mirrors CLIP's own (OpenAI / Hugging Face CLIPImageProcessor)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# CLIP's per-channel statistics (RGB), from the OpenAI release; every CLIP checkpoint uses them.
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def normalize(pixels01):
    """Maps RGB values in [0, 1] (numpy or jax array, [..., 3]) to CLIP's normalised input."""
    return (pixels01 - CLIP_MEAN) / CLIP_STD


def preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    """CLIP preprocessing of one RGB image.

    Resizes the shorter side to ``size`` with bicubic resampling (PIL, as
    CLIPImageProcessor does), centre-crops ``size x size``, scales to [0, 1] and
    normalises with CLIP's mean and std.

    Args:
      image: uint8 ``[H, W, 3]`` RGB image.
      size: output side in pixels.

    Returns:
      float32 ``[size, size, 3]`` pixel values (NHWC without the batch axis).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"preprocess expects a uint8 [H, W, 3] RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = resized[top:top + size, left:left + size].astype(np.float32) / 255.0
    return normalize(crop).astype(np.float32)
