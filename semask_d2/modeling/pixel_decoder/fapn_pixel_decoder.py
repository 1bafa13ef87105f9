"""
SeMask-FaPN's pixel decoder (official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/fapn.py``, class ``PixelFANDecoder``): MaskFormer's FPN pixel decoder whose
top-down merges go through FaPN's :class:`FeatureAlign`. Registered under its official name.
Written for semask-d2; no code copied. Parameter names equal the official ones, so
``sem_seg_head.pixel_decoder.*`` weights of official checkpoints load as is.
"""

from .base_pixel_decoder import BasePixelDecoder
from .build import PIXEL_DECODER_REGISTRY
from .feature_align import FeatureAlignedMerges

__all__ = ["PixelFANDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class PixelFANDecoder(FeatureAlignedMerges, BasePixelDecoder):
    """
    :class:`BasePixelDecoder` (same arguments, config keys and outputs; `conv_dim` also a
    multiple of 8, the deformable groups) with feature-aligned top-down merges
    (:class:`FeatureAlignedMerges`), coarse to fine:

        y = layer_n(coarsest)                  # 3x3 conv + norm + ReLU, no adapter
        for each finer level k (n-1, ..., 1):
            lat = adapter_k(x_k)               # 1x1 conv + norm
            y = layer_k(align_k(lat, lat + nearest_up(y)))

    ``mask_features`` is a 3x3 conv (with bias) on the finest map. State-dict keys per level k
    < n: ``adapter_k.*``, ``align_k.*``, ``layer_k.*``; then ``layer_n.*``, ``mask_features.*``.
    """
