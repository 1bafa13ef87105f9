"""
Sine position embedding of DETR (Carion et al., arXiv 2005.12872), as Mask2Former uses it without
a padding mask (``mask2former/modeling/transformer_decoder/position_encoding.py``). Written for
semask-d2 from the definition; no code copied.
"""

import math

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """
    Parameter-free 2-D sine/cosine embedding of pixel positions.

    Row index i = 1..H (column j = 1..W), optionally normalised to ``i / (H + 1e-6) * scale``,
    is divided by ``temperature ** (2 * (k // 2) / num_pos_feats)`` for k < num_pos_feats; even
    k take the sine and odd k the cosine. Channels are the y half, then the x half.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
        """
        Args:
            num_pos_feats (int): channels per axis (even); the output has twice as many.
            temperature (float): base of the geometric frequency progression.
            normalize (bool): map positions to (0, scale] before taking frequencies.
            scale (float): range of normalised positions; only used when `normalize`.
        """
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def _embed_axis(self, size: int, device: torch.device) -> torch.Tensor:
        """Returns (size, num_pos_feats) embeddings of positions 1..size along one axis."""
        # float32 as the reference computes it, whatever the input dtype.
        pos = torch.arange(1, size + 1, dtype=torch.float32, device=device)
        if self.normalize:
            pos = pos / (pos[-1:] + 1e-6) * self.scale
        k = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        freqs = self.temperature ** (
            2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats
        )
        angles = pos[:, None] / freqs
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C, H, W); only its shape, device and dtype are used.

        Returns:
            Tensor: (N, 2 * num_pos_feats, H, W), a broadcast view shared by the batch.
        """
        n, _, h, w = x.shape
        pos_y = self._embed_axis(h, x.device)[:, None, :].expand(h, w, self.num_pos_feats)
        pos_x = self._embed_axis(w, x.device)[None, :, :].expand(h, w, self.num_pos_feats)
        pos = torch.cat([pos_y, pos_x], dim=-1).permute(2, 0, 1).to(x.dtype)
        return pos[None].expand(n, -1, -1, -1)
