"""CLIP-ES (Lin et al., CVPR 2023, "CLIP is Also an Efficient Segmenter"): Grad-CAM of the
softmax over present and background classes, refined by class-aware attention affinity.

As the authors compute it (github linyq2117/CLIP-ES), for one view of an image:

1. Position embeddings resized bilinearly to the grid and rounded to float16 (CLS included);
   blocks 0 .. L-2 without gradient.
2. The last block from its ``layer_norm1`` output ``A``; the image embedding is the MEAN of
   the patch tokens after ``post_layernorm``, projected (not the CLS token).
3. ``s = softmax(exp(logit_scale) * cos(embedding, [present classes, background names]))``;
   for present class k, Grad-CAM at ``A``: ``w = mean over patches of ds_k/dA``,
   ``cam = n(n(relu(A w)))`` over the patch grid, ``n(c) = (c - min) / (1e-7 + max(c - min))``.
4. CAA: the head-averaged attention of the last 8 blocks (the last one from the gradient
   pass), CLS row and column dropped, averaged; three rounds of column then row
   normalisation; symmetrised; squared (matrix product). Each class's columns are masked by
   the union of the bounding boxes of the 8-connected regions of ``floor(255 cam) >
   int(threshold * max)`` (exclusive ends clamped to the last row / column, as the authors'
   OpenCV code does); ``map = n(T_masked @ cam)``.

All classes run in one program: one forward, one pullback ``vmap``-ed over the class
cotangents, and the affinity ``T @ T`` once per image, not per class. The authors' quirk for
grids of exactly 76 patches (their encoder takes the 77 tokens for text) is not reproduced.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.layers import MLP, Attention, LayerNorm
from jaxseg.clip.model import CLIPModel, unit_norm
from jaxseg.clip.vision import grid_key_mask

Params = Any
CAA_LAYERS = 8  # attention maps of the last 8 blocks make the affinity
SINKHORN_ROUNDS = 3
_EPSILON = 1e-7  # of the authors' min-max normalisation (scale_cam_image)


def min_max(values: jax.Array, valid: jax.Array) -> jax.Array:
    """``(c - min) / (1e-7 + max(c - min))`` over the ``valid`` entries of the last axis
    (0 elsewhere)."""
    low = jnp.min(jnp.where(valid, values, jnp.inf), axis=-1, keepdims=True)
    shifted = jnp.where(valid, values - low, 0.0)
    return shifted / (_EPSILON + jnp.max(shifted, axis=-1, keepdims=True))


def box_mask(cam: jax.Array, valid_hw: jax.Array, threshold: float) -> jax.Array:
    """CLIP-ES's box mask of a ``[gh, gw]`` map whose top-left ``valid_hw`` cells are real.

    ``u8 = floor(255 cam)``; cells with ``u8 > int(threshold * max u8)`` form 8-connected
    regions; the mask is the union of their bounding boxes, each box's exclusive end clamped
    to the last real row and column (so the last row and column are never in the mask).

    Returns:
      bool ``[gh, gw]``.
    """
    grid_h, grid_w = cam.shape
    rows, cols = jnp.meshgrid(jnp.arange(grid_h), jnp.arange(grid_w), indexing="ij")
    valid = (rows < valid_hw[0]) & (cols < valid_hw[1])
    u8 = jnp.where(valid, jnp.floor(cam * 255.0), 0).astype(jnp.int32)
    # int(threshold * m) in float64, as the authors compute it, for each possible maximum.
    thresholds = jnp.asarray([int(threshold * m) for m in range(256)], jnp.int32)
    on = valid & (u8 > thresholds[jnp.max(u8)])
    # 8-connected components by max-label propagation until nothing changes.
    start = jnp.where(on, jnp.arange(1, grid_h * grid_w + 1).reshape(grid_h, grid_w), 0)

    def spread(labels):
        padded = jnp.pad(labels, 1)
        neighbours = jnp.stack([padded[dy:dy + grid_h, dx:dx + grid_w]
                                for dy in range(3) for dx in range(3)])
        return jnp.where(on, neighbours.max(axis=0), 0)

    labels = jax.lax.while_loop(lambda pair: jnp.any(pair[0] != pair[1]),
                                lambda pair: (pair[1], spread(pair[1])),
                                (start, spread(start)))[1].ravel()
    segments = grid_h * grid_w + 1
    big = grid_h + grid_w
    top = jax.ops.segment_min(jnp.where(on.ravel(), rows.ravel(), big), labels, segments)
    left = jax.ops.segment_min(jnp.where(on.ravel(), cols.ravel(), big), labels, segments)
    bottom = jax.ops.segment_max(jnp.where(on.ravel(), rows.ravel(), -1), labels, segments)
    right = jax.ops.segment_max(jnp.where(on.ravel(), cols.ravel(), -1), labels, segments)
    end_row = jnp.minimum(bottom + 1, valid_hw[0] - 1)
    end_col = jnp.minimum(right + 1, valid_hw[1] - 1)
    real = (jnp.arange(segments) > 0) & (end_row > top) & (end_col > left)
    # Union of boxes: +1/-1 at the corners of each box, then 2-D cumulative sums.
    corners = jnp.zeros((grid_h + 2, grid_w + 2), jnp.int32)
    for row, col, sign in ((top, left, 1), (top, end_col, -1), (end_row, left, -1),
                           (end_row, end_col, 1)):
        corners = corners.at[jnp.clip(row, 0, grid_h + 1), jnp.clip(col, 0, grid_w + 1)].add(
            jnp.where(real, sign, 0))
    return jnp.cumsum(jnp.cumsum(corners, axis=0), axis=1)[:grid_h, :grid_w] > 0


def affinity(attentions: list[jax.Array], patch_valid: jax.Array) -> jax.Array:
    """CAA's ``T``: float32 ``[B, n, n]`` over the patches from the head-averaged attention
    maps ``[B, N, N]`` of the last blocks (CLS first; ``patch_valid`` bool ``[B, n]``)."""
    mean = jnp.mean(jnp.stack([a[:, 1:, 1:] for a in attentions]), axis=0)
    pair_valid = patch_valid[:, :, None] & patch_valid[:, None, :]
    transition = jnp.where(pair_valid, mean, 0.0)

    def safe_divide(x, total):
        return jnp.where(pair_valid, x / jnp.where(total > 0, total, 1.0), 0.0)

    for _ in range(SINKHORN_ROUNDS):
        transition = safe_divide(transition, transition.sum(axis=1, keepdims=True))
        transition = safe_divide(transition, transition.sum(axis=2, keepdims=True))
    transition = (transition + jnp.swapaxes(transition, 1, 2)) / 2
    return jnp.matmul(transition, transition, precision=jax.lax.Precision.HIGHEST)


def clip_es_maps(params: Params, pixel_values: jax.Array, text_embeds: jax.Array,
                 background_embeds: jax.Array, *, config: CLIPConfig, dtype, caa: bool = True,
                 box_threshold: float = 0.4, class_mask: Optional[jax.Array] = None,
                 grid_hw: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pure CLIP-ES maps of present classes (see the module docstring).

    Args:
      params: CLIP parameters.
      pixel_values: ``[B, H, W, 3]`` CLIP-normalised (H, W multiples of the patch).
      text_embeds: ``[K, P]`` or ``[B, K, P]`` present-class embeddings (any norm).
      background_embeds: ``[M, P]`` or ``[B, M, P]`` background-name embeddings (any norm).
      config, dtype: the CLIP configuration and compute dtype.
      caa: refine the Grad-CAM with the class-aware attention affinity.
      box_threshold: threshold of the box mask (CLIP-ES: 0.4 for VOC, 0.7 for COCO).
      class_mask: optional bool ``[K]`` / ``[B, K]``: False marks padding classes (left out
        of the softmax).
      grid_hw: optional int ``[B, 2]``: each image fills only the top-left ``grid_hw[b]``
        patches (see ``jaxseg.clip.vision.VisionEmbeddings``).

    Returns:
      ``(maps [B, K, gh, gw], features [B, gh, gw, P], probabilities [B, K])``: maps in
      ``[0, 1)`` (the CAA map, or with ``caa=False`` the twice-normalised Grad-CAM; 0 on
      padding), the projected patch tokens of the last block, and each present class's
      softmax probability.
    """
    vision = config.vision
    model = CLIPModel(config, dtype)
    apply = functools.partial(model.apply, {"params": params})
    batch = pixel_values.shape[0]
    grid_h, grid_w = (pixel_values.shape[1] // vision.patch_size,
                      pixel_values.shape[2] // vision.patch_size)
    if grid_hw is None:
        grid_hw = jnp.broadcast_to(jnp.asarray([grid_h, grid_w], jnp.int32), (batch, 2))
    key_mask = grid_key_mask(grid_h, grid_w, grid_hw)
    patch_valid = key_mask[:, 1:]
    last_index = vision.num_hidden_layers - 1
    last = params["vision_model"][f"layers_{last_index}"]
    layer_norm = functools.partial(LayerNorm(vision.layer_norm_eps, dtype).apply)

    tokens = apply(pixel_values, grid_hw, "bilinear_fp16", method=CLIPModel.vision_embed)
    tokens, probs = apply(tokens, 0, last_index, key_mask=key_mask, method=CLIPModel.vision_blocks)
    tokens = jax.lax.stop_gradient(tokens)
    activation = layer_norm({"params": last["layer_norm1"]}, tokens)

    def embed(normed):
        attended, attention = Attention(vision.num_attention_heads, dtype).apply(
            {"params": last["self_attn"]}, normed, key_mask=key_mask)
        hidden = tokens + attended
        hidden = hidden + MLP(vision.intermediate_size, vision.hidden_act, dtype).apply(
            {"params": last["mlp"]}, layer_norm({"params": last["layer_norm2"]}, hidden))
        patches = layer_norm({"params": params["vision_model"]["post_layernorm"]}, hidden[:, 1:])
        weights = patch_valid[..., None].astype(patches.dtype)
        pooled = jnp.sum(patches * weights, axis=1) / jnp.sum(weights, axis=1)
        features = apply(patches, method=CLIPModel.project_image)
        return apply(pooled, method=CLIPModel.project_image), (features, attention)

    image, pullback, (features, attention) = jax.vjp(embed, activation, has_aux=True)
    num_classes = text_embeds.shape[-2]
    names = jnp.concatenate([
        jnp.broadcast_to(text_embeds, (batch,) + text_embeds.shape[-2:]),
        jnp.broadcast_to(background_embeds, (batch,) + background_embeds.shape[-2:])], axis=1)
    valid_names = jnp.ones(names.shape[:2], bool)
    if class_mask is not None:
        valid_names = valid_names.at[:, :num_classes].set(
            jnp.broadcast_to(class_mask, (batch, num_classes)))

    def softmax_scores(image_embeds):
        logits = jnp.exp(params["logit_scale"]) * jnp.einsum(
            "bp,bkp->bk", unit_norm(image_embeds.astype(jnp.float32)),
            unit_norm(names.astype(jnp.float32)))
        return jax.nn.softmax(jnp.where(valid_names, logits, -jnp.inf), axis=-1)

    scores, score_pullback = jax.vjp(softmax_scores, image)
    one_hots = jnp.eye(names.shape[1], dtype=jnp.float32)[:num_classes, None].repeat(batch, 1)
    grads = jax.vmap(lambda one_hot: pullback(score_pullback(one_hot)[0])[0])(one_hots)

    # Grad-CAM at the last block's layer_norm1 output, patch tokens only: [K, B, n].
    patch_activation = activation[:, 1:].astype(jnp.float32)
    valid = patch_valid[None]
    weights = jnp.sum(jnp.where(valid[..., None], grads[:, :, 1:], 0.0), axis=2) / jnp.sum(
        valid, axis=2)[..., None]
    cams = jax.nn.relu(jnp.einsum("bnd,kbd->kbn", patch_activation, weights,
                                  precision=jax.lax.Precision.HIGHEST))
    cams = min_max(min_max(cams, valid), valid)
    if caa:
        head_mean = [p.mean(axis=1) for p in probs[-(CAA_LAYERS - 1):]] + [attention.mean(axis=1)]
        transition = affinity(head_mean, patch_valid)
        masks = jax.vmap(jax.vmap(lambda cam, hw: box_mask(cam.reshape(grid_h, grid_w), hw,
                                                           box_threshold),
                                  in_axes=(0, 0)), in_axes=(0, None))(cams, grid_hw)
        masked = transition[None] * masks.reshape(num_classes, batch, 1, -1)
        cams = min_max(jnp.einsum("kbij,kbj->kbi", masked, cams,
                                  precision=jax.lax.Precision.HIGHEST), valid)
    maps = cams.reshape(num_classes, batch, grid_h, grid_w).transpose(1, 0, 2, 3)
    features = features.astype(jnp.float32).reshape(batch, grid_h, grid_w, -1)
    return maps, features, scores[:, :num_classes]
