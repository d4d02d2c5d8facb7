"""CLIP-ES maps: parity with an independent PyTorch implementation, padding, box masks."""

import jax
import numpy as np
import pytest

import jaxseg
import jaxseg.maps.methods
from jaxseg.labels import presets
from jaxseg.maps.clip_es import box_mask, clip_es_maps
from torch_clip_es import box_mask as opencv_box_mask
from torch_clip_es import clip_es_maps as torch_clip_es_maps


def per_map_min_max(maps):
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / np.maximum(maps.max(axis=(-2, -1), keepdims=True) - low, 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(320, 448), (384, 512)])
def test_real_size_maps_match_pytorch(attentive_clip, height, width):
    clip, model = attentive_clip
    rng = np.random.default_rng(height)
    pixels = rng.standard_normal((1, height, width, 3)).astype(np.float32)
    texts = rng.standard_normal((3, 512)).astype(np.float32)
    background = rng.standard_normal((len(presets.CLIP_ES_VOC_BACKGROUND), 512)).astype(np.float32)
    reference = torch_clip_es_maps(model, pixels, texts, background)
    for caa, key, tolerance in ((True, "caa", 2e-4), (False, "gradcam", 1e-4)):
        config = jaxseg.RelevanceConfig(method="clip-es", caa=caa)
        ours = np.asarray(jaxseg.relevance(clip, pixels, texts, config=config,
                                           background_embeds=background))
        assert ours.shape == (1, 3, height // 16, width // 16)
        error = np.abs(per_map_min_max(ours) - per_map_min_max(reference[key])).max()
        assert error <= tolerance, (key, error)
        # Not a flat map: the affinity and the CAM vary across the image.
        assert reference[key].std(axis=(-2, -1)).min() > 0.05
    # The same image padded to a larger grid, its real grid given: the same CAA maps.
    padded = np.asarray(jaxseg.maps.methods.single_method_maps(
        "clip-es", clip.params, pad(pixels, 416, 528), texts, config=clip.config,
        dtype=clip.dtype, relevance=jaxseg.RelevanceConfig(method="clip-es"),
        background_embeds=background,
        grid_hw=np.array([[height // 16, width // 16]], np.int32))[0])
    assert np.abs(padded[:, :, :height // 16, :width // 16]
                  - per_map_min_max(reference["caa"])).max() <= 2e-4


@pytest.mark.parametrize("caa, tolerance", [(False, 2e-6), (True, 1e-3)])
def test_padded_grids_equal_unpadded_and_share_a_program(tiny_clip, caa, tolerance):
    # The tiny random model's attention is nearly uniform, so its CAA maps are nearly flat
    # and their final min-max magnifies float32 rounding (summation orders differ with
    # padding); the real-size test checks CAA padding tightly on local attention.
    rng = np.random.default_rng(1)
    program = jax.jit(lambda pixels, hw: clip_es_maps(
        tiny_clip.params, pixels, texts, background, config=tiny_clip.config,
        dtype=tiny_clip.dtype, caa=caa, grid_hw=hw)[0])
    texts = rng.standard_normal((3, 24)).astype(np.float32)
    background = rng.standard_normal((5, 24)).astype(np.float32)
    for height, width in ((32, 48), (40, 24)):
        pixels = rng.standard_normal((1, height, width, 3)).astype(np.float32)
        plain = np.asarray(clip_es_maps(tiny_clip.params, pixels, texts, background,
                                        config=tiny_clip.config, dtype=tiny_clip.dtype,
                                        caa=caa)[0])
        ours = np.asarray(program(pad(pixels, 48, 48), np.array([[height // 8, width // 8]])))
        np.testing.assert_allclose(ours[:, :, :height // 8, :width // 8], plain, atol=tolerance)
        assert not ours[:, :, height // 8:].any() and not ours[:, :, :, width // 8:].any()
    assert program._cache_size() == 1


def pad(pixels, height, width):
    padded = np.zeros((pixels.shape[0], height, width, 3), np.float32)
    padded[:, :pixels.shape[1], :pixels.shape[2]] = pixels
    return padded


@pytest.mark.parametrize("threshold", [0.4, 0.7])
def test_box_mask_equals_the_authors_opencv_rule(threshold):
    rng = np.random.default_rng(2)
    program = jax.jit(lambda cam, hw: box_mask(cam, hw, threshold))
    for trial in range(200):
        height, width = rng.integers(2, 24, 2)
        kind = trial % 3
        cam = rng.random((height, width)).astype(np.float32)
        if kind == 1:  # sparse peaks
            cam = cam ** 8
        elif kind == 2:  # one blob
            rows, cols = np.mgrid[:height, :width]
            cam = np.exp(-((rows - rng.integers(height)) ** 2 + (cols - rng.integers(width)) ** 2)
                         / rng.uniform(1, 20)).astype(np.float32)
        cam = (cam - cam.min()) / (1e-7 + (cam - cam.min()).max())
        padded = np.zeros((24, 24), np.float32)
        padded[:height, :width] = cam
        ours = np.asarray(program(padded, np.array([height, width])))
        np.testing.assert_array_equal(ours[:height, :width], opencv_box_mask(cam, threshold))
        assert not ours[height:].any() and not ours[:, width:].any()


def test_an_all_zero_cam_gives_an_empty_mask():
    assert not np.asarray(box_mask(np.zeros((6, 7), np.float32), np.array([6, 7]), 0.4)).any()
