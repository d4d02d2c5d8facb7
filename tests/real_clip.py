"""A random CLIP at real ViT-B/16 size whose attention is local, for the parity tests.

With plain random weights, attention averaged over heads and blocks is nearly uniform, so
CLIP-ES's affinity maps come out nearly flat (their min-max then only amplifies float32
noise) and NACLIP's neighbourhood bias barely matters: such a test proves little. Here the
queries and keys are scaled up and made equal (q = k projections) and the position
embeddings are smooth, so every block prefers nearby patches, as real CLIP does.
"""

from __future__ import annotations

import math

import torch

from checkpoints import VIT_B16_VISION, VIT_B_TEXT, make_checkpoint


def make_attentive_checkpoint(folder: str, seed: int = 0):
    """Saves the checkpoint (see the module docstring) and returns the PyTorch model."""
    model = make_checkpoint(folder, vision=VIT_B16_VISION, text=VIT_B_TEXT, projection_dim=512,
                            seed=seed)
    generator = torch.Generator().manual_seed(seed)
    grid = VIT_B16_VISION["image_size"] // VIT_B16_VISION["patch_size"]
    width = VIT_B16_VISION["hidden_size"]
    rows, cols = torch.meshgrid(torch.arange(float(grid)), torch.arange(float(grid)),
                                indexing="ij")
    coordinates = torch.stack([rows.reshape(-1), cols.reshape(-1)], 1)
    frequencies = torch.randn(2, width, generator=generator) * 0.35
    phases = torch.rand(width, generator=generator) * 2 * math.pi
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.weight[1:] = 2.0 * torch.cos(
            coordinates @ frequencies + phases)
        for layer in model.vision_model.encoder.layers:
            attention = layer.self_attn
            attention.q_proj.weight.mul_(4.0)
            attention.q_proj.bias.copy_(torch.randn(width, generator=generator) * 0.5)
            attention.k_proj.weight.copy_(attention.q_proj.weight)
            attention.k_proj.bias.copy_(attention.q_proj.bias)
        model.logit_scale.fill_(math.log(100.0))
    model.save_pretrained(folder)
    return model
