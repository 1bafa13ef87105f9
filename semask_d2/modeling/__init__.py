"""SeMask modeling: importing it registers the backbones, meta-architectures and heads."""
from . import meta_arch  # noqa: F401  (registers meta-architectures and heads)
from .backbone import D2SeMaskSwinTransformer
from .semantic_prior import SemanticPriorLoss
