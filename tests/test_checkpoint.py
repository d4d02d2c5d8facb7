"""Strict checkpoint loading: every tensor used, every parameter written, shapes checked."""

import json
import os
import re
import shutil
import time

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import jaxseg
from checkpoints import make_checkpoint, torch_features
from jaxseg.clip.handle import CheckpointError
from jaxseg.clip.checkpoint import checkpoint_key, param_path


def copy_checkpoint(source, target):
    shutil.copytree(source, target)
    return str(target)


def rewrite_tensors(folder, change, file="model.safetensors"):
    path = os.path.join(folder, file)
    tensors = safetensors.numpy.load_file(path)
    change(tensors)
    safetensors.numpy.save_file(tensors, path)


def load_error(folder) -> str:
    """The one-line message ``load_clip`` fails with on ``folder``."""
    with pytest.raises(CheckpointError) as error:
        jaxseg.load_clip(folder)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_key_mapping():
    assert param_path("vision_model.encoder.layers.11.self_attn.q_proj.weight") == (
        ("vision_model", "layers_11", "self_attn", "q_proj", "kernel"), "dense")
    assert param_path("vision_model.pre_layrnorm.weight") == (
        ("vision_model", "pre_layrnorm", "norm", "scale"), "same")
    assert param_path("vision_model.embeddings.patch_embedding.weight")[1] == "conv"
    assert param_path("text_model.embeddings.token_embedding.weight") == (
        ("text_model", "embeddings", "token_embedding", "embedding"), "same")
    assert param_path("logit_scale") == (("logit_scale",), "same")
    assert checkpoint_key(("vision_model", "layers_11", "layer_norm1", "norm", "bias")) == (
        "vision_model.encoder.layers.11.layer_norm1.bias")


def test_hub_buffers_are_ignored_and_everything_else_loads(tiny_checkpoint, tiny_clip):
    folder, _ = tiny_checkpoint
    names = safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))
    assert "vision_model.embeddings.position_ids" in names
    leaves = jax.tree_util.tree_leaves(tiny_clip.params)
    assert len(leaves) == len(names) - 2
    assert all(leaf.dtype == np.float32 for leaf in leaves)


@pytest.mark.parametrize("key, jaxseg_name", [
    ("vision_model.encoder.layers.1.self_attn.k_proj.bias", "vision_model/layers_1/self_attn/k_proj/bias"),
    ("text_model.encoder.layers.0.mlp.fc2.weight", "text_model/layers_0/mlp/fc2/kernel"),
    ("text_model.final_layer_norm.weight", "text_model/final_layer_norm/norm/scale"),
    ("vision_model.embeddings.patch_embedding.weight", "vision_model/embeddings/patch_embedding/kernel"),
    ("text_model.embeddings.token_embedding.weight", "text_model/embeddings/token_embedding/embedding"),
    ("logit_scale", "logit_scale"),
])
def test_missing_tensor_is_named_by_its_checkpoint_key(tiny_checkpoint, tmp_path, key, jaxseg_name):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    rewrite_tensors(folder, lambda t: t.pop(key))
    assert f"lacks 1 tensor(s) the config needs, first: {key} (jaxseg: {jaxseg_name})" in load_error(folder)


def test_wrong_shape_is_named_by_its_checkpoint_key(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    key = "vision_model.encoder.layers.0.mlp.fc1.weight"
    rewrite_tensors(folder, lambda t: t.__setitem__(key, t[key][:10]))
    assert re.search(rf"model.safetensors: tensor {re.escape(key)} \(jaxseg: "
                     r"vision_model/layers_0/mlp/fc1/kernel\) has shape \(48, 10\)", load_error(folder))


def test_unknown_tensor_is_named_by_its_checkpoint_key(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    key = "vision_model.encoder.layers.7.extra.weight"
    rewrite_tensors(folder, lambda t: t.__setitem__(key, np.zeros(3, np.float32)))
    assert f"tensor {key} (jaxseg: vision_model/layers_7/extra/kernel) matches no parameter" in load_error(folder)


def test_duplicate_and_non_float_tensors_are_named(tmp_path):
    folder = tmp_path / "sharded"
    make_checkpoint(str(folder), hub_buffers=False, max_shard_size="20KB")
    with open(folder / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    key = "text_model.encoder.layers.0.mlp.fc1.bias"
    other_file = next(file for file in sorted(set(weight_map.values())) if file != weight_map[key])
    duplicated = copy_checkpoint(folder, tmp_path / "duplicated")
    value = safetensors.numpy.load_file(os.path.join(folder, weight_map[key]))[key]
    rewrite_tensors(duplicated, lambda t: t.__setitem__(key, value), file=other_file)
    assert f"tensor {key} appears twice (also as {key})" in load_error(duplicated)
    integer = copy_checkpoint(folder, tmp_path / "integer")
    rewrite_tensors(integer, lambda t: t.__setitem__(key, t[key].astype(np.int32)), file=weight_map[key])
    assert f"tensor {key} has dtype I32" in load_error(integer)


def test_unreadable_file_is_named(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    with open(os.path.join(folder, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    assert "model.safetensors: not a readable safetensors file" in load_error(folder)


def test_wrong_vocab_size_is_refused(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config["text_config"]["vocab_size"] = 49408
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(CheckpointError, match="49408"):
        jaxseg.load_clip(folder)


def test_missing_files_are_clear(tiny_checkpoint, tmp_path):
    folder = copy_checkpoint(tiny_checkpoint[0], tmp_path / "ckpt")
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        jaxseg.load_clip(folder)
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        jaxseg.load_clip(str(tmp_path / "does-not-exist"))


def test_fp16_bf16_and_sharded_checkpoints_load(tmp_path):
    model = make_checkpoint(str(tmp_path / "reference"), hub_buffers=False, seed=4)
    pixels = np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32)
    reference = torch_features(model, pixels)
    sharded = tmp_path / "sharded"
    make_checkpoint(str(sharded), hub_buffers=False, seed=4, max_shard_size="20KB")
    assert os.path.exists(sharded / "model.safetensors.index.json")
    clip = jaxseg.load_clip(str(sharded))
    np.testing.assert_allclose(clip.encode_image(pixels), reference, rtol=1e-4, atol=1e-5)
    for dtype in (np.float16, ml_dtypes.bfloat16):
        half = copy_checkpoint(tmp_path / "reference", tmp_path / np.dtype(dtype).name)
        rewrite_tensors(half, lambda t, dtype=dtype: t.update({k: v.astype(dtype) for k, v in t.items()}))
        clip = jaxseg.load_clip(half)
        assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(clip.params))
        np.testing.assert_allclose(clip.encode_image(pixels), reference, rtol=0, atol=5e-2)


def test_uncached_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="--model /path/to/folder"):
        jaxseg.load_clip("openai/clip-vit-base-patch16")
    assert time.perf_counter() - start < 10


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # closed port: refused at once
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="cannot reach 127.0.0.1"):
        jaxseg.load_clip("openai/clip-vit-base-patch16")
    assert time.perf_counter() - start < 10


# transformers' configs of the published OpenAI checkpoints (vision, text, projection).
REAL_SIZES = {
    "ViT-B/32": (dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, image_size=224, patch_size=32),
                 dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                      num_hidden_layers=12), 512),
    "ViT-B/16": (dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, image_size=224, patch_size=16),
                 dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                      num_hidden_layers=12), 512),
    "ViT-L/14": (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                      num_hidden_layers=24, image_size=224, patch_size=14),
                 dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12), 768),
    "ViT-L/14-336": (dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                          num_hidden_layers=24, image_size=336, patch_size=14),
                     dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                          num_hidden_layers=12), 768),
}


@pytest.mark.parametrize("name", sorted(REAL_SIZES))
def test_every_real_size_checkpoint_key_maps_to_a_parameter(name):
    """Each published size: every transformers tensor lands on a parameter of the right shape."""
    import torch
    import transformers

    from jaxseg.clip.model import param_shapes
    from jaxseg.clip.config import CLIPConfig
    from jaxseg.clip.checkpoint import IGNORED, _rearrange

    vision, text, projection = REAL_SIZES[name]
    hf_config = transformers.CLIPConfig(vision_config=vision, text_config=text,
                                        projection_dim=projection)
    with torch.device("meta"):  # shapes only, no memory
        state = transformers.CLIPModel(hf_config).state_dict()
    config = CLIPConfig.from_dict(hf_config.to_dict())
    expected = {tuple(k.key for k in path): leaf.shape for path, leaf
                in jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]}
    mapped = set()
    for key, tensor in state.items():
        if any(rule.match(key) for rule in IGNORED):
            continue
        path, layout = param_path(key)
        shape = _rearrange(np.lib.stride_tricks.as_strided(
            np.zeros(1, np.float32), tuple(tensor.shape), (0,) * tensor.dim()), layout).shape
        assert expected[path] == shape, key
        assert checkpoint_key(path) == key  # the names errors report are the file's keys
        mapped.add(path)
    assert mapped == set(expected)
