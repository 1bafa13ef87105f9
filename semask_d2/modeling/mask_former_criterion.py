"""
MaskFormer's set criterion (Cheng et al., arXiv 2107.06278; official SeMask-MaskFormer
``mask_former/modeling/criterion.py``): cross-entropy on the classes as in Mask2Former, and on
the matched masks a sigmoid focal loss and dice at full resolution: the predicted masks are
upsampled (bilinear) to the padded target size and every pixel counts, no point sampling.
Written for semask-d2. `loss_cate` comes from the shared
`semask_d2.modeling.semantic_prior.SemanticPriorLoss`.
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from detectron2.config import configurable

from .criterion import BaseSetCriterion
from .mask_former_matcher import MaskFormerHungarianMatcher

__all__ = ["MaskFormerSetCriterion", "focal_mask_loss"]

# MaskFormer's focal-loss parameters (hard-coded in the official criterion and matcher).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def focal_mask_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """
    Args:
        logits (Tensor): (N, P) mask logits at P pixels.
        targets (Tensor): (N, P) binary targets at the same pixels.
        num_masks (float): normaliser.
        alpha, gamma (float): focal-loss parameters.
    Returns:
        Tensor: scalar, sum over masks of the mean sigmoid focal loss over pixels, divided by
        `num_masks`.
    """
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.mean(1).sum() / num_masks


class MaskFormerSetCriterion(BaseSetCriterion):
    """
    `loss_ce`, focal `loss_mask` and `loss_dice` over every pixel of the padded targets (and
    their `_i` auxiliary copies), after :class:`MaskFormerHungarianMatcher` matching.
    """

    @configurable
    def __init__(
        self, *, focal_alpha: float = FOCAL_ALPHA, focal_gamma: float = FOCAL_GAMMA, **base_args
    ):
        """
        Args:
            focal_alpha, focal_gamma (float): focal-loss parameters of `loss_mask`.
            base_args: the arguments of :class:`BaseSetCriterion`.
        """
        super().__init__(**base_args)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return cls.common_config(cfg, MaskFormerHungarianMatcher(cfg))

    def mask_pairs(self, src: torch.Tensor, tgt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits upsampled to the target size, flattened with the targets; see the base."""
        src = F.interpolate(src[:, None], size=tgt.shape[-2:], mode="bilinear", align_corners=False)
        return src.flatten(1), tgt.to(src.dtype).flatten(1)

    def pixel_mask_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_masks: float
    ) -> torch.Tensor:
        """Mean sigmoid focal loss per mask; see the base class."""
        return focal_mask_loss(logits, labels, num_masks, self.focal_alpha, self.focal_gamma)
