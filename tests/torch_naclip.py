"""Independent PyTorch reference of NACLIP dense maps for a transformers CLIPModel.

NACLIP (Hajimiri et al., WACV 2025, "Pay Attention to Your Neighbours") keeps CLIP's vision
tower as is up to the input of the last block, and replaces that block by:

    h      = layer_norm1(x)                                  x: [1 + N, D] tokens (CLS first)
    k, v   = k_proj(h), v_proj(h)                            (q_proj is not used)
    logits = (k_h k_h^T) / sqrt(head_dim) + Omega            per head h, before the softmax
    Omega  = exp(-((r_i - r_j)^2 + (c_i - c_j)^2) / (2 sigma^2)) for patch tokens i, j at grid
             (row, col); 0 on the CLS row and column; same for every head, added, unnormalised
    y      = out_proj(concat_h softmax(logits) v_h)          no residual, no MLP, no layer_norm2
    e      = visual_projection(post_layernorm(y))            on every token; CLS then dropped
    map_k  = cos(e_patch, t_k)                               [gh, gw] per class

Position embeddings are resized with NACLIP's rule: bicubic (Keys, A = -0.75, border indices
clamped), align_corners=False, scale factor (g + 0.1) / g0 with g0 the native grid side, i.e. the
source coordinate of output index i is (i + 0.5) * g0 / (g + 0.1) - 0.5.

Everything is computed by hand from the module's weights in float64 (nothing calls the
transformers forward), so the reference does not depend on the attention implementation.
See /work/notes/naclip_spec.md for the derivation with citations of the authors' code.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import transformers

_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights (A = -0.75) of the 4 taps at offsets -1, 0, 1, 2.

    Args:
        t: `[n]` fractional parts in [0, 1].

    Returns:
        `[n, 4]` weights, each row sums to 1.
    """
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def naclip_resize_matrix(src: int, dst: int) -> np.ndarray:
    """Matrix of NACLIP's 1-D bicubic position-embedding resize from `src` to `dst` samples.

    The source coordinate of output index i is (i + 0.5) * src / (dst + 0.1) - 0.5 (PyTorch
    bicubic, align_corners=False, scale_factor=(dst + 0.1) / src, recompute_scale_factor=False).
    Taps outside [0, src - 1] are clamped to the border sample.

    Args:
        src: native grid side (e.g. 14 for ViT-B/16 at 224).
        dst: target grid side.

    Returns:
        `[dst, src]` float64 matrix M with resized = M @ table.
    """
    coord = (np.arange(dst, dtype=np.float64) + 0.5) * (src / (dst + 0.1)) - 0.5
    base = np.minimum(np.floor(coord).astype(np.int64), src - 1)
    frac = np.clip(coord - base, 0.0, 1.0)
    weights = _cubic_weights(frac)
    matrix = np.zeros((dst, src), dtype=np.float64)
    for tap in range(4):
        index = np.clip(base - 1 + tap, 0, src - 1)
        np.add.at(matrix, (np.arange(dst), index), weights[:, tap])
    return matrix


def naclip_position_embedding(
    table: torch.Tensor, grid: tuple[int, int], resize_native_grid: bool = True
) -> torch.Tensor:
    """NACLIP's position embeddings for a patch grid.

    Args:
        table: `[1 + g0 * g0, D]` pretrained position embeddings (CLS row first).
        grid: `(gh, gw)` target patch grid.
        resize_native_grid: if True (default) the rule is applied to every grid, including
            `gh * gw == g0 * g0` (then it is NOT the identity: scale 14.1 / 14 for g0 = 14). If
            False, reproduce the authors' shortcut: whenever `gh * gw == g0 * g0` the table is
            added unchanged in raster order (even for a non-square grid such as 7 x 28).

    Returns:
        `[1 + gh * gw, D]` float64 position embeddings (CLS row unchanged).
    """
    table = table.detach().to(torch.float64)
    num_native = table.shape[0] - 1
    g0 = int(round(math.sqrt(num_native)))
    if g0 * g0 != num_native:
        raise ValueError(f"position table has {num_native} patch rows, not a square grid")
    gh, gw = grid
    if not resize_native_grid and gh * gw == num_native:
        return table
    patches = table[1:].reshape(g0, g0, -1)  # [g0, g0, D], row-major (row, col)
    rows = torch.from_numpy(naclip_resize_matrix(g0, gh))  # [gh, g0]
    cols = torch.from_numpy(naclip_resize_matrix(g0, gw))  # [gw, g0]
    resized = torch.einsum("ir,jc,rcd->ijd", rows, cols, patches).reshape(gh * gw, -1)
    return torch.cat([table[:1], resized], dim=0)


def neighbourhood_bias(grid: tuple[int, int], sigma: float = 5.0) -> torch.Tensor:
    """NACLIP's additive attention bias Omega over [CLS, patches].

    Args:
        grid: `(gh, gw)` patch grid.
        sigma: standard deviation of the Gaussian, in patches.

    Returns:
        `[1 + gh * gw, 1 + gh * gw]` float64; entry (i, j) for patches i, j is
        exp(-||pos_i - pos_j||^2 / (2 sigma^2)) (1 on the diagonal), 0 on the CLS row/column.
    """
    gh, gw = grid
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    dist2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    bias = torch.zeros(gh * gw + 1, gh * gw + 1, dtype=torch.float64)
    bias[1:, 1:] = torch.exp(-dist2 / (2.0 * sigma**2))
    return bias


def _linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if module.bias is None else module.bias.detach().double()
    return F.linear(x, module.weight.detach().double(), bias)


def _layer_norm(module: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(
        x, module.normalized_shape, module.weight.detach().double(), module.bias.detach().double(),
        module.eps,
    )


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`[B, T, D]` -> `[B, heads, T, D / heads]`."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """`[B, heads, T, Dh]` -> `[B, T, heads * Dh]`."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def _vanilla_block(layer, x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """One unmodified CLIP encoder block (pre-LN attention + MLP, both residual)."""
    attn = layer.self_attn
    h = _layer_norm(layer.layer_norm1, x)
    q = _split_heads(_linear(attn.q_proj, h), num_heads)
    k = _split_heads(_linear(attn.k_proj, h), num_heads)
    v = _split_heads(_linear(attn.v_proj, h), num_heads)
    scale = q.shape[-1] ** -0.5
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
    x = x + _linear(attn.out_proj, _merge_heads(probs @ v))
    h = _layer_norm(layer.layer_norm2, x)
    return x + _linear(layer.mlp.fc2, layer.mlp.activation_fn(_linear(layer.mlp.fc1, h)))


def _naclip_block(layer, x: torch.Tensor, num_heads: int, bias: torch.Tensor) -> torch.Tensor:
    """NACLIP's last block: k-k attention + Gaussian bias, no residual, no MLP."""
    attn = layer.self_attn
    h = _layer_norm(layer.layer_norm1, x)
    k = _split_heads(_linear(attn.k_proj, h), num_heads)
    v = _split_heads(_linear(attn.v_proj, h), num_heads)
    scale = k.shape[-1] ** -0.5
    probs = torch.softmax((k @ k.transpose(-1, -2)) * scale + bias, dim=-1)
    return _linear(attn.out_proj, _merge_heads(probs @ v))


@torch.no_grad()
def naclip_patch_embeddings(
    model: transformers.CLIPModel,
    pixel_values_nhwc: np.ndarray,
    sigma: float = 5.0,
    resize_native_grid: bool = True,
) -> np.ndarray:
    """Projected (not normalised) NACLIP patch embeddings.

    Args:
        model: transformers CLIPModel (any dtype/attention implementation; weights are read and
            used in float64, the model is not modified).
        pixel_values_nhwc: `[B, H, W, 3]` CLIP-normalised pixels, any H, W >= patch size. Like the
            authors' stride-p patch convolution, trailing rows/columns beyond a multiple of the
            patch size are ignored (gh = H // p, gw = W // p).
        sigma: Gaussian standard deviation of the neighbourhood bias, in patches.
        resize_native_grid: see `naclip_position_embedding`; True applies the resize rule to
            every grid, False reproduces the authors' skip when gh * gw equals the native count.

    Returns:
        `[B, gh, gw, P]` float64 embeddings, P = projection_dim.
    """
    vision = model.vision_model
    embeddings = vision.embeddings
    patch = embeddings.patch_size
    num_heads = model.config.vision_config.num_attention_heads

    pixels = torch.as_tensor(np.asarray(pixel_values_nhwc), dtype=torch.float64)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixel_values_nhwc must be [B, H, W, 3], got {tuple(pixels.shape)}")
    batch, height, width, _ = pixels.shape
    gh, gw = height // patch, width // patch
    if gh < 1 or gw < 1:
        raise ValueError(f"image {height}x{width} is smaller than one {patch}x{patch} patch")
    pixels = pixels[:, : gh * patch, : gw * patch].permute(0, 3, 1, 2)

    tokens = F.conv2d(pixels, embeddings.patch_embedding.weight.detach().double(), stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)  # [B, gh * gw, D], raster (row-major) order
    cls = embeddings.class_embedding.detach().double().expand(batch, 1, -1)
    x = torch.cat([cls, tokens], dim=1)
    x = x + naclip_position_embedding(
        embeddings.position_embedding.weight, (gh, gw), resize_native_grid
    )
    x = _layer_norm(vision.pre_layrnorm, x)

    layers = vision.encoder.layers
    for layer in layers[:-1]:
        x = _vanilla_block(layer, x, num_heads)
    x = _naclip_block(layers[-1], x, num_heads, neighbourhood_bias((gh, gw), sigma))

    x = _layer_norm(vision.post_layernorm, x)
    x = F.linear(x, model.visual_projection.weight.detach().double())
    return x[:, 1:].reshape(batch, gh, gw, -1).numpy()


def naclip_maps(
    model: transformers.CLIPModel,
    pixel_values_nhwc: np.ndarray,
    text_embeds: np.ndarray,
    sigma: float = 5.0,
    resize_native_grid: bool = True,
) -> np.ndarray:
    """NACLIP raw cosine maps (before any logit scale, softmax, upsampling or PAMR).

    Args:
        model: transformers CLIPModel.
        pixel_values_nhwc: `[B, H, W, 3]` CLIP-normalised pixels (see `naclip_patch_embeddings`).
        text_embeds: `[K, P]` class text embeddings; normalised here, so any scale works.
        sigma: Gaussian standard deviation of the neighbourhood bias, in patches (NACLIP: 5).
        resize_native_grid: True (default) resizes position embeddings with NACLIP's rule for
            every grid; False reproduces the authors' code, which adds the pretrained table as is
            when gh * gw equals the native patch count (e.g. 224 x 224 for ViT-B/16).

    Returns:
        `[B, K, gh, gw]` float64 cosine similarities in [-1, 1], gh = H // p, gw = W // p.
    """
    embeds = naclip_patch_embeddings(model, pixel_values_nhwc, sigma, resize_native_grid)
    embeds = embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)
    text = np.asarray(text_embeds, dtype=np.float64)
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    return np.einsum("bhwd,kd->bkhw", embeds, text)


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """Values at the dilated 3x3 neighbours of every pixel, border-replicated.

    Args:
        x: `[B, C, H, W]`.
        dilations: neighbour distances d; offsets are d * (dy, dx), dy, dx in {-1, 0, 1}.
        centre: include the (0, 0) offset once per dilation.

    Returns:
        `[B, C, P, H, W]` with P = len(dilations) * (9 if centre else 8).
    """
    _, _, height, width = x.shape
    rows = torch.arange(height)
    cols = torch.arange(width)
    out = []
    for d in dilations:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0 and not centre:
                    continue
                r = (rows + dy * d).clamp(0, height - 1)
                c = (cols + dx * d).clamp(0, width - 1)
                out.append(x[:, :, r][:, :, :, c])
    return torch.stack(out, dim=2)


@torch.no_grad()
def pamr(
    image_nhwc: np.ndarray,
    masks: np.ndarray,
    num_iter: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> np.ndarray:
    """Pixel-Adaptive Mask Refinement as used by NACLIP (Araslanov & Roth, CVPR 2020).

    Affinities come from the image only: for every pixel p and each of the 8 * len(dilations)
    neighbours n at offset d * (dy, dx) (border replicated), per channel c
        a_c(p, n) = -|I_c(p) - I_c(n)| / (1e-8 + 0.1 * s_c(p)),
    where s_c(p) is the unbiased (N - 1) standard deviation of I_c over the 9 * len(dilations)
    samples {p} U neighbours, the centre counted once per dilation. w(p, .) = softmax over n of
    the channel mean of a_c(p, n). Then `num_iter` times: M(p) <- sum_n w(p, n) M(n) (the centre
    itself is not a neighbour), each mask channel independently.

    Args:
        image_nhwc: `[B, H, W, C]` image (NACLIP passes the CLIP-normalised image).
        masks: `[B, K, h, w]` maps to refine (NACLIP passes the raw cosine maps, already
            bilinearly resized to H x W). If (h, w) != (H, W) they are first resized bilinearly
            with align_corners=True, as the original module does.
        num_iter: number of propagation steps (NACLIP: 10).
        dilations: neighbour distances (NACLIP: (8, 16)).

    Returns:
        `[B, K, H, W]` float64 refined maps.
    """
    image = torch.as_tensor(np.asarray(image_nhwc), dtype=torch.float64).permute(0, 3, 1, 2)
    mask = torch.as_tensor(np.asarray(masks), dtype=torch.float64)
    if mask.shape[-2:] != image.shape[-2:]:
        mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)

    spread = _neighbours(image, dilations, centre=True).std(dim=2, keepdim=True)  # [B,C,1,H,W]
    diff = (image.unsqueeze(2) - _neighbours(image, dilations, centre=False)).abs()
    affinity = (-diff / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True)  # [B,1,P,H,W]
    weights = torch.softmax(affinity, dim=2)

    for _ in range(num_iter):
        mask = (_neighbours(mask, dilations, centre=False) * weights).sum(dim=2)
    return mask.numpy()


def sliding_windows(
    height: int, width: int, crop: int = 224, stride: int = 112
) -> list[tuple[int, int, int, int]]:
    """Window boxes of NACLIP's sliding-window inference (mmseg `slide_inference` placement).

    Windows start every `stride` pixels; the last one in each direction is shifted back so it
    ends at the border; a side shorter than `crop` gives one window covering it (no padding).
    Each window's cosine map is bilinearly upsampled (align_corners=False) to the window size,
    summed into the full canvas and divided by the per-pixel window count.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        crop: window side.
        stride: window step.

    Returns:
        list of `(y1, y2, x1, x2)` boxes in row-major order of (row, column) windows.
    """
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for i in range(rows):
        for j in range(cols):
            y2 = min(i * stride + crop, height)
            x2 = min(j * stride + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes
