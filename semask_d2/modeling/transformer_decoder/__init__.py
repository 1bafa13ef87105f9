"""Transformer decoders of the Mask2Former head; importing registers them."""

from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .multi_scale_masked_transformer_decoder import MultiScaleMaskedTransformerDecoder
