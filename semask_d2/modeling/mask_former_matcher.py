"""
MaskFormer's Hungarian matcher (Cheng et al., arXiv 2107.06278; facebookresearch/MaskFormer and
official SeMask-MaskFormer ``mask_former/modeling/matcher.py``): the mask costs are a sigmoid
focal cost and a dice cost over every pixel of the prediction, with the targets downsampled
(nearest) to the prediction size. Written for semask-d2.
"""

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from detectron2.config import configurable

from .matcher import BaseHungarianMatcher, batch_dice_cost

__all__ = ["MaskFormerHungarianMatcher", "batch_sigmoid_focal_cost"]


def batch_sigmoid_focal_cost(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """
    Mean over pixels of the sigmoid focal loss (RetinaNet, arXiv 1708.02002) of every prediction
    against every target.

    Args:
        logits (Tensor): (N, P) mask logits at P pixels.
        targets (Tensor): (M, P) binary target masks at the same pixels.
        alpha (float): weight of positive pixels (negatives get 1 - alpha); < 0 disables it.
        gamma (float): focusing exponent.
    Returns:
        Tensor: (N, M) costs.
    """
    probs = logits.sigmoid()
    # Focal loss of each pixel if its target were 1 (pos) or 0 (neg); two matrix products then
    # give every pair, as for the BCE cost.
    pos = (1 - probs) ** gamma * F.softplus(-logits)
    neg = probs**gamma * F.softplus(logits)
    if alpha >= 0:
        pos = alpha * pos
        neg = (1 - alpha) * neg
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


class MaskFormerHungarianMatcher(BaseHungarianMatcher):
    """
    The mask costs are focal and dice over all pixels of the predicted masks; target masks are
    resized (nearest) to the prediction size first.
    """

    @configurable
    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        """
        Args:
            cost_class (float): weight of the classification cost.
            cost_mask (float): weight of the focal mask cost.
            cost_dice (float): weight of the dice cost.
            focal_alpha, focal_gamma (float): focal cost parameters (MaskFormer: 0.25, 2).
        """
        super().__init__(cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return cls.cost_weights(cfg)

    def mask_costs(
        self, masks: torch.Tensor, tgt_masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Focal and dice costs over the prediction's pixels; see the base class."""
        tgt = F.interpolate(tgt_masks[:, None].float(), size=masks.shape[-2:], mode="nearest")[:, 0]
        pred, tgt = masks.flatten(1), tgt.flatten(1)
        focal = batch_sigmoid_focal_cost(pred, tgt, self.focal_alpha, self.focal_gamma)
        return focal, batch_dice_cost(pred, tgt)
