"""
SeMask-MSFaPN's pixel decoder (official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/
modeling/pixel_decoder/msdeformattn_fapn.py``, class ``MSDeformAttnPixelFANDecoder``): Mask2Former's
deformable-attention pixel decoder whose FPN levels below the encoder merge through FaPN's
:class:`FeatureAlign`. Registered under its official name. Written for semask-d2; no code copied.
"""

from .build import PIXEL_DECODER_REGISTRY
from .feature_align import FeatureAlignedMerges
from .ms_deform_attn_pixel_decoder import MSDeformAttnPixelDecoder

__all__ = ["MSDeformAttnPixelFANDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelFANDecoder(FeatureAlignedMerges, MSDeformAttnPixelDecoder):
    """
    :class:`MSDeformAttnPixelDecoder` (same arguments, config keys and outputs) except that each
    FPN level below the encoder (res2 with the default features) merges through FaPN's alignment
    (:class:`FeatureAlignedMerges`):

        lat = adapter_k(x_k)
        y = layer_k(align_k(lat, lat + bilinear_up(coarser output)))

    State-dict keys: those of :class:`MSDeformAttnPixelDecoder` plus ``align_k.*`` between
    ``adapter_k.*`` and ``layer_k.*``.
    """
