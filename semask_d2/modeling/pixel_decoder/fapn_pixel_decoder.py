"""
SeMask-FaPN's pixel decoder (official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/fapn.py``, class ``PixelFANDecoder``): MaskFormer's FPN pixel decoder whose
top-down merges go through FaPN's :class:`FeatureAlign`. Registered under its official name.
Written for semask-d2; no code copied. Parameter names equal the official ones, so
``sem_seg_head.pixel_decoder.*`` weights of official checkpoints load as is.
"""

import torch
from torch import nn

from .base_pixel_decoder import BasePixelDecoder
from .build import PIXEL_DECODER_REGISTRY
from .feature_align import FeatureAlign

__all__ = ["PixelFANDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class PixelFANDecoder(BasePixelDecoder):
    """
    :class:`BasePixelDecoder` (same arguments, config keys and outputs; `conv_dim` also a
    multiple of 8, the deformable groups) with feature-aligned top-down merges, coarse to fine:

        y = layer_n(coarsest)                  # 3x3 conv + norm + ReLU, no adapter
        for each finer level k (n-1, ..., 1):
            lat = adapter_k(x_k)               # 1x1 conv + norm
            y = layer_k(align_k(lat, lat + nearest_up(y)))

    ``mask_features`` is a 3x3 conv (with bias) on the finest map. State-dict keys per level k
    < n: ``adapter_k.*``, ``align_k.*``, ``layer_k.*``; then ``layer_n.*``, ``mask_features.*``.
    Official quirk kept: ``align_k.offset.norm`` and ``layer_k.norm`` are one module (two
    state-dict keys, parameters counted once).
    """

    def _add_fpn_level(self, idx: int, adapter: nn.Module, layer: nn.Module) -> None:
        self.add_module(f"adapter_{idx}", adapter)
        self.add_module(f"align_{idx}", FeatureAlign(layer.out_channels, norm=layer.norm))
        self.add_module(f"layer_{idx}", layer)

    def _merge_top_down(self, idx: int, lateral: torch.Tensor, top_down: torch.Tensor):
        return getattr(self, f"align_{idx}")(lateral, lateral + top_down)
