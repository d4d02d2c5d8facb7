"""Random transformers CLIP checkpoints for tests (no downloads).

``make_checkpoint`` saves a randomly initialised transformers ``CLIPModel`` with
``save_pretrained`` next to the tiny tokenizer fixture, as a hub folder would look,
and returns the PyTorch model as the parity reference.
"""

from __future__ import annotations

import json
import os

import numpy as np
import safetensors.numpy
import torch
import transformers

from jaxseg.clip.tokenizer import copy_tokenizer_files

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY_TOKENIZER = os.path.join(FIXTURES, "tiny_tokenizer")
TINY_VOCAB = len(json.load(open(os.path.join(TINY_TOKENIZER, "vocab.json"))))

TINY_VISION = dict(hidden_size=48, intermediate_size=96, num_attention_heads=3,
                   num_hidden_layers=3, image_size=32, patch_size=8)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                 num_hidden_layers=2, max_position_embeddings=77)
# Real sizes (transformers' published configs of the OpenAI checkpoints).
VIT_B16_VISION = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                      num_hidden_layers=12, image_size=224, patch_size=16)
VIT_B_TEXT = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                  num_hidden_layers=12, max_position_embeddings=77)


def make_checkpoint(folder: str, vision: dict = TINY_VISION, text: dict = TINY_TEXT,
                    projection_dim: int = 24, seed: int = 0, legacy_eos: bool = True,
                    hub_buffers: bool = True, **save_kwargs) -> transformers.CLIPModel:
    """Writes a random CLIP checkpoint folder and returns the PyTorch model (eval, eager).

    Args:
      legacy_eos: write ``eos_token_id: 2`` as OpenAI's configs do (pooling at the
        argmax id); otherwise the real EOT id.
      hub_buffers: add the int64 ``*.embeddings.position_ids`` buffers that real
        hub checkpoints carry (transformers 5 no longer saves them).
    """
    torch.manual_seed(seed)
    eos = 2 if legacy_eos else TINY_VOCAB - 1
    config = transformers.CLIPConfig(
        text_config=dict(text, vocab_size=TINY_VOCAB, eos_token_id=eos,
                         bos_token_id=TINY_VOCAB - 2, pad_token_id=TINY_VOCAB - 1),
        vision_config=vision, projection_dim=projection_dim)
    model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    model.save_pretrained(folder, **save_kwargs)
    copy_tokenizer_files(TINY_TOKENIZER, folder)
    if hub_buffers:
        path = os.path.join(folder, "model.safetensors")
        tensors = safetensors.numpy.load_file(path)
        grid = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
        tensors["vision_model.embeddings.position_ids"] = np.arange(grid, dtype=np.int64)[None]
        tensors["text_model.embeddings.position_ids"] = np.arange(
            text["max_position_embeddings"], dtype=np.int64)[None]
        safetensors.numpy.save_file(tensors, path, metadata={"format": "pt"})
    return model


def torch_features(model: transformers.CLIPModel, pixel_values: np.ndarray = None,
                   input_ids: np.ndarray = None, **kwargs) -> np.ndarray:
    """transformers' projected image (NHWC input) or text embeddings as numpy."""
    with torch.no_grad():
        if pixel_values is not None:
            out = model.get_image_features(
                pixel_values=torch.from_numpy(pixel_values).permute(0, 3, 1, 2), **kwargs)
        else:
            out = model.get_text_features(input_ids=torch.from_numpy(input_ids).long())
    return getattr(out, "pooler_output", out).numpy()
