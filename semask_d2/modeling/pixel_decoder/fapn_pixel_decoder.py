"""
SeMask-FaPN's pixel decoder (official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/fapn.py``, class ``PixelFANDecoder``): MaskFormer's FPN pixel decoder whose
top-down merges go through FaPN's :class:`FeatureAlign`. Registered under its official name.
Written for semask-d2; no code copied. Parameter names equal the official ones, so
``sem_seg_head.pixel_decoder.*`` weights of official checkpoints load as is.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from .build import PIXEL_DECODER_REGISTRY
from .feature_align import FeatureAlign

__all__ = ["PixelFANDecoder"]

# The transformer decoder reads three scales round-robin (the three coarsest maps).
_NUM_MULTI_SCALE_FEATURES = 3


@PIXEL_DECODER_REGISTRY.register()
class PixelFANDecoder(nn.Module):
    """
    Feature-aligned FPN over every input level, coarse to fine:

        y = layer_n(coarsest)                  # 3x3 conv + norm + ReLU, no adapter
        for each finer level k (n-1, ..., 1):
            lat = adapter_k(x_k)               # 1x1 conv + norm
            y = layer_k(align_k(lat, lat + nearest_up(y)))

    ``mask_features`` is a 3x3 conv (with bias) on the finest map. State-dict keys per level k
    < n: ``adapter_k.*``, ``align_k.*``, ``layer_k.*``; then ``layer_n.*``, ``mask_features.*``.
    Official quirk kept: ``align_k.offset.norm`` and ``layer_k.norm`` are one module (two
    state-dict keys, parameters counted once).
    """

    @configurable
    def __init__(
        self, input_shape: Dict[str, ShapeSpec], *, conv_dim: int, mask_dim: int, norm: str
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): shapes of the backbone features the decoder
                reads; no other keys.
            conv_dim (int): channels of all internal maps (a multiple of 8, the deformable
                groups, and of 32 for GroupNorm).
            mask_dim (int): channels of the mask features.
            norm (str): detectron2 norm of the FPN convs (`get_norm`), e.g. "GN".
        """
        super().__init__()
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]
        use_bias = norm == ""
        for idx, (_, shape) in enumerate(by_stride, start=1):
            if idx == len(by_stride):
                # The coarsest level has no lateral map to merge with: no adapter, no align.
                self.add_module(f"layer_{idx}", self._output_conv(shape.channels, conv_dim, norm))
                continue
            adapter = Conv2d(
                shape.channels,
                conv_dim,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
            )
            weight_init.c2_xavier_fill(adapter)
            layer = self._output_conv(conv_dim, conv_dim, norm)
            self.add_module(f"adapter_{idx}", adapter)
            self.add_module(f"align_{idx}", FeatureAlign(conv_dim, norm=layer.norm))
            self.add_module(f"layer_{idx}", layer)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @staticmethod
    def _output_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
        conv = Conv2d(
            in_channels,
            conv_dim,
            kernel_size=3,
            padding=1,
            bias=norm == "",
            norm=get_norm(norm, conv_dim),
            activation=F.relu,
        )
        weight_init.c2_xavier_fill(conv)
        return conv

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            # Other backbone outputs (e.g. SeMask's res*_prior maps) are not decoder inputs.
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, None, List[torch.Tensor]]:
        """
        Args:
            features (dict[str, Tensor]): backbone maps (N, C_f, H_f, W_f) for every name in
                `in_features`; other keys are ignored.

        Returns:
            tuple:
            * mask_features (Tensor): (N, mask_dim, H, W) at the finest input stride.
            * None: there is no transformer encoder (as the official FPN-style decoders).
            * list[Tensor]: the first three top-down maps, coarse to fine (1/32, 1/16, 1/8 with
              res2..res5), each (N, conv_dim, h_l, w_l).
        """
        num_levels = len(self.in_features)
        y = getattr(self, f"layer_{num_levels}")(features[self.in_features[-1]])
        multi_scale = [y]
        for idx in range(num_levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{idx}")(features[self.in_features[idx - 1]])
            top_down = F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            aligned = getattr(self, f"align_{idx}")(lateral, lateral + top_down)
            y = getattr(self, f"layer_{idx}")(aligned)
            if len(multi_scale) < _NUM_MULTI_SCALE_FEATURES:
                multi_scale.append(y)
        return self.mask_features(y), None, multi_scale

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
