"""SeMask modeling: importing it registers the backbones, meta-architectures and heads."""

from . import meta_arch, pixel_decoder, transformer_decoder  # noqa: F401  (registration)
from .backbone import D2SeMaskSwinTransformer
from .semantic_prior import SemanticPriorLoss
