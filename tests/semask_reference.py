"""
A deliberately slow, independent reference of the SeMask Swin backbone forward pass.

Written from the formulas of the SeMask and Swin papers (arXiv 2112.12782, 2103.14030) and the
official state-dict key names, not from any official code. Everything runs in float64 with explicit
Python loops over images, windows and tokens, so that it shares no vectorised trick (window
partition by reshape, mask broadcasting, ``torch.roll``, fused attention) with the fast
implementation it is used to check.

Only the test-suite imports this module.
"""

import math
import re

import torch
import torch.nn.functional as F

__all__ = ["reference_forward"]


# ---------------------------------------------------------------------------------------------
# Elementary operations, written out
# ---------------------------------------------------------------------------------------------
def _layer_norm(x, weight, bias, eps):
    """LayerNorm over the last axis: (x - mean) / sqrt(biased var + eps) * weight + bias."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _linear(x, weight, bias=None):
    """y = x W^T + b, as an explicit broadcast product and sum (no BLAS call)."""
    y = (x[..., None, :] * weight).sum(dim=-1)
    if bias is not None:
        y = y + bias
    return y


def _gelu(x):
    """Exact GELU: 0.5 x (1 + erf(x / sqrt(2)))."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _softmax_row(row):
    """Softmax of one 1-D row of logits."""
    e = torch.exp(row - row.max())
    return e / e.sum()


def _attend(q, k, v, bias=None):
    """
    Single-head attention, one query row at a time.

    Args:
        q (Tensor): (N, d) queries, already scaled.
        k (Tensor): (N, d) keys.
        v (Tensor): (N, dv) values.
        bias (Tensor or None): (N, N) additive logits (position bias and/or mask).

    Returns:
        Tensor: (N, dv).
    """
    n = q.shape[0]
    out = []
    for t in range(n):
        logits = (k * q[t]).sum(dim=-1)  # (N,): q_t . k_s for every key s
        if bias is not None:
            logits = logits + bias[t]
        out.append((_softmax_row(logits)[:, None] * v).sum(dim=0))
    return torch.stack(out, dim=0)


def _pad_hw(x, mult):
    """Zero-pad a (H, W, C) map at the right/bottom to multiples of ``mult``."""
    h, w, c = x.shape
    hp = -(-h // mult) * mult
    wp = -(-w // mult) * mult
    out = x.new_zeros(hp, wp, c)
    out[:h, :w] = x
    return out


# ---------------------------------------------------------------------------------------------
# Swin pieces
# ---------------------------------------------------------------------------------------------
def _rel_pos_index(ws):
    """(ws^2, ws^2) index into the bias table: (dh + ws - 1) * (2 ws - 1) + (dw + ws - 1)."""
    n = ws * ws
    idx = torch.empty(n, n, dtype=torch.long)
    for a in range(n):
        ha, wa = divmod(a, ws)
        for b in range(n):
            hb, wb = divmod(b, ws)
            idx[a, b] = (ha - hb + ws - 1) * (2 * ws - 1) + (wa - wb + ws - 1)
    return idx


def _region(coord, size, ws, shift):
    """Region id along one axis of the padded grid: [0, size-ws), [size-ws, size-shift), rest."""
    if coord < size - ws:
        return 0
    if coord < size - shift:
        return 1
    return 2


def _window_attention(tokens, coords, grid, sd, p, num_heads, ws, shift, qk_scale, rel_index):
    """
    Multi-head self-attention inside one window.

    Args:
        tokens (Tensor): (N, C) normalised tokens of the window (N = ws^2).
        coords (list[(int, int)]): position of each token on the padded (shifted) grid.
        grid ((int, int)): padded grid size (Hp, Wp), for the shift mask.
        shift (int): shift size (0: no mask).

    Returns:
        Tensor: (N, C) projected attention output.
    """
    n, c = tokens.shape
    hd = c // num_heads
    scale = qk_scale if qk_scale is not None else hd**-0.5
    qkv = _linear(tokens, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])  # (N, 3C)
    table = sd[p + "attn.relative_position_bias_table"]  # ((2ws-1)^2, heads)

    mask = torch.zeros(n, n, dtype=tokens.dtype)
    if shift > 0:
        hp, wp = grid
        reg = [(_region(h, hp, ws, shift), _region(w, wp, ws, shift)) for (h, w) in coords]
        for a in range(n):
            for b in range(n):
                if reg[a] != reg[b]:
                    mask[a, b] = -100.0

    heads = []
    for h in range(num_heads):
        # qkv channel layout: [3, heads, head_dim]
        q = qkv[:, 0 * c + h * hd : 0 * c + (h + 1) * hd] * scale
        k = qkv[:, 1 * c + h * hd : 1 * c + (h + 1) * hd]
        v = qkv[:, 2 * c + h * hd : 2 * c + (h + 1) * hd]
        bias = torch.empty(n, n, dtype=tokens.dtype)
        for a in range(n):
            for b in range(n):
                bias[a, b] = table[rel_index[a, b], h]
        heads.append(_attend(q, k, v, bias + mask))
    out = torch.cat(heads, dim=-1)  # heads concatenated in order
    return _linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])


def _swin_block(x, sd, p, num_heads, ws, shift, qk_scale, eps):
    """One Swin block on one image. x: (H, W, C). Returns (H, W, C)."""
    h, w, c = x.shape
    shortcut = x
    y = _layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
    y = _pad_hw(y, ws)  # zero pad after the LayerNorm
    hp, wp = y.shape[:2]
    # Cyclic shift by -shift: shifted[i, j] = y[(i + shift) % Hp, (j + shift) % Wp]
    shifted = y.new_empty(y.shape)
    for i in range(hp):
        for j in range(wp):
            shifted[i, j] = y[(i + shift) % hp, (j + shift) % wp]
    rel_index = _rel_pos_index(ws)
    attn_shifted = y.new_zeros(y.shape)
    for wi in range(hp // ws):
        for wj in range(wp // ws):
            coords = [(wi * ws + a, wj * ws + b) for a in range(ws) for b in range(ws)]
            tokens = torch.stack([shifted[r, s] for (r, s) in coords], dim=0)
            out = _window_attention(
                tokens, coords, (hp, wp), sd, p, num_heads, ws, shift, qk_scale, rel_index
            )
            for t, (r, s) in enumerate(coords):
                attn_shifted[r, s] = out[t]
    # Reverse shift: result[i, j] = attn_shifted[(i - shift) % Hp, (j - shift) % Wp]
    attn = y.new_empty(y.shape)
    for i in range(hp):
        for j in range(wp):
            attn[i, j] = attn_shifted[(i - shift) % hp, (j - shift) % wp]
    x = shortcut + attn[:h, :w]
    y = _layer_norm(x, sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
    y = _gelu(_linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    y = _linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + y


# ---------------------------------------------------------------------------------------------
# Semantic layer
# ---------------------------------------------------------------------------------------------
def _semantic_attention(seq, sd, p):
    """
    One ``SemanticAttention`` module on one sequence.

    Args:
        seq (Tensor): (N, C) input (normalised tokens, or the previous module's output).

    Returns:
        (Tensor, Tensor): Q (N, K), out (N, C) = gamma * mlp_res(softmax(Q Ks^T) V) + seq.
    """
    q = _linear(seq, sd[p + "mlp_cls_q.weight"], sd[p + "mlp_cls_q.bias"])
    k = _linear(seq, sd[p + "mlp_cls_k.weight"], sd[p + "mlp_cls_k.bias"])
    v = _linear(seq, sd[p + "mlp_v.weight"], sd[p + "mlp_v.bias"])
    av = _attend(q, k, v)  # single head, no scaling, no mask
    f = _linear(av, sd[p + "mlp_res.weight"], sd[p + "mlp_res.bias"])  # dropout: identity
    return q, sd[p + "gamma"] * f + seq


def _semantic_layer(x, sd, p, num_inj, windowed, sem_ws, eps):
    """
    Semantic layer on one image. x: (H, W, C). Returns (out (H, W, C), prior (H, W, K)).
    """
    h, w, c = x.shape
    xn = _layer_norm(x, sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
    if windowed:
        xn = _pad_hw(xn, sem_ws)  # zero pad after the LayerNorm; pad tokens are not masked
        hp, wp = xn.shape[:2]
        groups = [
            [(wi * sem_ws + a, wj * sem_ws + b) for a in range(sem_ws) for b in range(sem_ws)]
            for wi in range(hp // sem_ws)
            for wj in range(wp // sem_ws)
        ]
    else:
        hp, wp = h, w
        groups = [[(r, s) for r in range(h) for s in range(w)]]
    out_full = xn.new_zeros(hp, wp, c)
    prior_full = None
    for coords in groups:
        seq = torch.stack([xn[r, s] for (r, s) in coords], dim=0)
        q = None
        for n in range(num_inj):  # chained on ``out``; only the last Q is kept
            q, seq = _semantic_attention(seq, sd, f"{p}class_injection.{n}.")
        if prior_full is None:
            prior_full = xn.new_zeros(hp, wp, q.shape[-1])
        for t, (r, s) in enumerate(coords):
            out_full[r, s] = seq[t]
            prior_full[r, s] = q[t]
    return out_full[:h, :w], prior_full[:h, :w]


# ---------------------------------------------------------------------------------------------
# Patch embedding and merging
# ---------------------------------------------------------------------------------------------
def _patch_embed(x, sd, patch, eps):
    """x: (3, H, W) one image. Returns (Hp/patch, Wp/patch, C0)."""
    _, h, w = x.shape
    hp = -(-h // patch) * patch
    wp = -(-w // patch) * patch
    xp = x.new_zeros(x.shape[0], hp, wp)
    xp[:, :h, :w] = x
    y = F.conv2d(xp[None], sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    y = y[0].permute(1, 2, 0)  # (H', W', C0)
    if "patch_embed.norm.weight" in sd:
        y = _layer_norm(y, sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"], eps)
    return y


def _patch_merging(x, sd, p, eps):
    """x: (H, W, C). Returns ((H+1)//2, (W+1)//2, 2C)."""
    h, w, c = x.shape
    xp = x.new_zeros(h + h % 2, w + w % 2, c)
    xp[:h, :w] = x
    ho, wo = xp.shape[0] // 2, xp.shape[1] // 2
    cat = x.new_empty(ho, wo, 4 * c)
    for i in range(ho):
        for j in range(wo):
            # (row, col) offsets in the order (0,0), (1,0), (0,1), (1,1)
            cat[i, j] = torch.cat(
                [
                    xp[2 * i, 2 * j],
                    xp[2 * i + 1, 2 * j],
                    xp[2 * i, 2 * j + 1],
                    xp[2 * i + 1, 2 * j + 1],
                ]
            )
    y = _layer_norm(cat, sd[p + "norm.weight"], sd[p + "norm.bias"], eps)
    return _linear(y, sd[p + "reduction.weight"])


# ---------------------------------------------------------------------------------------------
# Whole backbone
# ---------------------------------------------------------------------------------------------
def _count(sd, pattern):
    """Number of distinct integers n such that some key matches ``pattern`` (with a group)."""
    found = set()
    rx = re.compile(pattern)
    for k in sd:
        m = rx.match(k)
        if m:
            found.add(int(m.group(1)))
    return len(found)


def reference_forward(
    state_dict,
    x,
    *,
    num_heads,
    window_size,
    sem_window_size,
    sem_windowed,
    patch_size=4,
    qk_scale=None,
    eps=1e-5,
):
    """
    Slow float64 forward pass of a SeMask Swin backbone.

    Args:
        state_dict (dict[str, Tensor]): backbone weights with the official key names
            (``tests/data/official_keys``, without the ``backbone.`` prefix).
            ``attn.relative_position_index`` is ignored.
        x (Tensor): (B, 3, H, W) input.
        num_heads (list[int]): attention heads per stage.
        window_size (int): Swin window size W (shift W // 2 in odd blocks).
        sem_window_size (int): window size of the windowed semantic layers.
        sem_windowed (list[bool]): per stage, windowed (True) or global (False) semantic layer.
        patch_size (int): patch-embedding size.
        qk_scale (float or None): attention scale; None means head_dim ** -0.5.
        eps (float): LayerNorm epsilon.

    Returns:
        dict[str, Tensor]: ``res{i+2}`` (B, C_i, H_i, W_i) after ``norm{i}`` (for stages whose
        ``norm{i}`` exists), and, for stages with a semantic layer, ``res{i+2}_prior``
        (B, K, H_i, W_i), the raw prior logits.
    """
    sd = {k: v.detach().to(torch.float64) for k, v in state_dict.items()}
    x = x.to(torch.float64)
    num_stages = _count(sd, r"layers\.(\d+)\.")
    ws, sws = window_size, sem_window_size
    outs = {}
    per_image = []
    for b in range(x.shape[0]):
        img_outs = {}
        y = _patch_embed(x[b], sd, patch_size, eps)
        for i in range(num_stages):
            lp = f"layers.{i}."
            for j in range(_count(sd, rf"layers\.{i}\.blocks\.(\d+)\.")):
                shift = ws // 2 if j % 2 == 1 else 0
                y = _swin_block(y, sd, f"{lp}blocks.{j}.", num_heads[i], ws, shift, qk_scale, eps)
            num_inj = _count(sd, rf"layers\.{i}\.semantic_layer\.class_injection\.(\d+)\.")
            if num_inj > 0:
                y, prior = _semantic_layer(
                    y, sd, f"{lp}semantic_layer.", num_inj, sem_windowed[i], sws, eps
                )
                img_outs[f"res{i + 2}_prior"] = prior.permute(2, 0, 1)
            if f"norm{i}.weight" in sd:  # output norms exist only for returned stages
                normed = _layer_norm(y, sd[f"norm{i}.weight"], sd[f"norm{i}.bias"], eps)
                img_outs[f"res{i + 2}"] = normed.permute(2, 0, 1)
            if f"{lp}downsample.reduction.weight" in sd:
                y = _patch_merging(y, sd, f"{lp}downsample.", eps)
        per_image.append(img_outs)
    for k in per_image[0]:
        outs[k] = torch.stack([o[k] for o in per_image], dim=0)
    return outs
