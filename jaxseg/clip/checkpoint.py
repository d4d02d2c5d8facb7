"""CLIP checkpoints: finding them (folder or hub id) and reading them into parameters.

A hub id is resolved from the local cache first, then downloaded (only the files jaxseg
reads), failing within seconds with one line when the hub cannot be reached.

Every checkpoint tensor is either converted or matched by an explicit ignore
rule, every parameter is written exactly once and every shape is checked; any
mismatch raises a one-line ``ValueError`` naming the tensor by its checkpoint key
(the key to look for in the file), with the jaxseg parameter path in brackets.

Tensors are read one at a time with the ``safetensors`` library (``safe_open`` with
``pread``, no memory map) and converted straight away, so peak memory is the
parameters plus one tensor rather than two full copies of the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from typing import Any, Iterator
from urllib.parse import urlparse

import jax
import jax.numpy as jnp
import numpy as np
import safetensors

from jaxseg.clip.model import param_shapes
from jaxseg.clip.config import CLIPConfig

Params = Any

# What a checkpoint folder needs; everything else on the hub (PyTorch .bin, TF, Flax
# msgpack weights) is skipped so a download is only what jaxseg reads.
CHECKPOINT_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json",
                    "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                    "special_tokens_map.json"]
NETWORK_PROBE_SECONDS = 5.0


class CheckpointError(ValueError):
    """A checkpoint could not be found, downloaded or read (one-line message)."""


# Buffers that real hub checkpoints carry but that are not parameters.
IGNORED = (re.compile(r"^(vision|text)_model\.embeddings\.position_ids$"),)

_LAYER_NORMS = {"layer_norm1", "layer_norm2", "pre_layrnorm", "post_layernorm", "final_layer_norm"}
_EMBEDDINGS = {"position_embedding", "token_embedding"}
# Parameter dtypes a checkpoint may store (safetensors' names); all are cast to param_dtype.
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def checkpoint_files(folder: str) -> list[str]:
    """The safetensors files of a checkpoint folder (single file or sharded with an index)."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, name) for name in shards]
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise ValueError(
        f"{folder}: no model.safetensors (or model.safetensors.index.json); save the checkpoint "
        "with transformers' save_pretrained(..., safe_serialization=True)")


def read_safetensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(key, array)`` for each parameter tensor of a safetensors file, one at a time.

    Keys matched by ``IGNORED`` are skipped unread. Uses ``pread`` rather than the
    default memory map, whose pages would stay resident (and count as RSS) until the
    whole file is closed.

    Raises:
      ValueError: the file is not valid safetensors, or a tensor has a non-float dtype.
    """
    try:
        checkpoint = safetensors.safe_open(path, framework="numpy", backend="pread")
    except safetensors.SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    with checkpoint:
        for key in checkpoint.keys():
            if any(rule.match(key) for rule in IGNORED):
                continue
            dtype = checkpoint.get_slice(key).get_dtype()
            if dtype not in _FLOAT_DTYPES:
                raise ValueError(f"{path}: tensor {key} has dtype {dtype}; CLIP parameters are "
                                 f"one of {', '.join(_FLOAT_DTYPES)}")
            yield key, checkpoint.get_tensor(key)


def param_path(key: str) -> tuple[tuple[str, ...], str]:
    """Maps a transformers key to ``(jaxseg param path, layout)``.

    ``layout`` says how to rearrange the tensor: ``"dense"`` (transpose ``[out, in]``),
    ``"conv"`` (``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``) or ``"same"``.
    """
    parts = key.split(".")
    path: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "encoder" and i + 2 < len(parts) and parts[i + 1] == "layers":
            path.append(f"layers_{parts[i + 2]}")
            i += 3
        else:
            path.append(parts[i])
            i += 1
    leaf, parent = path[-1], path[-2] if len(path) > 1 else ""
    if parent in _LAYER_NORMS:
        return tuple(path[:-1]) + ("norm", "scale" if leaf == "weight" else leaf), "same"
    if parent in _EMBEDDINGS and leaf == "weight":
        return tuple(path[:-1]) + ("embedding",), "same"
    if parent == "patch_embedding" and leaf == "weight":
        return tuple(path[:-1]) + ("kernel",), "conv"
    if leaf == "weight":
        return tuple(path[:-1]) + ("kernel",), "dense"
    return tuple(path), "same"


def checkpoint_key(path: tuple[str, ...]) -> str:
    """The transformers key of a jaxseg parameter path: the inverse of ``param_path``."""
    parts = [*path]
    if len(parts) > 1 and parts[-2] == "norm":
        parts[-2:] = ["weight" if parts[-1] == "scale" else parts[-1]]
    elif parts[-1] in ("kernel", "embedding"):
        parts[-1] = "weight"
    return ".".join(f"encoder.layers.{part[len('layers_'):]}" if part.startswith("layers_") else part
                    for part in parts)


def _rearrange(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "dense":
        return array.T
    if layout == "conv":
        return array.transpose(2, 3, 1, 0)
    return array


def load_params(folder: str, config: CLIPConfig, param_dtype=jnp.float32) -> Params:
    """Reads a checkpoint folder's safetensors into a jaxseg parameter tree.

    Args:
      folder: checkpoint folder (``model.safetensors`` or shards with an index).
      config: the model configuration, from the same folder's ``config.json``.
      param_dtype: dtype of the returned parameters (fp16/bf16 checkpoints are cast).

    Returns:
      Nested dict of ``jax.Array`` matching ``CLIPModel``'s parameters.

    Raises:
      ValueError: in one line, naming by its checkpoint key the tensor that is unknown,
        missing, duplicated, mis-shaped or of an unsupported dtype.
    """
    expected = {tuple(k.key for k in path): leaf.shape for path, leaf
                in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]}
    params: dict = {}
    written: dict[tuple[str, ...], str] = {}
    for file in checkpoint_files(folder):
        for key, array in read_safetensors(file):
            path, layout = param_path(key)
            jaxseg_name = f"(jaxseg: {'/'.join(path)})"
            if path not in expected:
                raise ValueError(f"{file}: tensor {key} {jaxseg_name} matches no parameter of a CLIP "
                                 "model with this config.json; is this a transformers CLIPModel "
                                 "checkpoint?")
            if path in written:
                raise ValueError(f"{folder}: tensor {key} appears twice (also as {written[path]})")
            array = _rearrange(array, layout)
            if tuple(array.shape) != tuple(expected[path]):
                raise ValueError(f"{file}: tensor {key} {jaxseg_name} has shape {tuple(array.shape)} "
                                 f"after conversion, config.json implies {tuple(expected[path])}")
            node = params
            for name in path[:-1]:
                node = node.setdefault(name, {})
            node[path[-1]] = jnp.asarray(array, dtype=param_dtype)
            written[path] = key
            del array
    missing = sorted((checkpoint_key(path), path) for path in expected if path not in written)
    if missing:
        key, path = missing[0]
        raise ValueError(f"{folder}: checkpoint lacks {len(missing)} tensor(s) the config needs, "
                         f"first: {key} (jaxseg: {'/'.join(path)}); the checkpoint is incomplete")
    return params


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
