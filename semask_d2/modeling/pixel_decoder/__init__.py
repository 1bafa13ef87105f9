"""Pixel decoders for mask-classification heads; importing registers them."""

# The op `ms_deform_attn` is not re-exported: it would shadow its own submodule's name.
from .base_pixel_decoder import BasePixelDecoder
from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .fapn_pixel_decoder import PixelFANDecoder
from .feature_align import FeatureAlign
from .ms_deform_attn import MSDeformAttn
from .ms_deform_attn_pixel_decoder import MSDeformAttnPixelDecoder
from .ms_deform_attn_pixel_fan_decoder import MSDeformAttnPixelFANDecoder
from .position_encoding import PositionEmbeddingSine
