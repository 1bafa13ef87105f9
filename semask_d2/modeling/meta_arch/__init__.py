"""SeMask meta-architectures and heads. Importing it registers them."""

from .semask_fpn_head import SeMaskFPNHead
from .semask_semantic_seg import SeMaskSemanticSegmentor
