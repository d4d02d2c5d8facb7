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


_CUBIC_A = -0.75  # PyTorch's bicubic (Keys) coefficient


def _cubic_taps(t):
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t``
    (numpy or jax arrays): ``[..., 4]``."""
    a = _CUBIC_A
    xp = jnp if isinstance(t, jax.Array) else np

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return xp.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, offset: float = 0.0) -> np.ndarray:
    """``[out, in]`` weights of PyTorch's bicubic resize (a = -0.75, align_corners=False).

    The source coordinate of output ``i`` is ``(i + 0.5) * in / (out + offset) - 0.5``,
    border taps clamped. ``offset`` 0 is ``torch.nn.functional.interpolate(size=out)``,
    what transformers uses to interpolate CLIP's position embedding (so embeddings at
    non-native sizes agree with ``interpolate_pos_encoding=True``); NACLIP (after DINO)
    passes ``scale_factor=(out + 0.1) / in``, i.e. ``offset`` 0.1.
    """
    source = (np.arange(out_size) + 0.5) * (in_size / (out_size + offset)) - 0.5
    base = np.floor(source).astype(np.int64)
    weights = np.zeros((out_size, in_size), np.float64)
    for tap, w in zip(range(-1, 3), np.moveaxis(_cubic_taps(source - base), -1, 0)):
        np.add.at(weights, (np.arange(out_size), np.clip(base + tap, 0, in_size - 1)), w)
    return weights.astype(np.float32)


def traced_bicubic_matrix(in_size: int, out_size: int, valid: jax.Array,
                          offset: float = 0.0) -> jax.Array:
    """:func:`bicubic_matrix` for a traced output length ``valid`` <= ``out_size``: the
    first ``valid`` rows resize to ``valid`` samples, the other rows are zero. float32."""
    scale = in_size / (valid.astype(jnp.float32) + offset)
    source = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5
    base = jnp.floor(source)
    taps = jnp.clip(base[:, None] + jnp.arange(-1, 3), 0, in_size - 1).astype(jnp.int32)
    weights = _cubic_taps(source - base)  # [out, 4]
    matrix = jnp.einsum("ot,oti->oi", weights, jax.nn.one_hot(taps, in_size, dtype=jnp.float32))
    return jnp.where(jnp.arange(out_size)[:, None] < valid, matrix, 0.0)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` weights of PyTorch's bilinear resize (align_corners=False, no
    antialiasing): source ``(i + 0.5) * in / out - 0.5``, clamped at 0."""
    return np.asarray(_bilinear(np, in_size, out_size, out_size), np.float32)


def traced_bilinear_matrix(in_size: int, out_size: int, valid: jax.Array,
                           in_valid: Optional[jax.Array] = None) -> jax.Array:
    """:func:`bilinear_matrix` from the first ``in_valid`` (default ``in_size``) of
    ``in_size`` samples to the first ``valid`` of ``out_size`` (traced lengths; rows from
    ``valid`` on are zero). float32 ``[out_size, in_size]``."""
    in_valid = in_size if in_valid is None else in_valid
    matrix = _bilinear(jnp, in_size, out_size, valid.astype(jnp.float32), in_valid)
    return jnp.where(jnp.arange(out_size)[:, None] < valid, matrix, 0.0)


def _bilinear(xp, in_size: int, out_size: int, valid, in_valid=None):
    in_valid = in_size if in_valid is None else in_valid
    source = xp.maximum((xp.arange(out_size) + 0.5) * (in_valid / valid) - 0.5, 0.0)
    low = xp.minimum(xp.floor(source), in_valid - 1)
    high = xp.minimum(low + 1, in_valid - 1)
    fraction = source - low
    columns = xp.arange(in_size)
    return ((columns == low[:, None]) * (1 - fraction)[:, None]
            + (columns == high[:, None]) * fraction[:, None])


# How position embeddings are resized to a new grid: (kernel, offset, round to float16).
# "bicubic" is transformers' interpolate_pos_encoding; "bicubic_dino" is the scale factor
# (g + 0.1) / g0 of DINO's interpolation (NACLIP); "bilinear_fp16" is CLIP-ES's bilinear
# resize with the whole table (CLS row included) rounded to float16.
POSITION_RULES = {"bicubic": ("bicubic", 0.0, False), "bicubic_dino": ("bicubic", 0.1, False),
                  "bilinear_fp16": ("bilinear", 0.0, True)}


def check_pixel_values(shape: Sequence[int], patch_size: int, caller: str) -> None:
    """Raises a one-line ValueError unless ``shape`` is ``[B, S, S', 3]`` in whole patches."""
    if len(shape) != 4 or shape[-1] != 3 or shape[1] % patch_size or shape[2] % patch_size:
        raise ValueError(f"{caller} expects pixel values [B, S, S, 3] with S a multiple of the "
                         f"patch size {patch_size}, got shape {tuple(shape)}")


class VisionEmbeddings(nn.Module):
    config: VisionConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values: jax.Array, grid_hw: Optional[jax.Array] = None,
                 positions: str = "bicubic") -> jax.Array:
        """``[B, S, S', 3]`` normalised pixels -> ``[B, 1 + gh * gw, D]`` tokens.

        Args:
          pixel_values: ``[B, S, S', 3]`` with S, S' multiples of the patch size.
          grid_hw: optional int ``[B, 2]``: each image fills only the top-left
            ``grid_hw[b]`` patches of the grid (the rest is padding); its position
            embeddings are resized to that grid. None: the whole grid.
          positions: how the position embeddings are resized to the grid, a key of
            ``POSITION_RULES`` (default: transformers' rule).
        """
        cfg = self.config
        patches = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                          strides=(cfg.patch_size, cfg.patch_size), padding="VALID",
                          use_bias=False, dtype=self.dtype, name="patch_embedding")(
            pixel_values.astype(self.dtype))
        batch, grid_h, grid_w, width = patches.shape
        class_embedding = self.param("class_embedding", nn.initializers.normal(0.02), (width,))
        table = nn.Embed(cfg.grid_size ** 2 + 1, width, name="position_embedding").embedding
        if grid_hw is None:
            positions = _resize_positions(table, cfg.grid_size, grid_h, grid_w, positions)[None]
        else:
            positions = jax.vmap(lambda hw: _resize_positions_within(
                table, cfg.grid_size, grid_h, grid_w, hw, positions))(grid_hw)
        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, 1, width))
        tokens = jnp.concatenate([cls, patches.reshape(batch, grid_h * grid_w, width)], axis=1)
        return tokens + positions.astype(self.dtype)


def _resize_positions(table: jax.Array, native: int, grid_h: int, grid_w: int,
                      rule: str = "bicubic") -> jax.Array:
    """The position embeddings ``[1 + N, D]`` resized to a static grid by ``rule`` (see
    ``POSITION_RULES``); the CLS position is kept."""
    kernel, offset, half = POSITION_RULES[rule]
    if (grid_h, grid_w) == (native, native) and rule == "bicubic":
        return table
    if kernel == "bicubic":
        rows, cols = bicubic_matrix(native, grid_h, offset), bicubic_matrix(native, grid_w, offset)
    else:
        rows, cols = bilinear_matrix(native, grid_h), bilinear_matrix(native, grid_w)
    return _resized(table, native, rows, cols, half)


def _resize_positions_within(table: jax.Array, native: int, grid_h: int, grid_w: int,
                             valid_hw: jax.Array, rule: str) -> jax.Array:
    """:func:`_resize_positions` to the traced top-left ``valid_hw`` of a ``grid_h x grid_w``
    grid (zeros beyond it): ``[1 + grid_h * grid_w, D]``."""
    kernel, offset, half = POSITION_RULES[rule]
    if kernel == "bicubic":
        rows = traced_bicubic_matrix(native, grid_h, valid_hw[0], offset)
        cols = traced_bicubic_matrix(native, grid_w, valid_hw[1], offset)
    else:
        rows = traced_bilinear_matrix(native, grid_h, valid_hw[0])
        cols = traced_bilinear_matrix(native, grid_w, valid_hw[1])
    return _resized(table, native, rows, cols, half)


def _resized(table: jax.Array, native: int, rows, cols, half: bool) -> jax.Array:
    grid = table[1:].reshape(native, native, -1)
    grid = jnp.einsum("yi,xj,ijd->yxd", rows, cols, grid, precision="highest")
    resized = jnp.concatenate([table[:1], grid.reshape(-1, grid.shape[-1])], axis=0)
    return resized.astype(jnp.float16).astype(table.dtype) if half else resized


def grid_key_mask(grid_h: int, grid_w: int, grid_hw: jax.Array) -> jax.Array:
    """bool ``[B, 1 + grid_h * grid_w]``: the CLS token and each image's top-left
    ``grid_hw[b]`` patches (the tokens attention may look at)."""
    rows = jnp.arange(grid_h)[:, None] < grid_hw[:, None, None, 0]
    cols = jnp.arange(grid_w)[None, :] < grid_hw[:, None, None, 1]
    patches = (rows & cols).reshape(grid_hw.shape[0], grid_h * grid_w)
    return jnp.concatenate([jnp.ones((grid_hw.shape[0], 1), bool), patches], axis=1)


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

    def embed(self, pixel_values: jax.Array, grid_hw: Optional[jax.Array] = None,
              positions: str = "bicubic") -> jax.Array:
        """``[B, S, S, 3]`` -> ``[B, N, D]`` tokens after the pre-LayerNorm (see
        ``VisionEmbeddings`` for ``grid_hw`` and ``positions``)."""
        return self.pre_layrnorm(self.embeddings(pixel_values, grid_hw, positions))

    def blocks(self, tokens: jax.Array, start: int, stop: int, *, cls_only_last: bool = False,
               perturbations: Optional[Sequence[jax.Array]] = None,
               key_mask: Optional[jax.Array] = None) -> tuple[jax.Array, list[jax.Array]]:
        """Runs blocks ``start .. stop - 1``.

        Args:
          tokens: ``[B, N, D]`` input of block ``start``.
          start, stop: the block range (static Python ints).
          cls_only_last: compute only the CLS token in block ``stop - 1`` (exact when
            nothing but the CLS output is used, as in the image embedding).
          perturbations: optional per-block additions to the attention probabilities,
            ``[B, H, N, N]`` (``[B, H, 1, N]`` for a CLS-only block); see ``Attention``.
          key_mask: optional bool ``[B, N]``: tokens attention may look at (padding False).

        Returns:
          ``(tokens [B, N or 1, D], [probs [B, H, N or 1, N] per block])``.
        """
        all_probs = []
        for index in range(start, stop):
            cls_only = cls_only_last and index == stop - 1
            perturbation = None if perturbations is None else perturbations[index - start]
            tokens, probs = self.layers[index](tokens, query_first_only=cls_only,
                                               perturbation=perturbation, key_mask=key_mask)
            all_probs.append(probs)
        return tokens, all_probs

    def pool(self, tokens: jax.Array) -> jax.Array:
        """``[B, N, D]`` final tokens -> post-LayerNorm CLS ``[B, D]``."""
        return self.post_layernorm(tokens[:, 0])

    def patch_features(self, tokens: jax.Array) -> jax.Array:
        """``[B, N, D]`` tokens -> post-LayerNorm patch tokens ``[B, N - 1, D]`` (dense features)."""
        return self.post_layernorm(tokens[:, 1:])
