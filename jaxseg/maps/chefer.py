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
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.model import CLIPModel, unit_norm
from jaxseg.clip.vision import grid_key_mask

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


def classes_per_pass(num_classes: int, batch: int, heads: int, num_tokens: int,
                     rows_per_block: list[int], budget_mb: float) -> int:
    """How many classes' attention gradients fit in ``budget_mb`` at once (at least one):
    each class holds a float32 gradient of every rolled-out block, ``[B, H, Q, N]``."""
    per_class = 4 * batch * heads * num_tokens * sum(rows_per_block)
    return int(min(num_classes, max(1, budget_mb * 2 ** 20 // per_class)))


def relevance_maps(params: Params, pixel_values: jax.Array, text_embeds: jax.Array, *,
                   config: CLIPConfig, dtype=jnp.float32, start_layer: int = -1,
                   softmax: bool = False, class_mask: Optional[jax.Array] = None,
                   with_features: bool = False, grid_hw: Optional[jax.Array] = None,
                   gradient_budget_mb: float = 1024.0):
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
      grid_hw: optional int ``[B, 2]``: each image fills only the top-left ``grid_hw[b]``
        patches, the rest is padding no token attends to.
      gradient_budget_mb: memory for the classes' attention gradients: with an early
        ``start_layer`` they are ``[K, B, H, N, N]`` per block, so classes then go through
        the pullback and the rollout a chunk at a time (``jax.lax.map``), as many per chunk
        as fit (:func:`classes_per_pass`); the maps do not change beyond float rounding.

    Returns:
      ``maps [B, K, gh, gw]`` float32, unnormalised; with ``with_features``,
      ``(maps, features [B, gh, gw, P])`` where the features are the projected,
      post-LayerNorm patch tokens entering the last block (free by-products).
    """
    model = CLIPModel(config, dtype)
    apply = functools.partial(model.apply, {"params": params})
    num_layers = config.vision.num_hidden_layers
    start = resolve_start_layer(start_layer, num_layers)

    key_mask = None
    if grid_hw is not None:
        key_mask = grid_key_mask(pixel_values.shape[1] // config.vision.patch_size,
                                 pixel_values.shape[2] // config.vision.patch_size, grid_hw)
    tokens = apply(pixel_values, grid_hw, method=CLIPModel.vision_embed)
    tokens, _ = apply(tokens, 0, start, key_mask=key_mask, method=CLIPModel.vision_blocks)
    batch, num_tokens, _ = tokens.shape
    heads = config.vision.num_attention_heads
    zeros = [jnp.zeros((batch, heads, num_tokens if index < num_layers - 1 else 1, num_tokens))
             for index in range(start, num_layers)]

    def image_embeds(perturbations):
        out, probs = apply(tokens, start, num_layers, True, perturbations, key_mask,
                           method=CLIPModel.vision_blocks)
        return apply(out, method=CLIPModel.image_head), probs

    embeds, pullback, probs = jax.vjp(image_embeds, zeros, has_aux=True)
    scores = functools.partial(class_scores, params["logit_scale"], text_embeds=text_embeds,
                               class_mask=class_mask, softmax=softmax)
    _, score_pullback = jax.vjp(scores, embeds)
    num_classes = text_embeds.shape[-2]
    one_hots = jnp.eye(num_classes, dtype=jnp.float32)[:, None, :].repeat(batch, axis=1)
    embed_cotangents = jax.vmap(lambda one_hot: score_pullback(one_hot)[0])(one_hots)  # [K, B, P]

    def rollout(cotangents):  # [C, B, P] -> CLS rows [C, B, N]
        grads = jax.vmap(lambda cotangent: pullback(cotangent)[0])(cotangents)
        # CLS row of R = (I + Abar_{L-1}) ... (I + Abar_start), rolled out right to left.
        row = jnp.zeros(cotangents.shape[:2] + (num_tokens,), jnp.float32).at[..., 0].set(1.0)
        for grad, prob in reversed(list(zip(grads, probs))):
            abar = jnp.maximum(grad * prob[None], 0.0).mean(axis=2)  # [C, B, Q, N]
            if abar.shape[2] == 1:  # CLS-only last block: only its row 0 is non-zero.
                row = row + row[..., :1] * abar[:, :, 0]
            else:
                row = row + jnp.einsum("kbi,kbij->kbj", row, abar)
        return row

    chunk = classes_per_pass(num_classes, batch, heads, num_tokens,
                             [z.shape[2] for z in zeros], gradient_budget_mb)
    if chunk == num_classes:
        row = rollout(embed_cotangents)
    else:
        chunks = -(-num_classes // chunk)
        padded = jnp.pad(embed_cotangents, ((0, chunks * chunk - num_classes), (0, 0), (0, 0)))
        row = jax.lax.map(rollout, padded.reshape((chunks, chunk) + padded.shape[1:]))
        row = row.reshape((chunks * chunk,) + row.shape[2:])[:num_classes]
    grid_h = pixel_values.shape[1] // config.vision.patch_size
    grid_w = pixel_values.shape[2] // config.vision.patch_size
    maps = row[..., 1:].reshape(num_classes, batch, grid_h, grid_w).transpose(1, 0, 2, 3)
    if not with_features:
        return maps
    features = apply(tokens, method=CLIPModel.patch_embeds).astype(jnp.float32)
    return maps, features.reshape(batch, grid_h, grid_w, -1)
