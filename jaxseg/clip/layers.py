"""Transformer building blocks shared by CLIP's two towers (Flax Linen).

Submodule names follow transformers' CLIP state-dict keys (``self_attn.q_proj``,
``mlp.fc1``, ``layer_norm1``...) so that weight conversion is a renaming. Attention
returns its probabilities and takes an additive perturbation of them: the
relevance method differentiates with respect to that perturbation instead of
hooking into the module.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation, ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str):
    # transformers' "gelu" is the exact erf form, not the tanh approximation.
    return {"quick_gelu": quick_gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}[name]


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 whatever the compute dtype (for stability)."""

    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=self.epsilon, dtype=jnp.float32, name="norm")(
            x.astype(jnp.float32))
        return y.astype(self.dtype)


class Attention(nn.Module):
    """Multi-head self-attention that exposes its probabilities.

    Attributes:
      num_heads: number of heads H.
      dtype: compute dtype of the projections; the softmax runs in float32.
    """

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, causal: bool = False, query_first_only: bool = False,
                 perturbation: Optional[jax.Array] = None, key_mask: Optional[jax.Array] = None,
                 logit_bias: Optional[jax.Array] = None,
                 key_queries: bool = False) -> tuple[jax.Array, jax.Array]:
        """Attends over the tokens of ``x``.

        Args:
          x: ``[B, N, D]`` tokens.
          causal: mask attention to later tokens (text tower).
          query_first_only: compute only the first token's output (``[B, 1, D]``).
            Exact for CLIP's last vision block, where only the CLS token reaches the
            image embedding; it skips the other N - 1 query rows.
          perturbation: optional ``[B, H, Q, N]`` added to the attention probabilities
            before they weight the values (Q = 1 with ``query_first_only``, else N).
            Pass zeros and differentiate with respect to it to get ``d out / d A``.
          key_mask: optional bool ``[B, N]``: False tokens (padding) get no attention.
          logit_bias: optional ``[Q, N]`` or ``[B, Q, N]`` added to every head's logits
            before the softmax (NACLIP's neighbourhood bias).
          key_queries: queries from the key projection (NACLIP's key-key attention).

        Returns:
          ``(out [B, Q, D], probs [B, H, Q, N] float32)``.
        """
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads
        dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)  # noqa: E731

        def heads(y):
            return y.reshape(batch, -1, self.num_heads, head_dim)

        k = heads(dense("k_proj")(x))
        v = heads(dense("v_proj")(x))
        if key_queries:
            q = (k[:, :1] if query_first_only else k) * head_dim ** -0.5
        else:
            q = heads(dense("q_proj")(x[:, :1] if query_first_only else x)) * head_dim ** -0.5
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        if logit_bias is not None:
            bias = logit_bias.astype(jnp.float32)
            logits = logits + (bias[:, None] if bias.ndim == 3 else bias)
        if causal:
            mask = jnp.tril(jnp.ones((tokens, tokens), bool))
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1)
        weights = probs if perturbation is None else probs + perturbation
        context = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        out = dense("out_proj")(context.reshape(batch, -1, width))
        return out, probs


class MLP(nn.Module):
    intermediate_size: int
    hidden_act: str = "quick_gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(activation(self.hidden_act)(h))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    num_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, causal: bool = False, query_first_only: bool = False,
                 perturbation: Optional[jax.Array] = None,
                 key_mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
        """Returns ``(tokens [B, Q, D], attention probs [B, H, Q, N])``; see ``Attention``."""
        normed = LayerNorm(self.layer_norm_eps, self.dtype, name="layer_norm1")(x)
        attended, probs = Attention(self.num_heads, self.dtype, name="self_attn")(
            normed, causal=causal, query_first_only=query_first_only, perturbation=perturbation,
            key_mask=key_mask)
        x = (x[:, :1] if query_first_only else x) + attended
        normed = LayerNorm(self.layer_norm_eps, self.dtype, name="layer_norm2")(x)
        x = x + MLP(self.intermediate_size, self.hidden_act, self.dtype, name="mlp")(normed)
        return x, probs


def encoder_layers(config, dtype: Dtype) -> list[EncoderLayer]:
    """The ``config.num_hidden_layers`` blocks of a tower (assign to ``self.layers`` in setup,
    which names them ``layers_<i>``)."""
    return [EncoderLayer(config.num_attention_heads, config.intermediate_size, config.hidden_act,
                         config.layer_norm_eps, dtype)
            for _ in range(config.num_hidden_layers)]
