"""``load_clip``: a CLIP checkpoint (hub id or local folder) -> a ready ``CLIP`` handle."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.clip import model as clip_model
from jaxseg.clip.checkpoint import CheckpointError, load_params, resolve_checkpoint
from jaxseg.clip.config import CLIPConfig
from jaxseg.clip.tokenizer import Tokenizer
from jaxseg.clip.vision import check_pixel_values


@dataclasses.dataclass(frozen=True, eq=False)
class CLIP:
    """A loaded CLIP model: configuration, parameters and tokenizer.

    ``config`` and ``params`` are public; the methods are jit-compiled wrappers
    around the pure functions in ``jaxseg.clip.model``. The handle owns the compiled
    programs made for it (:meth:`compiled`), so they go when it goes.
    """

    config: CLIPConfig
    params: Any
    tokenizer: Tokenizer
    dtype: Any = jnp.float32
    _programs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    def compiled(self, function: Callable, **static) -> Callable:
        """``jax.jit(function)`` with ``config``, ``dtype`` and ``static`` bound, made once
        per handle; call it as ``program(params, *arrays)``."""
        key = (function, tuple(sorted(static.items())))
        if key not in self._programs:
            self._programs[key] = jax.jit(functools.partial(
                function, config=self.config, dtype=self.dtype, **static))
        return self._programs[key]

    def tokenize(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Texts (or one text) -> ``np.int32 [N, 77]`` token ids (padded/truncated, EOT kept)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, context_length=self.config.text.max_position_embeddings)

    def encode_image(self, pixel_values) -> jax.Array:
        """``[B, S, S, 3]`` CLIP-normalised pixels -> ``[B, P]`` projected embeddings.

        S may differ from the checkpoint's image size if it is a multiple of the patch
        size: the position embedding is then interpolated bicubically.
        """
        pixel_values = jnp.asarray(pixel_values)
        check_pixel_values(pixel_values.shape, self.config.vision.patch_size, "encode_image")
        if pixel_values.shape[0] == 0:  # the compiled program cannot take an empty batch
            return jnp.zeros((0, self.config.projection_dim), self.dtype)
        return self.compiled(clip_model.encode_image)(self.params, pixel_values)

    def encode_text(self, input_ids) -> jax.Array:
        """``[N, T]`` token ids (from ``tokenize``) -> ``[N, P]`` projected embeddings."""
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if input_ids.shape[0] == 0:  # the compiled program cannot take an empty batch
            return jnp.zeros((0, self.config.projection_dim), self.dtype)
        return self.compiled(clip_model.encode_text)(self.params, input_ids)

    def encode_prompts(self, texts: Sequence[str]) -> jax.Array:
        """Shorthand for ``encode_text(tokenize(texts))``: ``[N, P]``."""
        return self.encode_text(self.tokenize(texts))


def load_clip(name_or_path: str, dtype=jnp.float32, param_dtype=jnp.float32) -> CLIP:
    """Loads a transformers CLIP checkpoint.

    Args:
      name_or_path: a local folder (config.json, model.safetensors, tokenizer files)
        or a Hugging Face hub id such as ``"openai/clip-vit-base-patch16"``.
      dtype: compute dtype (e.g. ``jnp.bfloat16`` on accelerators); softmax and
        LayerNorm always run in float32.
      param_dtype: dtype the weights are stored in (float32 by default; fp16
        checkpoints are cast).

    Raises:
      CheckpointError: with one line saying what is missing and what to do.
    """
    folder = resolve_checkpoint(name_or_path)
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = CLIPConfig.from_dict(json.load(f))
        tokenizer = Tokenizer.from_folder(folder, vocab_size=config.text.vocab_size)
        params = load_params(folder, config, param_dtype)
    except FileNotFoundError as error:
        raise CheckpointError(f"{folder}: missing {os.path.basename(error.filename)}; a CLIP "
                              "checkpoint folder needs config.json, model.safetensors and "
                              "tokenizer files") from None
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return CLIP(config, params, tokenizer, dtype)
