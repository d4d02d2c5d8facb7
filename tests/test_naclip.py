"""NACLIP maps: parity with an independent PyTorch implementation, padding, PAMR, settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg.maps.naclip import naclip_maps
from jaxseg.maps.pamr import pamr
from torch_naclip import naclip_maps as torch_naclip_maps
from torch_naclip import pamr as torch_pamr


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(224, 224), (336, 448)])
def test_real_size_cosine_maps_match_pytorch(attentive_clip, height, width):
    clip, model = attentive_clip
    rng = np.random.default_rng(height)
    pixels = rng.standard_normal((2, height, width, 3)).astype(np.float32)
    texts = rng.standard_normal((5, 512)).astype(np.float32) * 3.0  # any norm
    ours = np.asarray(jaxseg.relevance(clip, pixels, texts,
                                       config=jaxseg.RelevanceConfig(method="naclip")))
    reference = torch_naclip_maps(model, pixels, texts)  # resizes positions at 14 x 14 too
    assert ours.shape == reference.shape == (2, 5, height // 16, width // 16)
    assert np.abs(ours - reference).max() <= 1e-5
    assert reference.std() > 0.01


def test_padded_grids_equal_unpadded(tiny_clip):
    rng = np.random.default_rng(1)
    texts = rng.standard_normal((4, 24)).astype(np.float32)
    program = jax.jit(lambda pixels, hw: naclip_maps(
        tiny_clip.params, pixels, texts, config=tiny_clip.config, dtype=tiny_clip.dtype,
        grid_hw=hw)[0])
    for height, width in ((32, 48), (16, 40)):
        pixels = rng.standard_normal((1, height, width, 3)).astype(np.float32)
        plain = np.asarray(naclip_maps(tiny_clip.params, pixels, texts, config=tiny_clip.config,
                                       dtype=tiny_clip.dtype)[0])
        padded = np.zeros((1, 48, 48, 3), np.float32)
        padded[:, :height, :width] = pixels
        ours = np.asarray(program(padded, np.array([[height // 8, width // 8]], np.int32)))
        np.testing.assert_allclose(ours[:, :, :height // 8, :width // 8], plain, atol=1e-6)
    assert program._cache_size() == 1


def test_pamr_matches_the_reference_inside_a_padded_canvas():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 40, 52, 3))
    image[:, 10:30, 20:40] += 2.0
    maps = rng.standard_normal((1, 3, 40, 52))
    reference = torch_pamr(image, maps)[0]
    canvas_image = np.zeros((3, 64, 72), np.float32)
    canvas_image[:, :40, :52] = image[0].transpose(2, 0, 1)
    canvas_maps = np.zeros((3, 64, 72), np.float32)
    canvas_maps[:, :40, :52] = maps[0]
    ours = np.asarray(jax.jit(pamr)(jnp.asarray(canvas_image), jnp.asarray(canvas_maps),
                                    jnp.array([40, 52])))
    assert np.abs(ours[:, :40, :52] - reference).max() < 1e-5 * np.abs(reference).max() + 1e-5
    assert np.abs(ours[:, :40, :52] - maps[0]).max() > 0.1  # it did refine


@pytest.mark.parametrize("settings", [dict(start_layer=0), dict(softmax=True), dict(caa=False),
                                      dict(box_threshold=0.5)])
def test_settings_of_other_methods_are_rejected(settings):
    with pytest.raises(ValueError, match="means nothing for method 'naclip'"):
        jaxseg.RelevanceConfig(method="naclip", **settings)
