"""Independent PyTorch reference of Chefer et al. relevance maps for a transformers CLIPModel.

Used by the parity tests to check the JAX implementation. It is written for clarity, not speed:
one forward and one backward per (image, class) pair, attention probabilities caught by forward
hooks on every vision `CLIPAttention` and their gradients kept with `retain_grad()`.

Definition (both sides must match):
    s_k    = exp(logit_scale) * cos(image_embed, t_k)      (or softmax over the K logits)
    A_l    = post-softmax attention probabilities of vision block l   [heads, N, N]
    G_l    = d s_k / d A_l
    Abar_l = mean over heads of max(G_l * A_l, 0)
    R = I;  for l = start_layer .. L-1:  R = R + Abar_l @ R
    map    = R[0, 1:] reshaped to the patch grid [gh, gw]
"""

from __future__ import annotations

import numpy as np
import torch
import transformers


def resolve_start_layer(start_layer: int, num_layers: int) -> int:
    """Turns a possibly negative `start_layer` into a block index in [0, num_layers)."""
    if not -num_layers <= start_layer < num_layers:
        raise ValueError(
            f"start_layer={start_layer} is out of range for {num_layers} vision blocks; "
            f"use a value in [{-num_layers}, {num_layers - 1}]."
        )
    return start_layer % num_layers


def _image_text_scores(
    model: transformers.CLIPModel, image: torch.Tensor, text_embeds: torch.Tensor, softmax: bool
) -> torch.Tensor:
    """Scores of one image against all classes.

    Args:
        model: the CLIP model.
        image: `[1, 3, S, S]` CLIP-normalised pixels.
        text_embeds: `[K, D]` class text embeddings (normalised here, so any scale is fine).
        softmax: if True, softmax over the K logits.

    Returns:
        `[K]` scores s_k.
    """
    features = model.get_image_features(pixel_values=image)
    # transformers 5.x returns a ModelOutput whose pooler_output is the projected embedding.
    image_embed = features if isinstance(features, torch.Tensor) else features.pooler_output
    cosine = torch.nn.functional.normalize(image_embed, dim=-1) @ torch.nn.functional.normalize(
        text_embeds, dim=-1
    ).T
    logits = model.logit_scale.exp() * cosine[0]
    return logits.softmax(dim=-1) if softmax else logits


def torch_relevance(
    model: transformers.CLIPModel,
    pixel_values: np.ndarray,
    text_embeds: np.ndarray,
    start_layer: int = -1,
    softmax: bool = False,
) -> np.ndarray:
    """Chefer relevance maps of every image for every class, one backward per pair.

    Args:
        model: float32 transformers CLIPModel (any attention implementation; eager is used
            while this runs and the previous one is restored).
        pixel_values: `[B, S, S, 3]` NHWC float32, CLIP-normalised, S == vision image_size.
        text_embeds: `[K, D]` class text embeddings, D == projection_dim.
        start_layer: first vision block of the rollout; negative counts from the end,
            -1 = last block only, 0 = all blocks.
        softmax: if True, s_k is the softmax over the K classes of the logits.

    Returns:
        `[B, K, gh, gw]` float64 unnormalised relevance, gh = gw = S // patch_size.
    """
    vision_config = model.config.vision_config
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    if pixel_values.ndim != 4 or pixel_values.shape[1:] != (image_size, image_size, 3):
        raise ValueError(
            f"pixel_values has shape {pixel_values.shape}; pass [B, {image_size}, {image_size}, 3] NHWC."
        )
    if text_embeds.ndim != 2 or text_embeds.shape[1] != model.config.projection_dim:
        raise ValueError(
            f"text_embeds has shape {text_embeds.shape}; pass [K, {model.config.projection_dim}]."
        )
    layers = model.vision_model.encoder.layers
    first_layer = resolve_start_layer(start_layer, len(layers))
    grid = image_size // patch_size

    # Catch each block's attention probabilities (the tensor that multiplies V) on the way out.
    captured: list[torch.Tensor] = []

    def keep_probabilities(_module, _inputs, outputs):
        probabilities = outputs[1]
        probabilities.retain_grad()
        captured.append(probabilities)

    previous_implementation = model.config._attn_implementation
    was_training = model.training
    # Only eager attention materialises the probabilities; sdpa returns None for them.
    model.set_attn_implementation("eager")
    model.eval()
    hooks = [layer.self_attn.register_forward_hook(keep_probabilities) for layer in layers]
    try:
        images = torch.from_numpy(np.ascontiguousarray(pixel_values, dtype=np.float32)).permute(0, 3, 1, 2)
        classes = torch.from_numpy(np.asarray(text_embeds, dtype=np.float32))
        maps = np.zeros((len(images), len(classes), grid, grid), dtype=np.float64)
        for image_index in range(len(images)):
            for class_index in range(len(classes)):
                captured.clear()
                scores = _image_text_scores(model, images[image_index : image_index + 1], classes, softmax)
                # inputs= keeps parameter .grad untouched: only the probabilities receive gradients.
                scores[class_index].backward(inputs=captured[first_layer:])
                relevance = torch.eye(captured[0].shape[-1], dtype=torch.float64)
                for probabilities in captured[first_layer:]:
                    weighted = (probabilities.grad[0] * probabilities[0]).detach().double()
                    head_mean = weighted.clamp(min=0).mean(dim=0)
                    relevance = relevance + head_mean @ relevance
                maps[image_index, class_index] = relevance[0, 1:].reshape(grid, grid).numpy()
    finally:
        for hook in hooks:
            hook.remove()
        model.set_attn_implementation(previous_implementation)
        model.train(was_training)
    return maps


def build_tiny_clip(num_layers: int = 2, seed: int = 0) -> transformers.CLIPModel:
    """A tiny random float32 CLIPModel in eval mode (hidden 32, 2 heads, 32 px images, 8 px patches)."""
    shared = dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=num_layers,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    config = transformers.CLIPConfig(
        vision_config=dict(shared, image_size=32, patch_size=8),
        text_config=dict(
            shared, vocab_size=600, max_position_embeddings=16, eos_token_id=599, bos_token_id=598, pad_token_id=1
        ),
        projection_dim=24,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return transformers.CLIPModel(config).eval()


if __name__ == "__main__":
    tiny_model = build_tiny_clip()
    rng = np.random.default_rng(0)
    tiny_pixels = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    tiny_text = rng.standard_normal((3, 24)).astype(np.float32)
    for layer_choice in (-1, 0):
        for use_softmax in (False, True):
            result = torch_relevance(tiny_model, tiny_pixels, tiny_text, layer_choice, use_softmax)
            print(f"start_layer={layer_choice} softmax={use_softmax} shape={result.shape}")
            print(np.array2string(result[0, 0], precision=5))
