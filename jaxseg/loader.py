"""``load_clip``: a CLIP checkpoint (hub id or local folder) -> a ready ``CLIP`` handle."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import socket
import threading
from typing import Any, Sequence
from urllib.parse import urlparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models import clip as clip_model
from jaxseg.models.config import CLIPConfig
from jaxseg.models.vision import check_pixel_values
from jaxseg.tokenizer import Tokenizer
from jaxseg.weights import load_params

# What a checkpoint folder needs; everything else on the hub (PyTorch .bin, TF, Flax
# msgpack weights) is skipped so a download is only what jaxseg reads.
CHECKPOINT_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json"]
NETWORK_PROBE_SECONDS = 5.0


class CheckpointError(ValueError):
    """A checkpoint could not be found, downloaded or read (one-line message)."""


@dataclasses.dataclass(frozen=True, eq=False)
class CLIP:
    """A loaded CLIP model: configuration, parameters and tokenizer.

    ``config`` and ``params`` are public; the methods are jit-compiled wrappers
    around the pure functions in ``jaxseg.models.clip``.
    """

    config: CLIPConfig
    params: Any
    tokenizer: Tokenizer
    dtype: Any = jnp.float32

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> ``np.int32 [N, 77]`` token ids (padded/truncated, EOT kept)."""
        return self.tokenizer(list(texts), context_length=self.config.text.max_position_embeddings)

    def encode_image(self, pixel_values) -> jax.Array:
        """``[B, S, S, 3]`` CLIP-normalised pixels -> ``[B, P]`` projected embeddings.

        S may differ from the checkpoint's image size if it is a multiple of the patch
        size: the position embedding is then interpolated bicubically.
        """
        pixel_values = jnp.asarray(pixel_values)
        check_pixel_values(pixel_values.shape, self.config.vision.patch_size, "encode_image")
        return _jitted(clip_model.encode_image, self.config, self.dtype)(self.params, pixel_values)

    def encode_text(self, input_ids) -> jax.Array:
        """``[N, T]`` token ids (from ``tokenize``) -> ``[N, P]`` projected embeddings."""
        return _jitted(clip_model.encode_text, self.config, self.dtype)(
            self.params, jnp.asarray(input_ids, jnp.int32))

    def encode_prompts(self, texts: Sequence[str]) -> jax.Array:
        """Shorthand for ``encode_text(tokenize(texts))``."""
        return self.encode_text(self.tokenize(texts))


@functools.lru_cache(maxsize=None)
def _jitted(fn, config: CLIPConfig, dtype):
    return jax.jit(functools.partial(fn, config=config, dtype=dtype))


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


def resolve_checkpoint(name_or_path: str) -> str:
    """A local checkpoint folder for a folder path or hub id, downloading if needed."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded) or expanded.startswith((".", "/")) or name_or_path.count("/") != 1:
        raise CheckpointError(f"--model {name_or_path!r} is neither a checkpoint folder nor a hub "
                              "id like 'openai/clip-vit-base-patch16'")
    return _download(name_or_path)


def _download(repo_id: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:  # Already cached: no network at all.
        return snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES, local_files_only=True)
    except HFValidationError:
        raise CheckpointError(f"--model {repo_id!r} is not a valid hub id or folder") from None
    except Exception:  # noqa: BLE001 - any miss in the local cache means "download it".
        pass
    offline_hint = (f"could not download {repo_id} from the Hugging Face hub ({{why}}); on a "
                    "machine without internet, copy the checkpoint folder (config.json, "
                    "model.safetensors, tokenizer files) and pass --model /path/to/folder")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CheckpointError(offline_hint.format(why="HF_HUB_OFFLINE is set and it is not cached"))
    reason = _unreachable_reason()
    if reason:
        raise CheckpointError(offline_hint.format(why=reason))
    try:
        return snapshot_download(repo_id, allow_patterns=CHECKPOINT_FILES)
    except RepositoryNotFoundError:
        raise CheckpointError(f"hub repository {repo_id!r} not found (or private)") from None
    except Exception as error:  # noqa: BLE001 - report network/hub failures in one line.
        raise CheckpointError(offline_hint.format(why=type(error).__name__)) from None


def _unreachable_reason() -> str:
    """Why the hub cannot be reached, found within seconds; '' when it can (or via a proxy).

    huggingface_hub retries unreachable hosts for minutes; a plain TCP connect with a
    short deadline answers at once. With a proxy configured, a direct connect says
    nothing, so the probe is skipped.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    outcome = ["no answer within %.0f s" % NETWORK_PROBE_SECONDS]

    def probe():  # getaddrinfo has no timeout of its own, hence the thread.
        try:
            socket.create_connection((host, port), timeout=NETWORK_PROBE_SECONDS).close()
            outcome[0] = ""
        except OSError as error:
            outcome[0] = f"cannot reach {host}: {error.strerror or type(error).__name__}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(NETWORK_PROBE_SECONDS + 0.5)
    return outcome[0]
