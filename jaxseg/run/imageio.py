"""Image files in and out: reading any common image as RGB, writing masks, sidecars and overlays.

Reading (:func:`read_image`) turns every file PIL opens into uint8 ``[H, W, 3]``
RGB in the orientation a viewer displays (EXIF orientation applied):

- grey (``L``), 1-bit (``1``), CMYK, YCbCr, ... are converted by PIL;
- alpha (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is
  composited over white, as image viewers show transparency on a light page;
- 16-bit (``I;16``, ``I;16B``, ``I`` with values up to 65535) is scaled by the
  16-bit range, ``v * 255 / 65535`` rounded, not by the image's own maximum, so
  a dark 16-bit image stays dark; 32-bit float (``F``) is read as [0, 1] (clipped);
- multi-frame files (GIF, TIFF) use their first frame.

Every reading problem raises :class:`ImageReadError`, whose message is one line
naming the file and the reason.

Writing is atomic (:func:`atomic_write`): a file is written under a temporary
name in the same folder (``.<name>.tmp-<pid>``) and renamed over the target, so a
crash leaves either the complete old file, the complete new file, or a temporary
file that :func:`remove_stale_temporaries` deletes on the next run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import struct
import warnings
from typing import Collection, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from jaxseg.imaging import as_rgb_uint8

# 8192 x 8192: an 8000 x 8000 photo fits; beyond that, decoding alone takes > 200 MB
# and refinement's full-size arrays several GB, so such files are refused with a clear reason.
MAX_PIXELS = 8192 * 8192
MAX_LABELS = 255  # a palette PNG stores indices 0..255 and 0 is background
_MASK_MODES = ("P", "L", "I", "I;16")  # PNG modes whose pixel values are class ids
TEMP_MARK = ".tmp-"
_OVERLAY_MIN_SIDE = 320  # smaller images are enlarged (nearest) so the legend stays readable
_OVERLAY_ALPHA = 0.5


class ImageReadError(Exception):
    """An input image could not be read; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path, self.reason = os.fspath(path), reason


@functools.lru_cache(maxsize=1)
def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map: uint8 ``[256, 3]`` (bits of the index interleaved into RGB).

    Built once (every written mask and overlay uses it) and returned read-only.
    """
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, red, green, blue = index, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = red, green, blue
    palette.setflags(write=False)
    return palette


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 ``[H, W, 3]`` (rules in the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        return as_rgb_uint8(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
    if mode == "F":  # a file's own range: clipped, as documented (arrays out of it are refused)
        return as_rgb_uint8(np.clip(np.nan_to_num(np.asarray(image, np.float32)), 0.0, 1.0))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image)
    return np.asarray(image.convert("RGB"))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as displayed: uint8 ``[H, W, 3]`` RGB.

    Args:
      path: any file PIL can decode (JPEG, PNG, TIFF, BMP, GIF, WebP, ...).

    Returns:
      The image with EXIF orientation applied (``[H, W]`` as a viewer shows it).

    Raises:
      ImageReadError: missing, empty, unreadable, not an image, corrupt or
        truncated, zero-size, or more than ``MAX_PIXELS`` pixels.
    """
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            # Size is checked below against our own limit, before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height == 0:
                    raise ImageReadError(path, f"zero-size image ({width} x {height} pixels)")
                if width * height > MAX_PIXELS:
                    raise ImageReadError(path, f"{width} x {height} pixels is above the limit of "
                                               f"{MAX_PIXELS / 1e6:.0f} megapixels; downscale it")
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except UnidentifiedImageError:
        declared = _declared_size(path)
        if declared is not None and 0 in declared:
            raise ImageReadError(path, f"zero-size image ({declared[0]} x {declared[1]} pixels "
                                       "declared in its header)") from None
        raise ImageReadError(path, "not an image (cannot identify image file)") from None
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"too large ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        detail = " ".join(str(error).split()) or type(error).__name__
        raise ImageReadError(path, f"corrupt or truncated image ({detail})") from None


def _declared_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG or GIF header, which PIL refuses to open when zero."""
    with open(path, "rb") as handle:
        head = handle.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return struct.unpack("<HH", head[6:10])
    return None


def read_mask(path: str | os.PathLike, what: str) -> np.ndarray:
    """Reads a palette or grayscale PNG of class ids as an integer ``[H, W]`` array."""
    try:
        with Image.open(path) as image:
            if image.mode not in _MASK_MODES:
                raise ValueError(f"{what} {path} is a {image.mode} image; expected a palette or "
                                 "grayscale PNG whose pixel values are class ids")
            return np.asarray(image)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error


def mask_image(mask: np.ndarray) -> Image.Image:
    """int ``[H, W]`` label indices -> palette (``P``) image with the VOC colours.

    Raises:
      ValueError: an index outside 0..255 (a palette PNG cannot store it).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or (mask.size and (mask.min() < 0 or mask.max() > MAX_LABELS)):
        raise ValueError(f"a palette mask needs [H, W] indices in 0..{MAX_LABELS}, got shape "
                         f"{mask.shape}" + (f" with values {mask.min()}..{mask.max()}"
                                            if mask.size else ""))
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    return image


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Opens a temporary file next to ``path``; on success renames it over ``path``.

    The temporary name is ``.<name>.tmp-<pid>`` in the same folder (same file
    system, so ``os.replace`` is atomic); it is synced before the rename and
    removed if writing fails, so ``path`` is never seen half-written.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def remove_stale_temporaries(folder: str | os.PathLike,
                             names: Optional[Collection[str]] = None) -> list[str]:
    """Deletes ``.*.tmp-*`` files left in ``folder`` by a killed run; returns their names.

    Args:
      folder: the output folder.
      names: only temporaries of these output file names (``<stem>.png``, ...) are
        deleted. Processes sharing one output folder each own a disjoint set of
        stems, so each cleans only its own and never a file another is writing.
        None: every temporary in the folder.
    """
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(".") and TEMP_MARK in entry.name and entry.is_file()):
                continue
            if names is not None and entry.name[1:entry.name.rindex(TEMP_MARK)] not in names:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed.append(entry.name)
    return sorted(removed)


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Writes int ``[H, W]`` label indices as a palette PNG (VOC colours), atomically."""
    image = mask_image(mask)
    with atomic_write(path) as handle:
        image.save(handle, format="PNG")


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    """Writes ``data`` as indented JSON with sorted keys and a final newline, atomically."""
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))


def label_font(size: int) -> ImageFont.ImageFont:
    """PIL's default font at ``size`` (a fixed bitmap font when Pillow lacks FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: fixed bitmap font.
        return ImageFont.load_default()


def overlay_image(image: np.ndarray, mask: np.ndarray, labels: Sequence[str],
                  fractions: Mapping[str, float] | None = None) -> Image.Image:
    """The image blended with the coloured mask, with a legend of label names below.

    Args:
      image: uint8 ``[H, W, 3]`` RGB.
      mask: int ``[H, W]``: 0 background, ``i + 1`` = ``labels[i]``.
      labels: label names in index order.
      fractions: optional label -> pixel fraction, shown as a percentage.

    Returns:
      An RGB image: the blend (enlarged by a whole factor, nearest neighbour,
      when the image's long side is below 320 px), then one legend row per few
      labels: a colour swatch and the name.
    """
    factor = max(1, math.ceil(_OVERLAY_MIN_SIDE / max(image.shape[:2])))
    if factor > 1:
        image = image.repeat(factor, axis=0).repeat(factor, axis=1)
        mask = np.asarray(mask).repeat(factor, axis=0).repeat(factor, axis=1)
    palette = voc_palette()
    colours = palette[np.asarray(mask, np.int64)].astype(np.float32)
    blended = np.where((np.asarray(mask) > 0)[..., None],
                       (1 - _OVERLAY_ALPHA) * image + _OVERLAY_ALPHA * colours, image)
    height, width = blended.shape[:2]
    font_size = int(np.clip(width / 40, 12, 64))
    font = label_font(font_size)
    entries = [(palette[i + 1], name + (f" ({100 * fractions.get(name, 0.0):.1f}%)"
                                              if fractions is not None else ""))
               for i, name in enumerate(labels)] or [(None, "no labels: all background")]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad, swatch = font_size // 2, font_size
    rows, row, used = [], [], pad
    for colour, text in entries:
        text_width = measure.textlength(text, font=font)
        entry_width = swatch + pad + text_width + 2 * pad
        if row and used + entry_width > width:
            rows.append(row)
            row, used = [], pad
        row.append((colour, text, text_width))
        used += entry_width
    rows.append(row)
    line = font_size + pad
    canvas = Image.new("RGB", (width, height + len(rows) * line + pad), (255, 255, 255))
    canvas.paste(Image.fromarray(np.round(blended).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row_index, row in enumerate(rows):
        top, left = height + pad + row_index * line, pad
        for colour, text, text_width in row:
            if colour is not None:
                draw.rectangle([left, top, left + swatch, top + swatch],
                               fill=tuple(colour.tolist()), outline=(0, 0, 0))
                left += swatch + pad
            draw.text((left, top), text, fill=(0, 0, 0), font=font)
            left += text_width + 2 * pad
    return canvas


def write_overlay(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray,
                  labels: Sequence[str], fractions: Mapping[str, float] | None = None) -> None:
    """Writes :func:`overlay_image` as a PNG, atomically."""
    overlay = overlay_image(image, mask, labels, fractions)
    with atomic_write(path) as handle:
        overlay.save(handle, format="PNG")


def label_fractions(mask: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """``{label: fraction of the mask's pixels}`` (rounded to 6 decimals)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=len(labels) + 1)
    total = max(1, int(np.asarray(mask).size))
    return {name: round(int(counts[i + 1]) / total, 6) for i, name in enumerate(labels)}

