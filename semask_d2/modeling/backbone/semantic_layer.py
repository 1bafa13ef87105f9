"""
The SeMask semantic layer (Jain et al., arXiv 2112.12782), computed exactly as the official code
does (``SemanticAttention`` in the official SeMask-Mask2Former
``mask2former/modeling/backbone/semask_swin.py``, Picsart-AI-Research/SeMask-Segmentation). Written
for semask-d2; parameter names follow the official checkpoints (``semantic_layer.norm1``,
``class_injection.{n}.mlp_cls_q`` ...).
"""

from typing import Tuple

import torch
from torch import nn

from ..linear import Linear
from .swin_blocks import merge_windows, split_windows, window_order

__all__ = ["SemanticAttention", "SemanticLayer", "SEM_INIT_MODES"]

# "official": the detectron2 SeMask code, where mlp_res and gamma start at 0 and the attention
#   branch never receives a gradient. "mmseg": every Linear trunc_normal(0.02) with zero bias,
#   gamma 0, as the mmseg SeMask-FPN ends up after its init_weights: the branch trains.
SEM_INIT_MODES = ("mmseg", "official")


class SemanticAttention(nn.Module):
    """
    Single-head attention whose queries are per-token class logits (the semantic prior).

    out = gamma * Dropout(mlp_res(softmax(Q Ks^T) V)) + x, with x already layer-normed.
    Official quirks kept on purpose: one head, no 1/sqrt(K) scaling, the residual adds to the
    normalized input.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float = 0.1, init: str = "mmseg"):
        super().__init__()
        self.mlp_cls_q = Linear(dim, num_classes)
        self.mlp_cls_k = Linear(dim, num_classes)
        self.mlp_v = Linear(dim, dim)
        self.mlp_res = Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.gamma = nn.Parameter(torch.zeros(1))
        self._init_weights(init)

    def _init_weights(self, init: str) -> None:
        if init not in SEM_INIT_MODES:
            raise ValueError(
                f"Unknown semantic-layer init {init!r}; expected one of {SEM_INIT_MODES}"
            )
        for layer in (self.mlp_cls_q, self.mlp_cls_k, self.mlp_v, self.mlp_res):
            if init == "official":
                nn.init.kaiming_normal_(layer.weight)
            else:
                nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        if init == "official":
            nn.init.zeros_(self.mlp_res.weight)
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x (Tensor): (B', N, C) normalized tokens.
        Returns:
            (Tensor, Tensor): the prior logits Q (B', N, K) and the output tokens (B', N, C).
        """
        q = self.mlp_cls_q(x)
        # Unscaled, as official. Written out: the K-wide queries and C-wide values send
        # scaled_dot_product_attention to its generic path, which multiplies q and k by the
        # square root of the scale (here 1) and scans the weights for empty rows first.
        weights = torch.bmm(q, self.mlp_cls_k(x).transpose(1, 2)).softmax(-1)
        f = torch.bmm(weights, self.mlp_v(x))
        return q, self.gamma * self.proj_drop(self.mlp_res(f)) + x


class SemanticLayer(nn.Module):
    """
    LayerNorm, then one or more chained :class:`SemanticAttention` modules, either inside
    non-overlapping unshifted windows or over the whole map.

    Official quirk: in windowed mode the normalized map is zero-padded to a multiple of the
    window and the pad tokens take part as keys and values, unmasked.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_blocks: int = 1,
        window_size: int = 7,
        windowed: bool = True,
        dropout: float = 0.1,
        init: str = "mmseg",
    ):
        super().__init__()
        assert num_blocks >= 1, "a semantic layer holds at least one SemanticAttention"
        self.window_size = window_size
        self.windowed = windowed
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList(
            [SemanticAttention(dim, num_classes, dropout, init) for _ in range(num_blocks)]
        )

    def forward(self, x: torch.Tensor, h: int, w: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x (Tensor): (B, h * w, C) tokens.
        Returns:
            (Tensor, Tensor): tokens (B, h * w, C) and the prior logits (B, h * w, K) of the
            last SemanticAttention.
        """
        batch = x.shape[0]
        x = self.norm1(x)
        if self.windowed:
            order = window_order(h, w, self.window_size, 0, x.device)
            x = split_windows(x, order, self.window_size)
        for block in self.class_injection:
            prior, x = block(x)
        if self.windowed:
            x, prior = merge_windows(x, order, batch), merge_windows(prior, order, batch)
        return x, prior
