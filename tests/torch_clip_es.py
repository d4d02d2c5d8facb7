"""Independent PyTorch reference of CLIP-ES maps for a transformers CLIPModel.

CLIP-ES (Lin et al., CVPR 2023, "CLIP Is Also an Efficient Segmenter") computes, per image and
per present class k, a softmax Grad-CAM at the last vision block and refines it with a
class-aware attention affinity (CAA). For one image with patch grid (gh, gw), N = gh * gw,
L vision blocks, K present classes and M background names:

    pos    = half(bilinear(pos_patch -> (gh, gw), align_corners=False) with the CLS row)
    x      = blocks 0..L-2 (no gradient) of ln_pre([cls; patches] + pos)   attentions a_0..a_{L-2}
    h      = layer_norm1 of block L-1 applied to x                         [1 + N, D]
    y      = rest of block L-1 on h (attention + residual, MLP + residual)  attention a_{L-1}
    e      = visual_projection(mean over the N patch tokens of post_layernorm(y))   (CLS excluded)
    p      = softmax(exp(logit_scale) * cos(e, [t_1..t_K, b_1..b_M]))      [K + M]
    g      = d p_k / d h, patch rows only; w = mean over patches of g       [D]
    cam_k  = norm(norm(relu(h_patches @ w)))    norm(c) = (c - min c) / (max(c - min c) + 1e-7)
    A      = mean of a_l[1:, 1:] over the last 8 blocks (head-averaged, CLS row/col dropped)
    T      = 3 x (T / column sums, then / row sums) starting from A; T = (T + T^T) / 2; T = T @ T
    caa_k  = norm((T * box_mask(cam_k)[None, :]) @ cam_k)                   [gh, gw]

The box mask is the union of the bounding boxes of the OpenCV contours of
{floor(255 * cam) > int(0.4 * max floor(255 * cam))} (0.4 for VOC, 0.7 for COCO), with the
box end clamped to W - 1 / H - 1 (exclusive), so the last row and column are never inside.

Everything except the position-embedding resize (float32 then float16 rounding, as the authors)
is computed by hand from the module's weights in float64 (nothing calls the transformers
forward). See /work/notes/clip_es_spec.md for the derivation with citations of the authors' code.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import transformers

_NORM_EPS = 1e-7  # pytorch_grad_cam scale_cam_image
_NUM_CAA_LAYERS = 8  # last 8 blocks' attentions
_SINKHORN_ITERS = 3  # one (column, row) normalisation + 2 more
_QUIRK_TOKENS = 77  # CLIP-ES's Transformer runs every block when the sequence has 77 tokens


def clip_es_position_embedding(
    model: transformers.CLIPModel, grid: tuple[int, int]
) -> torch.Tensor:
    """CLIP-ES's position embeddings for a patch grid: bilinear resize, then float16 rounding.

    The patch rows of the pretrained table are reshaped to the native `g0 x g0` grid and resized
    with bilinear interpolation (align_corners=False, no antialias) in float32; the CLS row is
    kept; then the WHOLE table (CLS row included) is rounded to float16. The rounding happens
    for every grid, including the native one (where the resize itself is the identity).

    Args:
        model: transformers CLIPModel.
        grid: `(gh, gw)` target patch grid.

    Returns:
        `[1 + gh * gw, D]` float64 tensor holding float16-representable values (CLS row first,
        patch rows in raster order).
    """
    table = model.vision_model.embeddings.position_embedding.weight.detach().to(torch.float32)
    num_native = table.shape[0] - 1
    g0 = round(num_native**0.5)
    if g0 * g0 != num_native:
        raise ValueError(f"position table has {num_native} patch rows, not a square grid")
    dim = table.shape[1]
    patches = table[1:].T.reshape(1, dim, g0, g0)
    resized = F.interpolate(patches, size=tuple(grid), mode="bilinear", align_corners=False)
    resized = resized.reshape(dim, -1).T
    return torch.cat([table[:1], resized], dim=0).half().to(torch.float64)


def min_max(cam: np.ndarray) -> np.ndarray:
    """pytorch_grad_cam's `scale_cam_image` normalisation: (c - min) / (1e-7 + max(c - min))."""
    cam = cam - cam.min()
    return cam / (_NORM_EPS + cam.max())


def box_mask(cam_grid: np.ndarray, threshold: float = 0.4) -> np.ndarray:
    """CLIP-ES's box mask of a normalised CAM (`scoremap2bbox(multi_contour_eval=True)`).

    `u8 = uint8(float32(cam) * 255)` (truncation), binarised with cv2.threshold(THRESH_BINARY)
    at `int(threshold * max(u8))` (strictly greater), contours from
    cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE); each contour's cv2.boundingRect
    (x, y, w, h) becomes the slice [y : min(y + h, H - 1), x : min(x + w, W - 1)]. The mask is
    the union of the slices, so the last row and last column are never set. No contour (e.g. an
    all-zero CAM) gives an all-False mask.

    Args:
        cam_grid: `[gh, gw]` CAM with values in [0, 1] (the double-normalised Grad-CAM).
        threshold: fraction of the maximum (CLIP-ES: 0.4 for VOC, 0.7 for COCO).

    Returns:
        `[gh, gw]` bool mask.
    """
    height, width = cam_grid.shape
    scores_u8 = (np.asarray(cam_grid, dtype=np.float32) * 255).astype(np.uint8)
    _, binary = cv2.threshold(
        scores_u8[:, :, None],
        int(threshold * int(scores_u8.max())),
        255,
        cv2.THRESH_BINARY,
    )
    # OpenCV 3 returns (image, contours, hierarchy), OpenCV >= 4 (contours, hierarchy).
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros((height, width), dtype=bool)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        mask[y : min(y + h, height - 1), x : min(x + w, width - 1)] = True
    return mask


def caa_transition(attention: torch.Tensor) -> torch.Tensor:
    """CLIP-ES's affinity from the averaged patch-to-patch attention.

    Args:
        attention: `[N, N]` mean attention (rows = queries), CLS row and column removed.

    Returns:
        `[N, N]` T = S @ S with S the symmetrised Sinkhorn-like normalisation (three rounds of
        column-sum then row-sum division, then (S + S^T) / 2).
    """
    trans = attention
    for _ in range(_SINKHORN_ITERS):
        trans = trans / trans.sum(dim=0, keepdim=True)
        trans = trans / trans.sum(dim=1, keepdim=True)
    trans = (trans + trans.T) / 2
    return trans @ trans


def _linear(module: torch.nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    bias = None if module.bias is None else module.bias.detach().to(dtype)
    return F.linear(x, module.weight.detach().to(dtype), bias)


def _layer_norm(module: torch.nn.LayerNorm, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return F.layer_norm(
        x,
        module.normalized_shape,
        module.weight.detach().to(dtype),
        module.bias.detach().to(dtype),
        module.eps,
    )


def _block_after_ln1(
    layer, x: torch.Tensor, h: torch.Tensor, num_heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rest of a CLIP encoder block given its input `x` and `h = layer_norm1(x)`.

    Args:
        layer: transformers CLIPEncoderLayer.
        x: `[T, D]` block input (residual stream).
        h: `[T, D]` layer_norm1 output.
        num_heads: attention heads.
        dtype: compute dtype.

    Returns:
        `([T, D] block output, [T, T] head-averaged attention probabilities)`.
    """
    attn = layer.self_attn
    tokens, dim = h.shape
    head_dim = dim // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:  # [T, D] -> [heads, T, Dh]
        return t.reshape(tokens, num_heads, head_dim).transpose(0, 1)

    q = heads(_linear(attn.q_proj, h, dtype))
    k = heads(_linear(attn.k_proj, h, dtype))
    v = heads(_linear(attn.v_proj, h, dtype))
    probs = torch.softmax((q * head_dim**-0.5) @ k.transpose(-1, -2), dim=-1)
    merged = (probs @ v).transpose(0, 1).reshape(tokens, dim)
    x = x + _linear(attn.out_proj, merged, dtype)
    hidden = _layer_norm(layer.layer_norm2, x, dtype)
    mlp = layer.mlp
    x = x + _linear(mlp.fc2, mlp.activation_fn(_linear(mlp.fc1, hidden, dtype)), dtype)
    return x, probs.mean(dim=0)


def _block(layer, x: torch.Tensor, num_heads: int, dtype: torch.dtype):
    """One unmodified block; returns `(output [T, D], head-mean attention [T, T])`."""
    return _block_after_ln1(layer, x, _layer_norm(layer.layer_norm1, x, dtype), num_heads, dtype)


def clip_es_maps(
    model: transformers.CLIPModel,
    pixel_values_nhwc: np.ndarray,
    text_embeds: np.ndarray,
    background_embeds: np.ndarray,
    caa: bool = True,
    box_threshold: float = 0.4,
    emulate_77_token_quirk: bool = False,
    dtype: torch.dtype = torch.float64,
) -> dict[str, np.ndarray]:
    """CLIP-ES Grad-CAM and CAA maps on the patch grid, shaped like the authors' loop.

    Per image: one no-gradient pass over blocks 0..L-2; then, for each present class k, one
    forward of block L-1 with gradient from its layer_norm1 output, the backward of the softmax
    probability of class k over the K + M names, the Grad-CAM, and (if `caa`) the box mask and
    the CAA refinement. The last block's attention used by CAA comes from the first class's
    gradient pass (identical for every class).

    Args:
        model: transformers CLIPModel (weights are read and used in `dtype`; not modified).
        pixel_values_nhwc: `[B, H, W, 3]` CLIP-normalised pixels; H and W must be multiples of
            the patch size (CLIP-ES resizes every image to ceil(side / 16) * 16 beforehand).
        text_embeds: `[K, P]` present-class text embeddings, P = projection_dim (any norm;
            normalised here). Map k belongs to row k; the order does not change the maps.
        background_embeds: `[M, P]` background text embeddings (any norm), M >= 0.
        caa: if True also compute the CAA-refined maps; else `caa` is absent from the result.
        box_threshold: box-mask threshold (CLIP-ES: 0.4 for VOC, 0.7 for COCO).
        emulate_77_token_quirk: if True reproduce the authors' bug for grids of 76 patches
            (77 tokens): the no-gradient pass then runs ALL L blocks, the last block is applied a
            second time with gradient, and the CAA average is over the last 8 of the L + 1
            attentions. If False (default) the intended pipeline is used for every grid.
        dtype: compute dtype (default float64; the position-embedding resize is always float32
            then float16, as in CLIP-ES).

    Returns:
        dict of numpy arrays in `dtype`'s numpy equivalent:
            `gradcam`: `[B, K, gh, gw]` Grad-CAM after both `min_max` normalisations (the map
                CLIP-ES feeds to the box mask and to CAA).
            `caa`: `[B, K, gh, gw]` CAA map after `min_max` (what CLIP-ES then resizes with
                cv2.resize INTER_LINEAR to the original image size); only if `caa`.
            `box_mask`: `[B, K, gh, gw]` bool box masks; only if `caa`.
            `probs`: `[B, K + M]` softmax probabilities (present classes first).
    """
    vision = model.vision_model
    embeddings = vision.embeddings
    patch = embeddings.patch_size
    num_heads = model.config.vision_config.num_attention_heads
    layers = vision.encoder.layers
    num_layers = len(layers)

    pixels = torch.as_tensor(np.asarray(pixel_values_nhwc), dtype=dtype)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"pixel_values_nhwc must be [B, H, W, 3], got {tuple(pixels.shape)}")
    batch, height, width, _ = pixels.shape
    if height % patch or width % patch or height < patch or width < patch:
        raise ValueError(f"image {height}x{width} is not a positive multiple of patch {patch}")
    gh, gw = height // patch, width // patch
    num_patches = gh * gw

    text = np.asarray(text_embeds, dtype=np.float64)
    background = np.asarray(background_embeds, dtype=np.float64).reshape(-1, text.shape[-1])
    names = torch.as_tensor(np.concatenate([text, background], axis=0), dtype=dtype)
    names = names / names.norm(dim=-1, keepdim=True)  # [K + M, P]
    num_classes = text.shape[0]
    scale = model.logit_scale.detach().to(dtype).exp()
    projection = model.visual_projection.weight.detach().to(dtype)
    position = clip_es_position_embedding(model, (gh, gw)).to(dtype)
    quirk = emulate_77_token_quirk and num_patches + 1 == _QUIRK_TOKENS

    out_cam = np.zeros((batch, num_classes, gh, gw))
    out_caa = np.zeros((batch, num_classes, gh, gw))
    out_box = np.zeros((batch, num_classes, gh, gw), dtype=bool)
    out_probs = np.zeros((batch, names.shape[0]))

    for b in range(batch):
        # Blocks 0..L-2 without gradient (all L blocks under the 77-token quirk).
        with torch.no_grad():
            image = pixels[b].permute(2, 0, 1)[None]  # [1, 3, H, W]
            conv = F.conv2d(
                image, embeddings.patch_embedding.weight.detach().to(dtype), stride=patch
            )
            tokens = conv[0].flatten(1).T  # [N, D], raster (row-major) order
            cls = embeddings.class_embedding.detach().to(dtype)[None]
            x = _layer_norm(vision.pre_layrnorm, torch.cat([cls, tokens], 0) + position, dtype)
            attentions = []
            for layer in layers[: num_layers if quirk else num_layers - 1]:
                x, probs = _block(layer, x, num_heads, dtype)
                attentions.append(probs)
            h_last = _layer_norm(layers[-1].layer_norm1, x, dtype)

        affinity = None
        for k in range(num_classes):
            # Last block with gradient, from its layer_norm1 output (the Grad-CAM layer).
            h = h_last.clone().requires_grad_(True)
            with torch.enable_grad():
                y, last_attention = _block_after_ln1(layers[-1], x, h, num_heads, dtype)
                pooled = _layer_norm(vision.post_layernorm, y, dtype)[1:].mean(dim=0)
                embed = pooled @ projection.T
                logits = scale * (embed / embed.norm()) @ names.T
                probs = torch.softmax(logits, dim=-1)
                (grad,) = torch.autograd.grad(probs[k], h)
            out_probs[b] = probs.detach().cpu().numpy()

            activation = h.detach()[1:]  # [N, D], CLS row dropped
            weights = grad[1:].mean(dim=0)  # [D]
            cam = torch.relu(activation @ weights).cpu().numpy()
            cam = min_max(min_max(cam))  # per-layer, then aggregate normalisation
            out_cam[b, k] = cam.reshape(gh, gw)
            if not caa:
                continue

            if affinity is None:
                stack = attentions + [last_attention.detach()]
                mean_attention = torch.stack([a[1:, 1:] for a in stack[-_NUM_CAA_LAYERS:]]).mean(0)
                affinity = caa_transition(mean_attention)
            mask = box_mask(out_cam[b, k], box_threshold)
            masked = affinity * torch.as_tensor(mask.reshape(1, -1), dtype=dtype)
            refined = masked @ torch.as_tensor(cam.reshape(-1), dtype=dtype)
            out_caa[b, k] = min_max(refined.cpu().numpy()).reshape(gh, gw)
            out_box[b, k] = mask

    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    result = {"gradcam": out_cam.astype(np_dtype), "probs": out_probs.astype(np_dtype)}
    if caa:
        result["caa"] = out_caa.astype(np_dtype)
        result["box_mask"] = out_box
    return result
