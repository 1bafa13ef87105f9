"""
Multi-scale deformable transformer encoder of Deformable DETR as used by Mask2Former's pixel
decoder (facebookresearch/Mask2Former ``mask2former/modeling/pixel_decoder/msdeformattn.py``).
Written for semask-d2; no code copied. Module and
parameter names equal the reference so official checkpoints load.
"""

from typing import List, Tuple

import torch
from torch import nn

from ..linear import Linear, linear
from .ms_deform_attn import MSDeformAttn

__all__ = ["DeformableEncoderLayer", "DeformableEncoder", "MultiScaleDeformableTransformer"]


class DeformableEncoderLayer(nn.Module):
    """
    Post-norm encoder layer: deformable self-attention over all levels, then a ReLU FFN, each
    followed by dropout, a residual connection and LayerNorm.
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        """
        Args:
            d_model (int): token channels.
            dim_feedforward (int): hidden width of the FFN.
            dropout (float): dropout after the attention, inside and after the FFN.
            n_levels, n_heads, n_points (int): see :class:`MSDeformAttn`.
        """
        super().__init__()
        # Declaration order = the reference state-dict order.
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        # The reference applies xavier_uniform to every matrix of the transformer; biases keep
        # PyTorch's default init. MSDeformAttn initialises itself.
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        """
        Args:
            src (Tensor): (N, S, C) tokens of all levels.
            pos (Tensor): (N or 1, S, C) position + level embeddings.
            reference_points (Tensor): (N or 1, S, L or 1, 2), see :class:`MSDeformAttn`.
            spatial_shapes (list[tuple[int, int]]): (H_l, W_l) per level.

        Returns:
            Tensor: (N, S, C).
        """
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attn))
        hidden = linear(src, self.linear1.weight, self.linear1.bias, relu=True)
        ffn = self.linear2(self.dropout2(hidden))
        return self.norm2(src + self.dropout3(ffn))


class DeformableEncoder(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` sharing positions and reference points."""

    def __init__(self, num_layers: int, **layer_kwargs):
        """
        Args:
            num_layers (int): number of layers.
            layer_kwargs: arguments of :class:`DeformableEncoderLayer`.
        """
        super().__init__()
        self.layers = nn.ModuleList(
            [DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers)]
        )

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
    ) -> torch.Tensor:
        """Same arguments and result as :meth:`DeformableEncoderLayer.forward`."""
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


def pixel_centre_reference_points(
    spatial_shapes: List[Tuple[int, int]], device: torch.device
) -> torch.Tensor:
    """
    Normalised pixel centres ((j + 0.5) / W_l, (i + 0.5) / H_l) of every token of every level.

    Without padding masks every valid ratio is 1, so a token's reference point is the same on
    all levels and one (x, y) per token suffices.

    Returns:
        Tensor: (1, S, 1, 2) float32, tokens in the flattening order of the levels.
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        points.append(grid.reshape(h * w, 2))
    return torch.cat(points)[None, :, None, :]


class MultiScaleDeformableTransformer(nn.Module):
    """
    Encoder-only deformable transformer: flattens the maps of all levels into one token
    sequence, adds a learned per-level embedding to their positions, refines the tokens with a
    :class:`DeformableEncoder` (every token attends to every level) and splits them back.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_heads: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_levels: int = 3,
        n_points: int = 4,
    ):
        """
        Args:
            d_model (int): channels of the maps.
            n_heads (int): attention heads.
            num_encoder_layers (int): encoder depth.
            dim_feedforward (int): FFN width of the layers.
            dropout (float): dropout of the layers.
            n_levels (int): number of input maps.
            n_points (int): sampling points per head and level.
        """
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = DeformableEncoder(
            num_encoder_layers,
            d_model=d_model,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            n_levels=n_levels,
            n_heads=n_heads,
            n_points=n_points,
        )
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            srcs (list[Tensor]): L maps (N, C, H_l, W_l), in the level order of `level_embed`.
            pos (list[Tensor]): L position embeddings (N or 1, C, H_l, W_l).

        Returns:
            list[Tensor]: the L refined maps (N, C, H_l, W_l), channels-last in memory (views
            of the token sequence, no copy).
        """
        spatial_shapes = [(src.shape[2], src.shape[3]) for src in srcs]
        tokens = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        pos_tokens = torch.cat(
            [(p.flatten(2) + e[:, None]).transpose(1, 2) for p, e in zip(pos, self.level_embed)],
            dim=1,
        )
        reference_points = pixel_centre_reference_points(spatial_shapes, tokens.device)
        memory = self.encoder(tokens, pos_tokens, reference_points.to(tokens.dtype), spatial_shapes)
        n, _, c = memory.shape
        chunks = memory.split([h * w for h, w in spatial_shapes], dim=1)
        return [
            chunk.transpose(1, 2).view(n, c, h, w) for chunk, (h, w) in zip(chunks, spatial_shapes)
        ]
