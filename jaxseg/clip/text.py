"""CLIP's causal text tower (Flax Linen), ``text_model`` in transformers' CLIPModel."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.clip.config import TextConfig
from jaxseg.clip.layers import LayerNorm, encoder_layers

Dtype = Any


class TextEmbeddings(nn.Module):
    config: TextConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cfg = self.config
        tokens = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="token_embedding")(input_ids)
        positions = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                             name="position_embedding").embedding[: input_ids.shape[1]]
        return (tokens + positions).astype(self.dtype)


class TextTransformer(nn.Module):
    config: TextConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        self.embeddings = TextEmbeddings(self.config, self.dtype)
        self.layers = encoder_layers(self.config, self.dtype)
        self.final_layer_norm = LayerNorm(self.config.layer_norm_eps, self.dtype)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """``[N, T]`` int token ids -> pooled EOT features ``[N, D]`` (not projected).

        Padding after the EOT token needs no attention mask: the causal mask already
        keeps it from reaching the EOT position.
        """
        tokens = self.embeddings(input_ids)
        for layer in self.layers:
            tokens, _ = layer(tokens, causal=True)
        tokens = self.final_layer_norm(tokens)
        if self.config.eos_token_id == 2:
            # Legacy OpenAI configs: the EOT token has the largest id (transformers' rule).
            eot = jnp.argmax(input_ids, axis=-1)
        else:
            eot = jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)
        return jnp.take_along_axis(tokens, eot[:, None, None], axis=1)[:, 0]
