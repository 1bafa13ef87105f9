"""
SeMask-MSFaPN's pixel decoder (official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/msdeformattn_fapn.py``, class ``MSDeformAttnPixelFANDecoder``): Mask2Former's
deformable-attention pixel decoder whose FPN levels below the encoder merge through FaPN's
:class:`FeatureAlign`. Registered under its official name. Written for semask-d2; no code copied.
"""

import torch
from torch import nn

from .build import PIXEL_DECODER_REGISTRY
from .feature_align import FeatureAlign
from .ms_deform_attn_pixel_decoder import MSDeformAttnPixelDecoder

__all__ = ["MSDeformAttnPixelFANDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelFANDecoder(MSDeformAttnPixelDecoder):
    """
    :class:`MSDeformAttnPixelDecoder` (same arguments, config keys and outputs) except that each
    FPN level below the encoder (res2 with the default features) becomes

        lat = adapter_k(x_k)
        y = layer_k(align_k(lat, lat + bilinear_up(coarser output)))

    State-dict keys: those of :class:`MSDeformAttnPixelDecoder` plus ``align_k.*`` between
    ``adapter_k.*`` and ``layer_k.*``. Official quirk kept: ``align_k.offset.norm`` and
    ``layer_k.norm`` are one module (two state-dict keys, parameters counted once).
    """

    def _add_fpn_level(self, idx: int, adapter: nn.Module, layer: nn.Module) -> None:
        self.add_module(f"adapter_{idx}", adapter)
        self.add_module(f"align_{idx}", FeatureAlign(layer.out_channels, norm=layer.norm))
        self.add_module(f"layer_{idx}", layer)

    def _merge_top_down(self, idx: int, lateral: torch.Tensor, top_down: torch.Tensor):
        return getattr(self, f"align_{idx}")(lateral, lateral + top_down)
