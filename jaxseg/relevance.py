"""Chefer et al. (2021) relevance maps for CLIP: gradient x attention rollout, in JAX.

For an image x and class text embedding t_k:
  s_k   = exp(logit_scale) * cos(encode_image(x), t_k)       (optionally softmax over k)
  G_l   = d s_k / d A_l  for block l's attention probabilities A_l [H, N, N]
  Abar_l = mean over heads of max(G_l * A_l, 0)
  R = I; for l = start .. L-1: R = R + Abar_l @ R;  map = R[0, 1:] on the patch grid.

How it stays as cheap as one forward pass:
- ``G_l`` is the gradient with respect to a zero perturbation added to the
  probabilities (no hooks). Blocks before ``start`` run once, outside the VJP.
- Only the CLS token of the last block reaches the embedding, so that block is
  computed for the CLS query alone: its gradient is non-zero only in the CLS row,
  and its VJP is a handful of D-sized vector operations per class.
- One ``jax.vjp`` of the image tower, then ``vmap`` of its pullback over the K
  class cotangents (the cotangents come from the cheap embedding-level scores).
- Only the CLS row of R is needed: it is rolled out as a row vector,
  ``r <- r + r @ Abar_l`` from the last block down, O(N^2) per block, not O(N^3).
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.models.clip import CLIPModel, model_for, unit_norm
from jaxseg import tta as tta_lib
from jaxseg.models.config import CLIPConfig
from jaxseg.models.vision import check_pixel_values
from jaxseg.tta import TTAConfig

Params = Any


def resolve_start_layer(start_layer: int, num_layers: int) -> int:
    """Negative ``start_layer`` counts from the end (-1 = last block); 0 means all blocks."""
    start = start_layer + num_layers if start_layer < 0 else start_layer
    if not 0 <= start < num_layers:
        raise ValueError(f"start_layer={start_layer} is outside the {num_layers} vision blocks; "
                         f"use -{num_layers} .. {num_layers - 1}")
    return start


def class_scores(logit_scale: jax.Array, image_embeds: jax.Array, text_embeds: jax.Array,
                 class_mask: Optional[jax.Array] = None, softmax: bool = False) -> jax.Array:
    """``s [B, K]``: scaled cosine logits (or their softmax over valid classes).

    Args:
      logit_scale: CLIP's log temperature (scalar).
      image_embeds: ``[B, P]``.
      text_embeds: ``[K, P]`` shared by all images, or ``[B, K, P]`` per image.
      class_mask: optional ``[K]`` or ``[B, K]`` bool; False marks padding classes.
      softmax: softmax over classes (padding excluded) instead of raw logits.
    """
    image = unit_norm(image_embeds.astype(jnp.float32))
    text = unit_norm(text_embeds.astype(jnp.float32))
    text = jnp.broadcast_to(text, image.shape[:1] + text.shape[-2:])
    logits = jnp.exp(logit_scale) * jnp.einsum("bp,bkp->bk", image, text)
    if softmax:
        if class_mask is not None:
            logits = jnp.where(class_mask, logits, -jnp.inf)
        logits = jax.nn.softmax(logits, axis=-1)
    return logits


def relevance_maps(params: Params, pixel_values: jax.Array, text_embeds: jax.Array, *,
                   config: CLIPConfig, dtype=jnp.float32, start_layer: int = -1,
                   softmax: bool = False, class_mask: Optional[jax.Array] = None,
                   with_features: bool = False):
    """Pure relevance function (jit it with the keyword arguments static).

    Args:
      params: CLIP parameters.
      pixel_values: ``[B, S, S, 3]`` CLIP-normalised pixels (S a multiple of the patch).
      text_embeds: ``[K, P]`` (shared) or ``[B, K, P]`` (per image) class embeddings.
      config, dtype: the model configuration and compute dtype.
      start_layer: first block of the rollout; see ``resolve_start_layer``.
      softmax: differentiate softmax-over-classes scores instead of raw logits.
      class_mask: optional ``[K]``/``[B, K]`` validity of classes (for padded K).
      with_features: also return dense patch features (see Returns).

    Returns:
      ``maps [B, K, gh, gw]`` float32, unnormalised; with ``with_features``,
      ``(maps, features [B, gh, gw, P])`` where the features are the projected,
      post-LayerNorm patch tokens entering the last block (free by-products).
    """
    model = model_for(config, dtype)
    apply = functools.partial(model.apply, {"params": params})
    num_layers = config.vision.num_hidden_layers
    start = resolve_start_layer(start_layer, num_layers)

    tokens = apply(pixel_values, method=CLIPModel.vision_embed)
    tokens, _ = apply(tokens, 0, start, method=CLIPModel.vision_blocks)
    batch, num_tokens, _ = tokens.shape
    heads = config.vision.num_attention_heads
    zeros = [jnp.zeros((batch, heads, num_tokens if index < num_layers - 1 else 1, num_tokens))
             for index in range(start, num_layers)]

    def image_embeds(perturbations):
        out, probs = apply(tokens, start, num_layers, True, perturbations,
                           method=CLIPModel.vision_blocks)
        return apply(out, method=CLIPModel.image_head), probs

    embeds, pullback, probs = jax.vjp(image_embeds, zeros, has_aux=True)
    scores = functools.partial(class_scores, params["logit_scale"], text_embeds=text_embeds,
                               class_mask=class_mask, softmax=softmax)
    _, score_pullback = jax.vjp(scores, embeds)
    num_classes = text_embeds.shape[-2]
    one_hots = jnp.eye(num_classes, dtype=jnp.float32)[:, None, :].repeat(batch, axis=1)
    embed_cotangents = jax.vmap(lambda one_hot: score_pullback(one_hot)[0])(one_hots)  # [K, B, P]
    grads = jax.vmap(lambda cotangent: pullback(cotangent)[0])(embed_cotangents)

    # CLS row of R = (I + Abar_{L-1}) ... (I + Abar_start), rolled out right to left.
    row = jnp.zeros((num_classes, batch, num_tokens), jnp.float32).at[..., 0].set(1.0)
    for grad, prob in reversed(list(zip(grads, probs))):
        abar = jnp.maximum(grad * prob[None], 0.0).mean(axis=2)  # [K, B, Q, N]
        if abar.shape[2] == 1:  # CLS-only last block: only its row 0 is non-zero.
            row = row + row[..., :1] * abar[:, :, 0]
        else:
            row = row + jnp.einsum("kbi,kbij->kbj", row, abar)
    grid_h = pixel_values.shape[1] // config.vision.patch_size
    grid_w = pixel_values.shape[2] // config.vision.patch_size
    maps = row[..., 1:].reshape(num_classes, batch, grid_h, grid_w).transpose(1, 0, 2, 3)
    if not with_features:
        return maps
    features = apply(tokens, method=CLIPModel.patch_embeds).astype(jnp.float32)
    return maps, features.reshape(batch, grid_h, grid_w, -1)


@functools.lru_cache(maxsize=None)
def _compiled_relevance(config: CLIPConfig, dtype, start_layer: int, softmax: bool):
    return jax.jit(functools.partial(relevance_maps, config=config, dtype=dtype,
                                     start_layer=start_layer, softmax=softmax))


def relevance(clip, pixel_values, text_embeds, start_layer: int = -1,
              softmax: bool = False) -> jax.Array:
    """Relevance maps of each class for each image (jit-compiled, cached per shape).

    Args:
      clip: a ``jaxseg.CLIP`` from ``load_clip``.
      pixel_values: ``[B, S, S, 3]`` CLIP-normalised pixels.
      text_embeds: ``[K, P]`` class embeddings from ``clip.encode_text``.
      start_layer: first block of the rollout (-1: last block only; 0: all blocks).
      softmax: use softmax-over-classes scores instead of raw logits.

    Returns:
      ``[B, K, gh, gw]`` float32 maps, unnormalised. Differentiable: ``jax.grad``
      through ``relevance_maps`` works w.r.t. pixel values and params.
    """
    pixel_values = jnp.asarray(pixel_values, jnp.float32)
    text_embeds = jnp.asarray(text_embeds)
    check_pixel_values(pixel_values.shape, clip.config.vision.patch_size, "relevance")
    if text_embeds.ndim != 2 or text_embeds.shape[1] != clip.config.projection_dim:
        raise ValueError(f"relevance expects text_embeds [K, {clip.config.projection_dim}], "
                         f"got {tuple(text_embeds.shape)}")
    resolve_start_layer(start_layer, clip.config.vision.num_hidden_layers)
    return _compiled_relevance(clip.config, clip.dtype, start_layer, softmax)(
        clip.params, pixel_values, text_embeds)


def class_embeddings(clip, labels, templates) -> np.ndarray:
    """Prompt-ensembled class embeddings ``[K, P]`` (unit norm).

    Each label is put into every template (``"a photo of a {}."``), encoded, the
    unit embeddings are averaged and the mean is renormalised (CLIP's zero-shot
    recipe).
    """
    if not labels:
        return np.zeros((0, clip.config.projection_dim), np.float32)
    prompts = [template.format(label) for label in labels for template in templates]
    embeds = np.asarray(clip.encode_prompts(prompts), np.float32)
    embeds = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    mean = embeds.reshape(len(labels), len(templates), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def class_bucket(num_classes: int) -> int:
    """Padded class count: the next power of two, so K does not recompile per image."""
    return 1 << max(0, num_classes - 1).bit_length()


def tta_relevance_program(params: Params, canvases: jax.Array, content_hw: jax.Array,
                          text_embeds: jax.Array, class_mask: jax.Array, *, config: CLIPConfig,
                          dtype, tta: TTAConfig, start_layer: int, softmax: bool):
    """Pure TTA relevance for a batch of canvases: crop, relevance, warp back, in one program.

    Args:
      params: CLIP parameters.
      canvases: uint8 ``[I, C, C, 3]`` from ``tta.prepare_canvas``.
      content_hw: int32 ``[I, 2]`` content sizes on the canvases.
      text_embeds: ``[I, K, P]`` class embeddings per image (padding rows allowed).
      class_mask: bool ``[I, K]``, False for padding classes.
      config, dtype, tta, start_layer, softmax: static settings.

    Returns:
      ``(scores [I, K, C, C] in [0, 1], features [I, gh, gw, P])``; the features are
      those of the first variant (the whole image).
    """
    images, num_variants = canvases.shape[0], tta_lib.num_variants(tta)
    boxes, flips = jax.vmap(lambda hw: tta_lib.variant_boxes(hw, tta))(content_hw)
    pixels = jax.vmap(lambda canvas, box, flip: tta_lib.crop_variants(
        canvas, box, flip, tta.input_size))(canvases, boxes, flips)
    pixels = pixels.reshape((images * num_variants,) + pixels.shape[2:])
    repeat = functools.partial(jnp.repeat, repeats=num_variants, axis=0)
    maps, features = relevance_maps(params, pixels, repeat(text_embeds), config=config,
                                    dtype=dtype, start_layer=start_layer, softmax=softmax,
                                    class_mask=repeat(class_mask), with_features=True)
    maps = maps.reshape((images, num_variants) + maps.shape[1:])
    scores = jax.vmap(lambda m, b, f, hw: tta_lib.warp_back(m, b, f, hw, tta))(
        maps, boxes, flips, content_hw)
    features = features.reshape((images, num_variants) + features.shape[1:])[:, 0]
    return scores, features


@functools.lru_cache(maxsize=None)
def _compiled_tta(config: CLIPConfig, dtype, tta: TTAConfig, start_layer: int, softmax: bool):
    return jax.jit(functools.partial(tta_relevance_program, config=config, dtype=dtype, tta=tta,
                                     start_layer=start_layer, softmax=softmax))


def relevance_tta_batch(clip, images: Sequence[np.ndarray], text_embeds: Sequence[np.ndarray],
                        tta: TTAConfig = TTAConfig(), start_layer: int = -1,
                        softmax: bool = False, batch_size: Optional[int] = None,
                        mesh: Optional[Mesh] = None):
    """TTA relevance for several images (one device call, one ``device_get``).

    Images are placed on fixed canvases and classes padded to ``class_bucket``, and
    the batch is padded to ``batch_size`` (default: ``len(images)``), so a new image
    size or label count within a bucket never recompiles.

    Args:
      clip: a ``jaxseg.CLIP``.
      images: uint8 ``[H, W, 3]`` RGB images (sizes may differ).
      text_embeds: per image, ``[K_i, P]`` class embeddings (``class_embeddings``).
      tta, start_layer, softmax: as in ``relevance_tta``.
      batch_size: pad the batch to this many images (default ``len(images)``).
      mesh: optional device mesh with a ``"data"`` axis: the batch (a multiple of
        its size) is split over the devices, parameters are replicated.

    Returns:
      list of ``(scores [K_i, H, W] float32 in [0, 1], features [gh, gw, P] float32)``.
    """
    count = len(images)
    batch = batch_size or count
    if count == 0 or count > batch or len(text_embeds) != count:
        raise ValueError(f"relevance_tta_batch got {count} images, {len(text_embeds)} class "
                         f"embedding sets and batch_size {batch_size}")
    resolve_start_layer(start_layer, clip.config.vision.num_hidden_layers)
    prepared = [tta_lib.prepare_canvas(image, tta) for image in images]
    width = class_bucket(max(1, max(len(t) for t in text_embeds)))
    canvases = np.zeros((batch, tta.canvas_size, tta.canvas_size, 3), np.uint8)
    content_hw = np.ones((batch, 2), np.int32)
    padded = np.zeros((batch, width, clip.config.projection_dim), np.float32)
    class_mask = np.zeros((batch, width), bool)
    for i, ((canvas, hw), embeds) in enumerate(zip(prepared, text_embeds)):
        canvases[i], content_hw[i] = canvas, hw
        padded[i, :len(embeds)], class_mask[i, :len(embeds)] = embeds, True
    program = _compiled_tta(clip.config, clip.dtype, tta, start_layer, softmax)
    inputs = (canvases, content_hw, padded, class_mask)
    params = clip.params
    if mesh is not None:
        if batch % mesh.size:
            raise ValueError(f"batch_size {batch} must be a multiple of the {mesh.size} devices")
        inputs = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec("data")))
        params = replicated_params(clip, mesh)
    scores, features = jax.device_get(program(params, *inputs))
    return [(tta_lib.finish(scores[i, :len(text_embeds[i])], prepared[i][1], images[i].shape[:2]),
             features[i]) for i in range(count)]


@functools.lru_cache(maxsize=4)
def replicated_params(clip, mesh: Mesh):
    """The model's parameters copied to every device of ``mesh`` (once per model and mesh)."""
    return jax.device_put(clip.params, NamedSharding(mesh, PartitionSpec()))


def relevance_tta(clip, image: np.ndarray, text_embeds, tta: TTAConfig = TTAConfig(),
                  start_layer: int = -1, softmax: bool = False) -> np.ndarray:
    """Per-class TTA relevance of one image in image coordinates.

    Args:
      clip: a ``jaxseg.CLIP``.
      image: uint8 ``[H, W, 3]`` RGB image.
      text_embeds: ``[K, P]`` class embeddings (e.g. ``class_embeddings``).
      tta: variant set, canvas and input size.

    Returns:
      float32 ``[K, H, W]`` scores, each class normalised to ``[0, 1]``.
    """
    text_embeds = np.asarray(text_embeds, np.float32)
    if text_embeds.ndim != 2 or text_embeds.shape[1] != clip.config.projection_dim:
        raise ValueError(f"relevance_tta expects text_embeds [K, {clip.config.projection_dim}], "
                         f"got {text_embeds.shape}")
    if len(text_embeds) == 0:
        return np.zeros((0,) + np.asarray(image).shape[:2], np.float32)
    return relevance_tta_batch(clip, [image], [text_embeds], tta, start_layer, softmax)[0][0]


class _CallableModule(types.ModuleType):
    """``jaxseg.relevance`` names both this module and its main function.

    Python binds the submodule over the package attribute once the module is
    imported, so the module itself forwards calls to ``relevance``.
    """

    def __call__(self, *args, **kwargs):
        return relevance(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
