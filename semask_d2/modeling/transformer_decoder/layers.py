"""
Building blocks of the masked transformer decoder: self-attention, masked cross-attention and
FFN layers on batch-first query tensors, the MLP of the mask-embedding head, and the input
projection and matrix init that MaskFormer's DETR-style predictor shares.

Written for semask-d2 from the Mask2Former paper (arXiv 2112.01527) and facebookresearch/Mask2Former
``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``. Attribute names
(`self_attn`, `multihead_attn`, `linear1`, `linear2`, `norm`, `layers`) follow the official
Mask2Former checkpoints so that they load unchanged. Dropout is left out: the official decoder
hard-codes 0.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.layers import Conv2d

from ..linear import Linear, linear

__all__ = [
    "CrossAttentionLayer",
    "FFNLayer",
    "MLP",
    "SelfAttentionLayer",
    "input_projection",
    "xavier_init",
]


def xavier_init(module: nn.Module) -> None:
    """xavier_uniform_ on every matrix of `module`, in parameter order."""
    # Official init: xavier_uniform on every matrix; vectors keep their defaults (the attention
    # biases are zero, the LayerNorm weights one).
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def input_projection(in_channels: int, hidden_dim: int, enforce: bool) -> nn.Module:
    """
    The projection of a feature map to the queries' channels: a 1x1 conv (c2 xavier fill), or
    the identity when `in_channels == hidden_dim` and `enforce` is False.
    """
    if in_channels == hidden_dim and not enforce:
        # An empty Sequential is the identity and adds no state-dict keys, as official.
        return nn.Sequential()
    proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
    weight_init.c2_xavier_fill(proj)
    return proj


def _multi_head_attention(
    attn: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocked: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    What a batch-first `nn.MultiheadAttention` without dropout computes with
    `need_weights=False`, from its own parameters (so the state-dict keys stay the official
    ones), calling `scaled_dot_product_attention` directly: the module would first turn the
    boolean mask into a float copy of it.

    Args:
        attn (nn.MultiheadAttention): holds `in_proj_weight`/`in_proj_bias` (q, k, v stacked)
            and `out_proj`.
        query (Tensor): (B, Q, C).
        key, value (Tensor): (B, S, C).
        blocked (Tensor or None): (B * nheads, Q, S) bool, True where a query may not attend.
    Returns:
        Tensor: (B, Q, C).
    """
    heads = attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    q = split_heads(linear(query, w_q, b_q))
    k = split_heads(linear(key, w_k, b_k))
    v = split_heads(linear(value, w_v, b_v))
    allowed = None
    if blocked is not None:
        blocked = blocked.unflatten(0, (query.shape[0], heads))
        if blocked.stride(1) == 0:
            # A broadcast view: every head has the same mask, so one is passed and broadcast
            # (SDPA converts boolean masks to float ones, at the size it is given).
            blocked = blocked[:, :1]
        # SDPA's boolean masks mark the keys that may be attended: the opposite convention.
        allowed = ~blocked
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return attn.out_proj(out.transpose(1, 2).flatten(2))


class SelfAttentionLayer(nn.Module):
    """
    Self-attention among the queries with a residual and LayerNorm (post-norm by default).
    Queries and keys carry the positional query embedding; values do not.
    """

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        """
        Args:
            d_model (int): channels of the queries.
            nhead (int): attention heads.
            normalize_before (bool): pre-norm instead of post-norm.
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        xavier_init(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tgt (Tensor): (B, Q, C) queries.
            query_pos (Tensor): (B, Q, C) positional query embedding.
        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        qk = x + query_pos
        out = tgt + _multi_head_attention(self.self_attn, qk, qk, x)
        return out if self.normalize_before else self.norm(out)


class CrossAttentionLayer(nn.Module):
    """
    Masked cross-attention from the queries to one feature level, with a residual and LayerNorm
    (post-norm by default).
    """

    def __init__(self, d_model: int, nhead: int, normalize_before: bool = False):
        """
        Args:
            d_model (int): channels of the queries and of the memory.
            nhead (int): attention heads.
            normalize_before (bool): pre-norm instead of post-norm.
        """
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        xavier_init(self)

    def forward(
        self,
        tgt: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        query_pos: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            tgt (Tensor): (B, Q, C) queries.
            key (Tensor): (B, S, C) memory plus its positional encoding; the caller adds them
                once per level instead of once per layer.
            value (Tensor): (B, S, C) memory.
            query_pos (Tensor): (B, Q, C) positional query embedding.
            attn_mask (Tensor or None): (B * nhead, Q, S) bool, True where a query may not
                attend. Rows must not be all True (the softmax would give NaN).
        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        out = tgt + _multi_head_attention(self.multihead_attn, x + query_pos, key, value, attn_mask)
        return out if self.normalize_before else self.norm(out)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward network with a residual and LayerNorm (post-norm by default)."""

    def __init__(self, d_model: int, dim_feedforward: int, normalize_before: bool = False):
        """
        Args:
            d_model (int): input and output channels.
            dim_feedforward (int): hidden channels.
            normalize_before (bool): pre-norm instead of post-norm.
        """
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        xavier_init(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        """
        Args:
            tgt (Tensor): (B, Q, C) queries.
        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        x = self.norm(tgt) if self.normalize_before else tgt
        hidden = linear(x, self.linear1.weight, self.linear1.bias, relu=True)
        out = tgt + self.linear2(hidden)
        return out if self.normalize_before else self.norm(out)


class MLP(nn.Module):
    """Stack of linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        """
        Args:
            input_dim (int): input channels.
            hidden_dim (int): channels between layers.
            output_dim (int): output channels.
            num_layers (int): number of linear layers.
        """
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (..., input_dim).
        Returns:
            Tensor: (..., output_dim).
        """
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
