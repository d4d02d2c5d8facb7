"""Chefer relevance maps: parity with an independent PyTorch implementation, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxseg
from jaxseg.maps.chefer import relevance_maps
from torch_reference import torch_relevance


def random_inputs(batch=2, classes=3, size=32, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(batch, size, size, 3).astype(np.float32),
            rng.randn(classes, 24).astype(np.float32))


@pytest.mark.parametrize("start_layer", [-1, 0, 1])
@pytest.mark.parametrize("softmax", [False, True])
def test_matches_pytorch_reference(tiny_checkpoint, tiny_clip, start_layer, softmax):
    _, model = tiny_checkpoint
    pixels, texts = random_inputs(batch=2, classes=4)
    ours = np.asarray(jaxseg.relevance(tiny_clip, pixels, texts, start_layer, softmax))
    reference = torch_relevance(model, pixels, texts, start_layer, softmax)
    assert ours.shape == (2, 4, 4, 4)
    assert np.abs(reference).max() > 0
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


def test_jit_and_eager_agree(tiny_clip):
    pixels, texts = random_inputs(seed=1)
    eager = relevance_maps(tiny_clip.params, pixels, texts,
                                         config=tiny_clip.config, start_layer=0)
    jitted = jaxseg.relevance(tiny_clip, pixels, texts, start_layer=0)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-7)


def test_per_image_text_embeddings_match_shared(tiny_clip):
    pixels, texts = random_inputs(seed=2)
    shared = relevance_maps(tiny_clip.params, pixels, texts,
                                          config=tiny_clip.config)
    per_image = relevance_maps(tiny_clip.params, pixels,
                                             np.stack([texts, texts]), config=tiny_clip.config)
    np.testing.assert_allclose(shared, per_image, rtol=1e-6, atol=1e-8)


def test_padding_classes_do_not_change_real_maps(tiny_clip):
    pixels, texts = random_inputs(seed=3)
    padded = np.concatenate([texts, np.zeros((1, 24), np.float32)])
    mask = np.array([True, True, True, False])
    for softmax in (False, True):
        plain = relevance_maps(tiny_clip.params, pixels, texts,
                                             config=tiny_clip.config, softmax=softmax)
        with_pad = relevance_maps(tiny_clip.params, pixels, padded,
                                                config=tiny_clip.config, softmax=softmax,
                                                class_mask=mask)
        np.testing.assert_allclose(with_pad[:, :3], plain, rtol=1e-5, atol=1e-8)


def test_gradient_matches_finite_differences(tiny_clip):
    pixels, texts = random_inputs(batch=1, seed=4)
    weights = np.random.RandomState(5).rand(1, 3, 4, 4).astype(np.float32)

    def objective(pixel_values, params):
        maps = relevance_maps(params, pixel_values, texts,
                                            config=tiny_clip.config, start_layer=0)
        return jnp.sum(maps * weights)

    grad_pixels, grad_params = jax.jit(jax.grad(objective, argnums=(0, 1)))(
        pixels, tiny_clip.params)
    direction = np.random.RandomState(6).randn(*pixels.shape).astype(np.float32)
    eps = 1e-2
    value = jax.jit(objective)
    numeric = (value(pixels + eps * direction, tiny_clip.params)
               - value(pixels - eps * direction, tiny_clip.params)) / (2 * eps)
    analytic = float(jnp.sum(grad_pixels * direction))
    assert abs(analytic) > 1e-6
    assert abs(numeric - analytic) <= 2e-2 * abs(analytic)
    # Second order through the attention gradient: w.r.t. a weight of the last block.
    kernel = tiny_clip.params["vision_model"]["layers_2"]["mlp"]["fc1"]["kernel"]
    bump = np.random.RandomState(7).randn(*kernel.shape).astype(np.float32)

    def with_kernel(k):
        params = jax.tree_util.tree_map(lambda x: x, tiny_clip.params)
        params["vision_model"]["layers_2"]["mlp"]["fc1"]["kernel"] = k
        return value(pixels, params)

    numeric = (with_kernel(kernel + eps * bump) - with_kernel(kernel - eps * bump)) / (2 * eps)
    analytic = float(jnp.sum(grad_params["vision_model"]["layers_2"]["mlp"]["fc1"]["kernel"]
                             * bump))
    assert abs(analytic) > 1e-6
    assert abs(numeric - analytic) <= 2e-2 * abs(analytic)


def test_bad_inputs_are_clear_errors(tiny_clip):
    pixels, texts = random_inputs()
    with pytest.raises(ValueError, match="start_layer=5"):
        jaxseg.relevance(tiny_clip, pixels, texts, start_layer=5)
    with pytest.raises(ValueError, match="text_embeds"):
        jaxseg.relevance(tiny_clip, pixels, texts[:, :5])


def test_classes_go_through_in_chunks_under_a_small_gradient_budget(tiny_clip):
    from jaxseg.maps.chefer import classes_per_pass
    pixels, texts = random_inputs(batch=2, classes=5, seed=12)
    # Two views, 3 heads, 17 tokens, blocks 0 and 1 full (17 rows) and the CLS-only last one.
    per_class_mb = 4 * 2 * 3 * 17 * (17 + 17 + 1) / 2 ** 20
    assert classes_per_pass(5, 2, 3, 17, [17, 17, 1], 2.5 * per_class_mb) == 2
    assert classes_per_pass(5, 2, 3, 17, [17, 17, 1], 0.0) == 1
    whole = relevance_maps(tiny_clip.params, pixels, texts, config=tiny_clip.config, start_layer=0)
    chunked = jax.jit(lambda p, x, t: relevance_maps(
        p, x, t, config=tiny_clip.config, start_layer=0,
        gradient_budget_mb=2.5 * per_class_mb))(tiny_clip.params, pixels, texts)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-8)
