"""Tests for jaxseg.run.imageio: reading odd image files, palette masks, atomic writes, overlays."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxseg.run import imageio


def png_header_only(path, width: int, height: int) -> None:
    """A PNG whose header declares ``width x height`` and that has no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def write_odd_images(folder) -> dict[str, tuple[int, int]]:
    """Writes one file per odd image kind; returns file name -> displayed (H, W)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    sizes = {}

    def save(name, image, **kwargs):
        image.save(os.path.join(folder, name), **kwargs)
        sizes[name] = (image.height, image.width)

    save("grey.png", Image.fromarray(rgb[..., 0]))
    save("grey_alpha.png", Image.fromarray(rgb[..., :2].copy(), mode="LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, rgb[..., :1]])))
    palette = Image.fromarray(rgb).quantize(16)
    save("palette.png", palette)
    save("palette_transparent.png", palette, transparency=3)
    save("deep16.png", Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    save("bilevel.png", Image.fromarray(rgb[..., 0] > 127))
    save("tiny16.png", Image.fromarray(rgb[:16, :16]))
    save("long8000.png", Image.fromarray(np.tile(rgb[:16, :40], (1, 200, 1))))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise (portrait)
    Image.fromarray(rgb).save(os.path.join(folder, "rotated.jpg"), exif=exif)
    sizes["rotated.jpg"] = (40, 24)
    return sizes


def test_odd_images_read_as_displayed_rgb(tmp_path):
    for name, size in write_odd_images(tmp_path).items():
        image = imageio.read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == size + (3,), name


def test_pixel_rules(tmp_path):
    Image.fromarray(np.array([[0, 65535, 257 * 100]], np.uint16)).save(tmp_path / "deep.png")
    assert imageio.read_image(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 255, 100]
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    # Transparent pixels are shown over white; opaque ones keep their colour.
    assert imageio.read_image(tmp_path / "alpha.png").tolist() == [[[255, 255, 255], [10, 20, 30]]]
    exif = Image.Exif()
    exif[0x0112] = 6
    marked = np.zeros((20, 40, 3), np.uint8)
    marked[:, :20] = 255  # left half white
    Image.fromarray(marked).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    shown = imageio.read_image(tmp_path / "rot.jpg")
    # Rotated clockwise, the stored left half becomes the top half.
    assert shown.shape == (40, 20, 3) and shown[:15].mean() > 200 and shown[25:].mean() < 50


@pytest.mark.parametrize("kind, reason", [
    ("text", "not an image"), ("empty", "empty file"), ("truncated", "corrupt or truncated"),
    ("zero", "zero-size"), ("huge", "megapixels"), ("missing", "file not found"),
    ("folder", "is a folder"),
])
def test_read_errors_are_one_line_naming_the_file(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.jpg"
    if kind == "text":
        path.write_text("this is not a picture\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
            tmp_path / "full.jpg")
        path.write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    elif kind == "zero":
        png_header_only(path, 0, 5)
    elif kind == "huge":
        png_header_only(path, 9000, 9000)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(imageio.ImageReadError) as caught:
        imageio.read_image(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_voc_palette_and_mask_round_trip(tmp_path):
    palette = imageio.voc_palette()
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[255].tolist() == [224, 224, 192]  # VOC's void colour
    mask = np.arange(12, dtype=np.int32).reshape(3, 4)
    imageio.write_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as written:
        assert written.mode == "P" and np.array_equal(np.asarray(written), mask)
        assert written.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
    with pytest.raises(ValueError, match="0..255"):
        imageio.mask_image(np.full((2, 2), 256))


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    imageio.write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    with pytest.raises(RuntimeError):
        with imageio.atomic_write(target) as handle:
            handle.write(b"half")
            raise RuntimeError("killed while writing")
    assert target.read_text().startswith('{\n "a"')  # old content kept
    assert sorted(os.listdir(tmp_path)) == ["out.json"]  # temporary removed


def test_remove_stale_temporaries_only_touches_temporaries(tmp_path):
    for name in (".a.png.tmp-123", ".b.json.tmp-9", "a.png", ".hidden", "x.tmp-1"):
        (tmp_path / name).write_text("")
    assert imageio.remove_stale_temporaries(tmp_path) == [".a.png.tmp-123", ".b.json.tmp-9"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "a.png", "x.tmp-1"]


def test_overlay_blends_and_adds_a_legend():
    image = np.full((400, 600, 3), 200, np.uint8)
    mask = np.zeros((400, 600), np.int32)
    mask[:, 300:] = 1
    overlay = np.asarray(imageio.overlay_image(image, mask, ["cat"], {"cat": 0.5}))
    assert overlay.shape[1] == 600 and overlay.shape[0] > 400  # legend strip below
    assert overlay[0, 0].tolist() == [200, 200, 200]  # background untouched
    assert overlay[0, 599].tolist() == [164, 100, 100]  # half image, half VOC red (128, 0, 0)
    legend = overlay[400:]
    assert (np.abs(legend.astype(int) - [128, 0, 0]).sum(-1) == 0).any()  # the swatch
    small = imageio.overlay_image(image[:16, :16], mask[:16, :16], [])
    assert small.width >= 320  # tiny images are enlarged so the legend is readable


def test_label_fractions():
    mask = np.array([[0, 1], [2, 2]])
    assert imageio.label_fractions(mask, ["a", "b", "c"]) == {"a": 0.25, "b": 0.5, "c": 0.0}


def test_remove_stale_temporaries_of_owned_names_only(tmp_path):
    for name in (".a.png.tmp-1", ".a.json.tmp-2", ".b.png.tmp-3"):
        (tmp_path / name).write_bytes(b"x")
    assert imageio.remove_stale_temporaries(tmp_path, {"a.png", "a.json"}) == [
        ".a.json.tmp-2", ".a.png.tmp-1"]
    assert (tmp_path / ".b.png.tmp-3").exists()
