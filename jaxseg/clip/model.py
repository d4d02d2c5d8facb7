"""The whole CLIP model (Flax Linen) and pure functions of ``(params, inputs)``.

``CLIPModel`` mirrors transformers' ``CLIPModel``: ``vision_model``,
``text_model``, ``visual_projection``, ``text_projection`` and ``logit_scale``.
Its extra methods (``vision_embed``, ``vision_blocks``, ``image_head``) expose the
stages of the image tower for the relevance method.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.text import TextTransformer
from jaxseg.clip.vision import VisionTransformer

Dtype = Any
Params = Any

# transformers' CLIPConfig default: log(1 / 0.07).
LOGIT_SCALE_INIT = 2.6592


class CLIPModel(nn.Module):
    config: CLIPConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.vision_model = VisionTransformer(cfg.vision, self.dtype)
        self.text_model = TextTransformer(cfg.text, self.dtype)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(LOGIT_SCALE_INIT), ())

    def __call__(self, pixel_values: jax.Array, input_ids: jax.Array):
        """Returns ``(image_embeds [B, P], text_embeds [N, P], logits_per_image [B, N])``."""
        image, text = self.encode_image(pixel_values), self.encode_text(input_ids)
        return image, text, self.logits(image, text)

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        """``[B, S, S, 3]`` CLIP-normalised pixels -> projected image embeddings ``[B, P]``."""
        return self.visual_projection(self.vision_model(pixel_values))

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        """``[N, T]`` token ids -> projected text embeddings ``[N, P]``."""
        return self.text_projection(self.text_model(input_ids))

    def logits(self, image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        """``exp(logit_scale) * cos`` between ``[B, P]`` and ``[N, P]`` -> ``[B, N]`` (float32)."""
        image = unit_norm(image_embeds.astype(jnp.float32))
        text = unit_norm(text_embeds.astype(jnp.float32))
        return jnp.exp(self.logit_scale) * image @ text.T

    def vision_embed(self, pixel_values: jax.Array, grid_hw: Optional[jax.Array] = None,
                     positions: str = "bicubic") -> jax.Array:
        """Image tower up to the first block: ``[B, N, D]`` tokens; see
        ``VisionEmbeddings`` for padded grids (``grid_hw``) and ``positions``."""
        return self.vision_model.embed(pixel_values, grid_hw, positions)

    def vision_blocks(self, tokens: jax.Array, start: int, stop: int, cls_only_last: bool = False,
                      perturbations: Optional[Sequence[jax.Array]] = None,
                      key_mask: Optional[jax.Array] = None):
        """Blocks ``start .. stop - 1`` of the image tower; see ``VisionTransformer.blocks``."""
        return self.vision_model.blocks(tokens, start, stop, cls_only_last=cls_only_last,
                                        perturbations=perturbations, key_mask=key_mask)

    def image_head(self, tokens: jax.Array) -> jax.Array:
        """Final tokens ``[B, N or 1, D]`` -> projected image embedding ``[B, P]``."""
        return self.visual_projection(self.vision_model.pool(tokens))

    def project_image(self, features: jax.Array) -> jax.Array:
        """Post-LayerNorm image features ``[..., D]`` -> projected ``[..., P]``."""
        return self.visual_projection(features)

    def patch_embeds(self, tokens: jax.Array) -> jax.Array:
        """Final tokens ``[B, N, D]`` -> projected patch tokens ``[B, N - 1, P]`` (dense features)."""
        return self.visual_projection(self.vision_model.patch_features(tokens))


def unit_norm(x: jax.Array) -> jax.Array:
    """``x`` scaled to unit L2 norm along the last axis.

    The floor keeps all-zero rows (padding classes in relevance) finite; real
    embeddings are never that small.
    """
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def encode_image(params: Params, pixel_values: jax.Array, config: CLIPConfig,
                 dtype: Dtype = jnp.float32) -> jax.Array:
    """Pure image encoder: ``[B, S, S, 3]`` -> ``[B, P]`` (jit with ``config``/``dtype`` static)."""
    return CLIPModel(config, dtype).apply({"params": params}, pixel_values,
                                          method=CLIPModel.encode_image)


def encode_text(params: Params, input_ids: jax.Array, config: CLIPConfig,
                dtype: Dtype = jnp.float32) -> jax.Array:
    """Pure text encoder: ``[N, T]`` -> ``[N, P]`` (jit with ``config``/``dtype`` static)."""
    return CLIPModel(config, dtype).apply({"params": params}, input_ids,
                                          method=CLIPModel.encode_text)


def init_params(config: CLIPConfig, key: jax.Array) -> Params:
    """Random parameters (for tests and shape inference)."""
    size = config.vision.image_size
    return CLIPModel(config).init(key, jnp.zeros((1, size, size, 3)),
                                  jnp.zeros((1, config.text.max_position_embeddings), jnp.int32)
                                  )["params"]


def param_shapes(config: CLIPConfig) -> Params:
    """The parameter tree as ``jax.ShapeDtypeStruct`` leaves, without allocating it."""
    return jax.eval_shape(functools.partial(init_params, config), jax.random.key(0))
