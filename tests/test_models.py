"""Flax CLIP against transformers' PyTorch CLIPModel (random weights, float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from checkpoints import VIT_B16_VISION, VIT_B_TEXT, make_checkpoint, torch_features
from jaxseg.clip import model as clip_model
from jaxseg.clip.vision import bicubic_matrix


def relative_error(ours, reference):
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return np.abs(ours - reference).max() / np.linalg.norm(reference, axis=-1).max()


def random_pixels(batch, size, seed=0):
    return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def test_image_text_and_logits_match_transformers(tiny_checkpoint, tiny_clip):
    _, model = tiny_checkpoint
    pixels = random_pixels(2, 32)
    ids = tiny_clip.tokenize(["a photo of a cat.", "a dog on a sofa!", "Ünïcode — and more"])
    image, text = tiny_clip.encode_image(pixels), tiny_clip.encode_text(ids)
    assert image.shape == (2, 24) and text.shape == (3, 24)
    assert relative_error(image, torch_features(model, pixels)) < 1e-4
    assert relative_error(text, torch_features(model, input_ids=ids)) < 1e-4
    import torch
    with torch.no_grad():
        reference = model(input_ids=torch.from_numpy(ids).long(),
                          pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    logits = clip_model.CLIPModel(tiny_clip.config).apply(
        {"params": tiny_clip.params}, image, text, method=clip_model.CLIPModel.logits)
    assert relative_error(logits, reference.logits_per_image.numpy()) < 1e-4


def test_text_pooling_with_real_eos_id(tmp_path):
    model = make_checkpoint(str(tmp_path), legacy_eos=False, seed=3)
    clip = jaxseg.load_clip(str(tmp_path))
    assert clip.config.text.eos_token_id != 2
    ids = clip.tokenize(["a photo of a bus.", "x"])
    assert relative_error(clip.encode_text(ids), torch_features(model, input_ids=ids)) < 1e-4


@pytest.mark.parametrize("size", [48, 24])
def test_other_image_sizes_interpolate_positions_like_transformers(tiny_checkpoint, tiny_clip,
                                                                    size):
    _, model = tiny_checkpoint
    pixels = random_pixels(1, size, seed=size)
    reference = torch_features(model, pixels, interpolate_pos_encoding=True)
    assert relative_error(tiny_clip.encode_image(pixels), reference) < 1e-4


def test_native_size_uses_checkpoint_positions_exactly():
    assert np.array_equal(bicubic_matrix(7, 7), np.eye(7, dtype=np.float32))


def test_jit_and_eager_agree(tiny_clip):
    pixels = random_pixels(2, 32, seed=5)
    eager = clip_model.encode_image(tiny_clip.params, pixels, tiny_clip.config)
    jitted = tiny_clip.encode_image(pixels)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_is_close(tiny_checkpoint):
    folder, _ = tiny_checkpoint
    f32 = jaxseg.load_clip(folder)
    bf16 = jaxseg.load_clip(folder, dtype=jnp.bfloat16)
    assert jax.tree_util.tree_leaves(bf16.params)[0].dtype == jnp.float32
    pixels = random_pixels(2, 32, seed=6)
    out = bf16.encode_image(pixels)
    assert out.dtype == jnp.bfloat16
    assert relative_error(out.astype(jnp.float32), f32.encode_image(pixels)) < 5e-2


def test_bad_pixel_shape_is_a_clear_error(tiny_clip):
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        tiny_clip.encode_image(np.zeros((1, 30, 30, 3), np.float32))


@pytest.mark.slow
def test_vit_b16_real_size_parity(tmp_path):
    model = make_checkpoint(str(tmp_path), vision=VIT_B16_VISION, text=VIT_B_TEXT,
                            projection_dim=512, seed=1)
    clip = jaxseg.load_clip(str(tmp_path))
    pixels = random_pixels(2, 224, seed=7)
    ids = clip.tokenize(["a photo of a cat.", "a clean origami dog."])
    assert relative_error(clip.encode_image(pixels), torch_features(model, pixels)) < 1e-4
    assert relative_error(clip.encode_text(ids), torch_features(model, input_ids=ids)) < 1e-4


def test_legacy_config_dicts_take_precedence():
    from jaxseg.clip.config import CLIPConfig
    config = CLIPConfig.from_dict({
        "projection_dim": 512,
        "vision_config": {"hidden_size": None, "patch_size": 32},
        "vision_config_dict": {"hidden_size": 768, "patch_size": 16},
        "text_config_dict": {"hidden_size": 512, "eos_token_id": 2}})
    assert (config.vision.hidden_size, config.vision.patch_size) == (768, 16)
    assert config.text.eos_token_id == 2 and config.vision.image_size == 224
