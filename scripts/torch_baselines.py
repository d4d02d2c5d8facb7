"""PyTorch baselines of Chefer relevance maps for the relevance benchmark.

Two ways to compute the same maps (see tests/torch_reference.py for the definition):

* `notebook_style`: shaped like the CLIP notebook of Chefer et al.'s Transformer-MM-Explainability:
  per (image, class) pair a fresh forward pass with attention capture, a one-hot selection of
  the logit, `model.zero_grad()`, one `torch.autograd.grad` and the rollout.
* `careful`: one forward per batch of V images, the graph built only from `start_layer` on and
  without parameter gradients, then one backward per class batched over images.

Both expect a float32 transformers CLIPModel; eager attention is switched on while they run.
Thread count is left to the caller (`torch.set_num_threads`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import transformers


@contextlib.contextmanager
def _eager_eval(model: transformers.CLIPModel, freeze_parameters: bool) -> Iterator[None]:
    """Eager attention and eval mode (optionally frozen parameters) for the duration, then restores."""
    previous_implementation = model.config._attn_implementation
    was_training = model.training
    previous_flags = [parameter.requires_grad for parameter in model.parameters()]
    model.set_attn_implementation("eager")
    model.eval()
    if freeze_parameters:
        model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(model.parameters(), previous_flags):
            parameter.requires_grad_(flag)
        model.set_attn_implementation(previous_implementation)
        model.train(was_training)


def _first_layer(model: transformers.CLIPModel, start_layer: int) -> int:
    """Block index in [0, L) of a possibly negative `start_layer`."""
    num_layers = model.config.vision_config.num_hidden_layers
    if not -num_layers <= start_layer < num_layers:
        raise ValueError(f"start_layer={start_layer} is out of range for {num_layers} vision blocks.")
    return start_layer % num_layers


def _logits(
    model: transformers.CLIPModel, pixel_values: torch.Tensor, text_embeds: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Image-text logits `[V, K]` and the vision attention probabilities (L x `[V, heads, N, N]`)."""
    # vision_model + visual_projection is what get_image_features does, and it returns attentions.
    vision_output = model.vision_model(pixel_values=pixel_values, output_attentions=True)
    image_embeds = torch.nn.functional.normalize(model.visual_projection(vision_output.pooler_output), dim=-1)
    text_unit = torch.nn.functional.normalize(text_embeds, dim=-1)
    return model.logit_scale.exp() * image_embeds @ text_unit.T, vision_output.attentions


def _rollout(probabilities: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Relevance rollout `[V, N, N]` from per-layer probabilities and gradients `[V, heads, N, N]`."""
    batch, _, tokens, _ = probabilities[0].shape
    relevance = torch.eye(tokens).expand(batch, tokens, tokens)
    for attention, gradient in zip(probabilities, gradients):
        head_mean = (gradient * attention.detach()).clamp(min=0).mean(dim=1)
        relevance = relevance + torch.bmm(head_mean, relevance)
    return relevance


def notebook_style(
    model: transformers.CLIPModel, pixel_values: torch.Tensor, text_embeds: torch.Tensor, start_layer: int = -1
) -> torch.Tensor:
    """Per (image, class) pair: one forward, one backward, one rollout.

    Args:
        model: float32 CLIPModel.
        pixel_values: `[V, 3, S, S]` NCHW CLIP-normalised pixels.
        text_embeds: `[K, D]` class text embeddings.
        start_layer: first block of the rollout (negative counts from the end).

    Returns:
        `[V, K, gh, gw]` relevance maps.
    """
    first_layer = _first_layer(model, start_layer)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
    num_classes = text_embeds.shape[0]
    maps = torch.zeros(pixel_values.shape[0], num_classes, grid, grid)
    with _eager_eval(model, freeze_parameters=False):
        for image_index in range(pixel_values.shape[0]):
            for class_index in range(num_classes):
                logits, attentions = _logits(model, pixel_values[image_index : image_index + 1], text_embeds)
                one_hot = torch.zeros_like(logits)
                one_hot[0, class_index] = 1.0
                selected_logit = (one_hot * logits).sum()
                model.zero_grad()
                used = list(attentions[first_layer:])
                gradients = torch.autograd.grad(selected_logit, used)
                with torch.no_grad():
                    relevance = _rollout(used, list(gradients))
                    maps[image_index, class_index] = relevance[0, 0, 1:].reshape(grid, grid)
    return maps


def careful(
    model: transformers.CLIPModel, pixel_values: torch.Tensor, text_embeds: torch.Tensor, start_layer: int = -1
) -> torch.Tensor:
    """One forward for all V images, one backward per class over the layers from start_layer on.

    The graph starts at the input of block `start_layer` (earlier blocks run without one) and no
    parameter needs a gradient, so autograd stores and computes only what the maps need.

    Args:
        model: float32 CLIPModel.
        pixel_values: `[V, 3, S, S]` NCHW CLIP-normalised pixels.
        text_embeds: `[K, D]` class text embeddings.
        start_layer: first block of the rollout (negative counts from the end).

    Returns:
        `[V, K, gh, gw]` relevance maps.
    """
    first_layer = _first_layer(model, start_layer)
    grid = model.config.vision_config.image_size // model.config.vision_config.patch_size

    def start_graph_here(_module, args):
        # Earlier blocks ran without a graph; gradients only need to reach this block's attention.
        return (args[0].detach().requires_grad_(True), *args[1:])

    start_block = model.vision_model.encoder.layers[first_layer]
    with _eager_eval(model, freeze_parameters=True), torch.enable_grad():
        hook = start_block.register_forward_pre_hook(start_graph_here)
        try:
            logits, attentions = _logits(model, pixel_values, text_embeds)
        finally:
            hook.remove()
        used = list(attentions[first_layer:])
        detached = [attention.detach() for attention in used]
        per_class = []
        for class_index in range(text_embeds.shape[0]):
            # Images are independent, so the sum over the batch gives each image its own gradient.
            gradients = torch.autograd.grad(logits[:, class_index].sum(), used, retain_graph=True)
            with torch.no_grad():
                per_class.append(_rollout(detached, list(gradients))[:, 0, 1:])
    return torch.stack(per_class, dim=1).reshape(pixel_values.shape[0], -1, grid, grid)


if __name__ == "__main__":
    import pathlib
    import sys

    import numpy as np

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from torch_reference import build_tiny_clip, torch_relevance

    tiny_model = build_tiny_clip(num_layers=3)
    tiny_model.set_attn_implementation("sdpa")  # the baselines must switch to eager themselves
    rng = np.random.default_rng(1)
    pixels_nhwc = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    class_embeds = rng.standard_normal((4, 24)).astype(np.float32)
    pixels_nchw = torch.from_numpy(pixels_nhwc).permute(0, 3, 1, 2).contiguous()
    for layer_choice in (-1, 0, 1):
        expected = torch_relevance(tiny_model, pixels_nhwc, class_embeds, start_layer=layer_choice)
        for baseline in (notebook_style, careful):
            got = baseline(tiny_model, pixels_nchw, torch.from_numpy(class_embeds), start_layer=layer_choice)
            error = np.abs(got.numpy() - expected).max()
            print(f"{baseline.__name__:15s} start_layer={layer_choice:2d} max|diff|={error:.2e} "
                  f"max|ref|={np.abs(expected).max():.3e}")
            assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-6), baseline.__name__
    assert all(parameter.grad is None for parameter in tiny_model.parameters())
    assert all(parameter.requires_grad for parameter in tiny_model.parameters())
    assert tiny_model.config._attn_implementation == "sdpa"
    print("baselines match tests/torch_reference.py")
