"""
A slow, independent float64 reference of the SeMask-MaskFormer head: MaskFormer's FPN pixel
decoder (``BasePixelDecoder``), the DETR-style ``TransformerPredictor`` and the semantic
inference formula.

Written from the MaskFormer and DETR papers (arXiv 2107.06278, 2005.12872) and the official
state-dict key names, not from any code: convolutions as sums over kernel offsets, GroupNorm,
LayerNorm, attention, nearest and bilinear resizing all written out with explicit index
arithmetic, so nothing is shared with the fast implementation it checks (no ``nn.Module``, no
``F.interpolate``, no fused attention).

Only the test-suite imports this module.
"""

import math

import torch

__all__ = [
    "bilinear_resize",
    "conv2d",
    "group_norm",
    "layer_norm",
    "nearest_resize",
    "reference_pixel_decoder",
    "reference_predictor",
    "reference_semantic_inference",
    "sine_positions",
]


def conv2d(x, weight, bias=None, padding=0):
    """
    Args:
        x (Tensor): (N, C, H, W).
        weight (Tensor): (O, C, k, k), stride 1.
    Returns:
        Tensor: (N, O, H + 2p - k + 1, W + 2p - k + 1), sum over kernel offsets of W[:, :, i, j]
        applied to the shifted zero-padded input.
    """
    n, c, h, w = x.shape
    k = weight.shape[-1]
    padded = x.new_zeros(n, c, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    out = x.new_zeros(n, weight.shape[0], out_h, out_w)
    for i in range(k):
        for j in range(k):
            window = padded[:, :, i : i + out_h, j : j + out_w]
            out = out + torch.einsum("oc,nchw->nohw", weight[:, :, i, j], window)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def group_norm(x, groups, weight, bias, eps=1e-5):
    """GroupNorm: per sample and group of C / groups channels, (x - mean) / sqrt(var + eps)."""
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups * h * w)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    normed = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    return normed * weight[None, :, None, None] + bias[None, :, None, None]


def layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the last axis (biased variance)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def nearest_resize(x, size):
    """Nearest ("legacy" rounding): output index i reads input index floor(i * in / out)."""
    rows = [(i * x.shape[-2]) // size[0] for i in range(size[0])]
    cols = [(j * x.shape[-1]) // size[1] for j in range(size[1])]
    return x[..., rows, :][..., cols]


def _bilinear_axis(in_size, out_size):
    """Per output index: (low index, high index, weight of high), half-pixel centres."""
    taps = []
    for i in range(out_size):
        src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
        low = int(math.floor(src))
        high = min(low + 1, in_size - 1)
        taps.append((low, high, src - low))
    return taps


def bilinear_resize(x, size):
    """Bilinear with align_corners False: separable, rows then columns."""
    rows = _bilinear_axis(x.shape[-2], size[0])
    x = torch.stack([x[..., lo, :] * (1 - t) + x[..., hi, :] * t for lo, hi, t in rows], dim=-2)
    cols = _bilinear_axis(x.shape[-1], size[1])
    return torch.stack([x[..., lo] * (1 - t) + x[..., hi] * t for lo, hi, t in cols], dim=-1)


def sine_positions(height, width, num_feats, temperature=10000.0):
    """
    DETR's normalised sine embedding without padding mask, in float64.

    Returns:
        Tensor: (height * width, 2 * num_feats), row-major tokens; y channels then x channels,
        within each axis sin at even and cos at odd channels.
    """
    scale = 2 * math.pi
    out = torch.zeros(height, width, 2 * num_feats, dtype=torch.float64)
    for k in range(num_feats):
        freq = temperature ** (2 * (k // 2) / num_feats)
        fn = math.sin if k % 2 == 0 else math.cos
        for i in range(height):
            out[i, :, k] = fn((i + 1) / (height + 1e-6) * scale / freq)
        for j in range(width):
            out[:, j, num_feats + k] = fn((j + 1) / (width + 1e-6) * scale / freq)
    return out.reshape(height * width, 2 * num_feats)


def _linear(x, weight, bias):
    return x @ weight.T + bias


def _attention(query, key, value, sd, prefix, heads):
    """
    Multi-head attention of one image with nn.MultiheadAttention's parameterisation.

    Args:
        query (Tensor): (Q, C); key, value (Tensor): (S, C).
    Returns:
        Tensor: (Q, C).
    """
    c = query.shape[-1]
    w, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    q = _linear(query, w[:c], b[:c])
    k = _linear(key, w[c : 2 * c], b[c : 2 * c])
    v = _linear(value, w[2 * c :], b[2 * c :])
    d = c // heads
    outs = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        logits = q[:, part] @ k[:, part].T / math.sqrt(d)
        weights = torch.exp(logits - logits.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        outs.append(weights @ v[:, part])
    return _linear(
        torch.cat(outs, -1), sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"]
    )


def reference_pixel_decoder(sd, features, in_features, groups):
    """
    MaskFormer's FPN pixel decoder.

    Args:
        sd (dict[str, Tensor]): its weights (``adapter_k``, ``layer_k``, ``mask_features``).
        features (dict[str, Tensor]): (N, C_f, H_f, W_f) per name.
        in_features (list[str]): finest first; level k = in_features[k - 1].
        groups (int): GroupNorm groups.
    Returns:
        tuple: mask features (N, mask_dim, H_1, W_1) and the FPN outputs coarse to fine.
    """
    sd = {k: v.double() for k, v in sd.items()}

    def conv_gn(prefix, x, padding, relu):
        y = conv2d(x, sd[prefix + ".weight"], padding=padding)
        y = group_norm(y, groups, sd[prefix + ".norm.weight"], sd[prefix + ".norm.bias"])
        return y.clamp(min=0) if relu else y

    levels = len(in_features)
    y = conv_gn(f"layer_{levels}", features[in_features[-1]].double(), 1, True)
    outputs = [y]
    for k in range(levels - 1, 0, -1):
        lateral = conv_gn(f"adapter_{k}", features[in_features[k - 1]].double(), 0, False)
        y = conv_gn(f"layer_{k}", lateral + nearest_resize(y, lateral.shape[-2:]), 1, True)
        outputs.append(y)
    mask_features = conv2d(y, sd["mask_features.weight"], sd["mask_features.bias"], padding=1)
    return mask_features, outputs


def _decoder_layer(tgt, memory, pos, query_pos, sd, prefix, heads):
    """Post-norm DETR decoder layer: self-attention, cross-attention, FFN."""

    def norm(x, name):
        return layer_norm(x, sd[f"{prefix}{name}.weight"], sd[f"{prefix}{name}.bias"])

    qk = tgt + query_pos
    tgt = norm(tgt + _attention(qk, qk, tgt, sd, prefix + "self_attn.", heads), "norm1")
    cross = _attention(tgt + query_pos, memory + pos, memory, sd, prefix + "multihead_attn.", heads)
    tgt = norm(tgt + cross, "norm2")
    hidden = _linear(tgt, sd[prefix + "linear1.weight"], sd[prefix + "linear1.bias"]).clamp(min=0)
    ffn = _linear(hidden, sd[prefix + "linear2.weight"], sd[prefix + "linear2.bias"])
    return norm(tgt + ffn, "norm3")


def reference_predictor(sd, x, mask_features, heads):
    """
    MaskFormer's DETR-style predictor, one image at a time.

    Args:
        sd (dict[str, Tensor]): its weights (official names).
        x (Tensor): (N, C_in, h, w) the res5 map.
        mask_features (Tensor): (N, mask_dim, H, W).
        heads (int): attention heads.
    Returns:
        list[tuple[Tensor, Tensor]]: per decoder layer, first to last, class logits
        (N, Q, K + 1) and mask logits (N, Q, H, W).
    """
    sd = {k: v.double() for k, v in sd.items()}
    num_layers = len({k.split(".")[3] for k in sd if k.startswith("transformer.decoder.layers.")})
    query_pos = sd["query_embed.weight"]
    hidden = query_pos.shape[1]
    per_layer = [([], []) for _ in range(num_layers)]
    for b in range(x.shape[0]):
        _, h, w = x[b].shape
        src = conv2d(x[b : b + 1].double(), sd["input_proj.weight"], sd["input_proj.bias"])
        memory = src[0].reshape(hidden, h * w).T
        pos = sine_positions(h, w, hidden // 2)
        tgt = torch.zeros_like(query_pos)
        for i in range(num_layers):
            prefix = f"transformer.decoder.layers.{i}."
            tgt = _decoder_layer(tgt, memory, pos, query_pos, sd, prefix, heads)
            normed = layer_norm(
                tgt, sd["transformer.decoder.norm.weight"], sd["transformer.decoder.norm.bias"]
            )
            logits = _linear(normed, sd["class_embed.weight"], sd["class_embed.bias"])
            embed = normed
            for j in range(3):
                embed = _linear(
                    embed, sd[f"mask_embed.layers.{j}.weight"], sd[f"mask_embed.layers.{j}.bias"]
                )
                embed = embed.clamp(min=0) if j < 2 else embed
            masks = torch.einsum("qc,chw->qhw", embed, mask_features[b].double())
            per_layer[i][0].append(logits)
            per_layer[i][1].append(masks)
    return [(torch.stack(lg), torch.stack(mk)) for lg, mk in per_layer]


def reference_semantic_inference(logits, masks, padded_size, image_size):
    """
    Args:
        logits (Tensor): (Q, K + 1) class logits of one image.
        masks (Tensor): (Q, h, w) mask logits at stride 4 of the padded batch.
        padded_size, image_size (tuple[int, int]): batch tensor and image sizes.
    Returns:
        Tensor: (K, H, W) sum over queries of softmax class scores (no-object dropped) times
        sigmoid of the masks upsampled to the padded size and cropped to the image.
    """
    probs = torch.exp(logits - logits.max(-1, keepdim=True).values)
    probs = (probs / probs.sum(-1, keepdim=True))[:, :-1]
    up = bilinear_resize(masks, padded_size)[:, : image_size[0], : image_size[1]]
    return torch.einsum("qk,qhw->khw", probs, 1 / (1 + torch.exp(-up)))
