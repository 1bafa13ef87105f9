"""Transformer decoders (predictors) of the mask-classification heads; importing registers them."""

from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .multi_scale_masked_transformer_decoder import MultiScaleMaskedTransformerDecoder
from .transformer_predictor import TransformerPredictor
