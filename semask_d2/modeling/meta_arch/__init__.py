"""SeMask meta-architectures and heads. Importing it registers them."""

from .branch_mask_former_head import BranchMaskFormerHead
from .semask_fpn_head import SeMaskFPNHead
from .semask_mask_former import SeMaskMaskFormer
from .semask_semantic_seg import SeMaskSemanticSegmentor
