"""NACLIP (Hajimiri et al., WACV 2025, "Pay Attention to Your Neighbours"): dense class maps
from one forward pass, no gradient.

CLIP's image tower runs unchanged up to the input ``x`` of its last block, which becomes:

    h      = layer_norm1(x)
    logits = k(h) k(h)^T / sqrt(head_dim) + Omega          every head; q_proj is not used
    Omega  = exp(-|pos_i - pos_j|^2 / (2 sigma^2))          patches i, j on the grid; 0 on CLS
    y      = out_proj(softmax(logits) v(h))                 no residual, no MLP
    e      = visual_projection(post_layernorm(y))           every patch token
    map_k  = cos(e, t_k)

Position embeddings are resized with NACLIP's rule (bicubic, scale factor ``(g + 0.1) /
g0``; ``jaxseg.clip.vision.POSITION_RULES["bicubic_dino"]``) for every grid. The authors'
code skips the resize whenever the patch count equals the native one (e.g. 224 x 224, but
also 112 x 448, where the table is added in raster order of the wrong shape); jaxseg
resizes always, which moves the maps of such sizes by up to ~3e-3 on random weights.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.layers import Attention, LayerNorm
from jaxseg.clip.model import CLIPModel, unit_norm
from jaxseg.clip.vision import grid_key_mask

Params = Any


def neighbourhood_bias(grid_h: int, grid_w: int, sigma: float) -> jax.Array:
    """NACLIP's Omega: float32 ``[1 + gh * gw, 1 + gh * gw]`` over ``[CLS, patches]``,
    ``exp(-|pos_i - pos_j|^2 / (2 sigma^2))`` between patches (1 on the diagonal), 0 on the
    CLS row and column."""
    rows, cols = jnp.divmod(jnp.arange(grid_h * grid_w), grid_w)
    squared = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    patches = jnp.exp(-squared.astype(jnp.float32) / (2.0 * sigma ** 2))
    return jnp.pad(patches, ((1, 0), (1, 0)))


def patch_embeddings(params: Params, pixel_values: jax.Array, *, config: CLIPConfig, dtype,
                     sigma: float, grid_hw: Optional[jax.Array] = None) -> jax.Array:
    """NACLIP's projected patch embeddings (not normalised): float32 ``[B, gh, gw, P]``.

    Args:
      params: CLIP parameters.
      pixel_values: ``[B, H, W, 3]`` CLIP-normalised (H, W multiples of the patch).
      config, dtype: the CLIP configuration and compute dtype.
      sigma: standard deviation of the neighbourhood bias, in patches (NACLIP: 5).
      grid_hw: optional int ``[B, 2]``: each image fills only the top-left ``grid_hw[b]``
        patches, the rest is padding no real token attends to (see
        ``jaxseg.clip.vision.VisionEmbeddings``).
    """
    vision = config.vision
    model = CLIPModel(config, dtype)
    apply = functools.partial(model.apply, {"params": params})
    grid_h, grid_w = (pixel_values.shape[1] // vision.patch_size,
                      pixel_values.shape[2] // vision.patch_size)
    key_mask = None if grid_hw is None else grid_key_mask(grid_h, grid_w, grid_hw)
    tokens = apply(pixel_values, grid_hw, "bicubic_dino", method=CLIPModel.vision_embed)
    tokens, _ = apply(tokens, 0, vision.num_hidden_layers - 1, key_mask=key_mask,
                      method=CLIPModel.vision_blocks)
    # The last block's own sub-modules, applied NACLIP's way.
    last = params["vision_model"][f"layers_{vision.num_hidden_layers - 1}"]
    normed = LayerNorm(vision.layer_norm_eps, dtype).apply(
        {"params": last["layer_norm1"]}, tokens)
    attended, _ = Attention(vision.num_attention_heads, dtype).apply(
        {"params": last["self_attn"]}, normed, key_mask=key_mask, key_queries=True,
        logit_bias=neighbourhood_bias(grid_h, grid_w, sigma))
    embeds = apply(attended, method=CLIPModel.patch_embeds)  # post_layernorm, projection
    return embeds.astype(jnp.float32).reshape(pixel_values.shape[0], grid_h, grid_w, -1)


def cosine_maps(embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
    """``[B, gh, gw, P]`` patch embeddings and ``[K, P]`` / ``[B, K, P]`` text embeddings
    (any norm) -> float32 ``[B, K, gh, gw]`` cosine similarities."""
    text = unit_norm(text_embeds.astype(jnp.float32))
    text = jnp.broadcast_to(text, embeds.shape[:1] + text.shape[-2:])
    return jnp.einsum("bhwp,bkp->bkhw", unit_norm(embeds), text,
                      precision=jax.lax.Precision.HIGHEST)


def naclip_maps(params: Params, pixel_values: jax.Array, text_embeds: jax.Array, *,
                config: CLIPConfig, dtype, sigma: float = 5.0,
                grid_hw: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Pure NACLIP maps: ``(cosine maps [B, K, gh, gw], patch embeddings [B, gh, gw, P])``.

    The cost is one forward pass whatever K: the text side is one matrix product. See
    :func:`patch_embeddings` for the arguments.
    """
    embeds = patch_embeddings(params, pixel_values, config=config, dtype=dtype, sigma=sigma,
                              grid_hw=grid_hw)
    return cosine_maps(embeds, text_embeds), embeds
