"""CLIP's ViT image tower (Flax Linen), split into stages the relevance method reuses.

``embed`` -> ``blocks`` -> ``pool`` is the whole tower; calling ``blocks`` on a
layer range lets relevance run the early blocks once without gradients and
differentiate only through the blocks it needs.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.clip.config import VisionConfig
from jaxseg.clip.layers import LayerNorm, encoder_layers

Dtype = Any


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of PyTorch's bicubic resize (a = -0.75, align_corners=False).

    Matches ``torch.nn.functional.interpolate(mode="bicubic")`` exactly, which is what
    transformers uses to interpolate CLIP's position embedding, so embeddings at
    non-native sizes agree with ``interpolate_pos_encoding=True``.
    """
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = (dst + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            weights[dst, min(max(base + offset, 0), in_size - 1)] += w
    return weights.astype(np.float32)


def check_pixel_values(shape: Sequence[int], patch_size: int, caller: str) -> None:
    """Raises a one-line ValueError unless ``shape`` is ``[B, S, S', 3]`` in whole patches."""
    if len(shape) != 4 or shape[-1] != 3 or shape[1] % patch_size or shape[2] % patch_size:
        raise ValueError(f"{caller} expects pixel values [B, S, S, 3] with S a multiple of the "
                         f"patch size {patch_size}, got shape {tuple(shape)}")


class VisionEmbeddings(nn.Module):
    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, S, S', 3]`` normalised pixels -> ``[B, 1 + gh * gw, D]`` tokens."""
        cfg = self.config
        patches = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                          strides=(cfg.patch_size, cfg.patch_size), padding="VALID",
                          use_bias=False, dtype=self.dtype, name="patch_embedding")(
            pixel_values.astype(self.dtype))
        batch, grid_h, grid_w, width = patches.shape
        class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (width,))
        positions = nn.Embed(cfg.grid_size ** 2 + 1, width, name="position_embedding").embedding
        positions = _resize_positions(positions, cfg.grid_size, grid_h, grid_w)
        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, 1, width))
        tokens = jnp.concatenate([cls, patches.reshape(batch, grid_h * grid_w, width)], axis=1)
        return tokens + positions.astype(self.dtype)


def _resize_positions(positions: jax.Array, native: int, grid_h: int, grid_w: int) -> jax.Array:
    """Bicubic interpolation of the patch position embeddings; the CLS position is kept."""
    if (grid_h, grid_w) == (native, native):
        return positions
    grid = positions[1:].reshape(native, native, -1)
    grid = jnp.einsum("yi,xj,ijd->yxd", bicubic_matrix(native, grid_h),
                      bicubic_matrix(native, grid_w), grid, precision="highest")
    return jnp.concatenate([positions[:1], grid.reshape(grid_h * grid_w, -1)], axis=0)


class VisionTransformer(nn.Module):
    """The image tower, ``vision_model`` in transformers' CLIPModel (projection excluded)."""

    config: VisionConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.embeddings = VisionEmbeddings(cfg, self.dtype)
        self.pre_layrnorm = LayerNorm(cfg.layer_norm_eps, self.dtype)  # sic: HF's key name
        self.layers = encoder_layers(cfg, self.dtype)
        self.post_layernorm = LayerNorm(cfg.layer_norm_eps, self.dtype)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, S, S, 3]`` -> pooled CLS features ``[B, D]`` (post-LayerNorm, not projected)."""
        tokens, _ = self.blocks(self.embed(pixel_values), 0, self.config.num_hidden_layers,
                                cls_only_last=True)
        return self.pool(tokens)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, S, S, 3]`` -> ``[B, N, D]`` tokens after the pre-LayerNorm."""
        return self.pre_layrnorm(self.embeddings(pixel_values))

    def blocks(self, tokens: jax.Array, start: int, stop: int, *, cls_only_last: bool = False,
               perturbations: Optional[Sequence[jax.Array]] = None
               ) -> tuple[jax.Array, list[jax.Array]]:
        """Runs blocks ``start .. stop - 1``.

        Args:
          tokens: ``[B, N, D]`` input of block ``start``.
          start, stop: the block range (static Python ints).
          cls_only_last: compute only the CLS token in block ``stop - 1`` (exact when
            nothing but the CLS output is used, as in the image embedding).
          perturbations: optional per-block additions to the attention probabilities,
            ``[B, H, N, N]`` (``[B, H, 1, N]`` for a CLS-only block); see ``Attention``.

        Returns:
          ``(tokens [B, N or 1, D], [probs [B, H, N or 1, N] per block])``.
        """
        all_probs = []
        for index in range(start, stop):
            cls_only = cls_only_last and index == stop - 1
            perturbation = None if perturbations is None else perturbations[index - start]
            tokens, probs = self.layers[index](tokens, query_first_only=cls_only,
                                               perturbation=perturbation)
            all_probs.append(probs)
        return tokens, all_probs

    def pool(self, tokens: jax.Array) -> jax.Array:
        """``[B, N, D]`` final tokens -> post-LayerNorm CLS ``[B, D]``."""
        return self.post_layernorm(tokens[:, 0])

    def patch_features(self, tokens: jax.Array) -> jax.Array:
        """``[B, N, D]`` tokens -> post-LayerNorm patch tokens ``[B, N - 1, D]`` (dense features)."""
        return self.post_layernorm(tokens[:, 1:])
