"""``<stem>_maps.png``: each label's score map as a heat overlay on the image, one titled
panel per label (the picture researchers in this field look at)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from jaxseg.run.imageio import atomic_write, label_font

_PANEL_LONG_SIDE = 360  # panels are scaled so the image's long side is this many pixels
_COLUMNS = 4
# A perceptually ordered blue -> cyan -> yellow -> red ramp (control points of "jet").
_RAMP = np.array([[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0],
                  [128, 0, 0]], np.float32)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """float ``[...]`` in [0, 1] -> uint8 ``[..., 3]`` colours of the blue-to-red ramp."""
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.minimum(np.floor(position).astype(int), len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    return np.round(_RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction).astype(np.uint8)


def heatmap_image(image: np.ndarray, scores: np.ndarray, labels: Sequence[str]) -> Image.Image:
    """Panels of ``[K, H, W]`` scores in [0, 1] blended over a uint8 ``[H, W, 3]`` image.

    Each panel shows the image dimmed to grey with the label's map as colour (half
    transparent), titled with the label and its highest score; an image without labels
    gives one panel saying so.
    """
    height, width = image.shape[:2]
    scale = _PANEL_LONG_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    base = np.asarray(Image.fromarray(image).convert("L").convert("RGB").resize(size),
                      np.float32) * 0.6
    font = label_font(16)
    title_height = 24
    panels = []
    for plane, name in zip(scores, labels):
        heat = np.asarray(Image.fromarray(np.asarray(plane, np.float32)).resize(size))
        blended = np.round(0.5 * base + 0.5 * heat_colours(heat)).astype(np.uint8)
        panels.append((f"{name} (max {float(np.max(plane)):.2f})", blended))
    if not panels:
        panels = [("no labels", base.astype(np.uint8))]
    columns = min(_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    sheet = Image.new("RGB", (columns * size[0], rows * (size[1] + title_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (title, pixels) in enumerate(panels):
        left, top = (index % columns) * size[0], (index // columns) * (size[1] + title_height)
        draw.text((left + 4, top + 4), title, fill=(0, 0, 0), font=font)
        sheet.paste(Image.fromarray(pixels), (left, top + title_height))
    return sheet


def write_heatmaps(path: str | os.PathLike, image: np.ndarray, scores: np.ndarray,
                   labels: Sequence[str]) -> None:
    """Writes :func:`heatmap_image` as a PNG, atomically."""
    sheet = heatmap_image(image, scores, labels)
    with atomic_write(path) as handle:
        sheet.save(handle, format="PNG")
