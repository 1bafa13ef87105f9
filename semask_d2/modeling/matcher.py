"""
Hungarian matching of predicted masks to ground-truth masks, per image, from class and mask
costs: the shared assignment (:class:`BaseHungarianMatcher`) and Mask2Former's point-sampled
costs (facebookresearch/Mask2Former ``mask2former/modeling/matcher.py``). MaskFormer's
full-map focal costs are in ``mask_former_matcher.py``. Written for semask-d2.
"""

from typing import Dict, List, Tuple, Union

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from detectron2.config import configurable

from .mask_point_sampling import ImageMasks, grid_sample_points, sample_masks, uniform_grid

__all__ = [
    "BaseHungarianMatcher",
    "HungarianMatcher",
    "batch_dice_cost",
    "batch_sigmoid_ce_cost",
]


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Mean over points of the sigmoid binary cross-entropy of every prediction against every
    target.

    Args:
        logits (Tensor): (N, P) mask logits at P points.
        targets (Tensor): (M, P) binary (or soft) target masks at the same points.
    Returns:
        Tensor: (N, M) costs.
    """
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), and softplus(x) = softplus(-x) + x:
    # summed over points, sum(softplus(-x)) + sum(x) - x . t, so one matrix product gives all
    # pairs.
    rows = F.softplus(-logits).sum(-1) + logits.sum(-1)
    return (rows[:, None] - logits @ targets.T) / logits.shape[1]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """
    Dice cost 1 - (2 * sum(s * t) + 1) / (sum(s) + sum(t) + 1), s = sigmoid(logits), for every
    prediction against every target.

    Args:
        logits (Tensor): (N, P) mask logits at P points.
        targets (Tensor): (M, P) binary target masks at the same points.
    Returns:
        Tensor: (N, M) costs.
    """
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class BaseHungarianMatcher(nn.Module):
    """
    One-to-one assignment of queries to targets, per image, minimising
    `cost_class * C_class + cost_mask * C_mask + cost_dice * C_dice`, where C_class is minus the
    softmax probability of the target class. Subclasses say where the two mask costs are
    computed (:meth:`mask_costs`). Has no parameters.
    """

    def __init__(self, *, cost_class: float, cost_mask: float, cost_dice: float):
        """
        Args:
            cost_class (float): weight of the classification cost.
            cost_mask (float): weight of the per-pixel mask cost.
            cost_dice (float): weight of the dice cost.
        """
        super().__init__()
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice

    @staticmethod
    def cost_weights(cfg) -> Dict[str, float]:
        """The cost weights from `cfg`: the loss weights of the criterion, as official."""
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
        }

    def mask_costs(
        self, masks: torch.Tensor, tgt_masks: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            masks (Tensor): (Q, H, W) float32 mask logits of one image.
            tgt_masks (Tensor): (T, H', W') binary target masks as stored (bool or float, any
                resolution).
        Returns:
            tuple[Tensor, Tensor]: (Q, T) unweighted per-pixel mask cost and dice cost.
        """
        raise NotImplementedError

    def cost_matrix(
        self,
        logits: torch.Tensor,
        masks: torch.Tensor,
        labels: torch.Tensor,
        tgt_masks: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            logits (Tensor): (Q, K + 1) class logits of one image.
            masks (Tensor): (Q, H, W) mask logits.
            labels (Tensor): (T,) int64 target classes.
            tgt_masks (Tensor): (T, H', W') binary target masks (any resolution).
        Returns:
            Tensor: (Q, T) float32 matching costs.
        """
        cost_class = -logits.float().softmax(-1)[:, labels]
        cost_mask, cost_dice = self.mask_costs(masks.float(), tgt_masks)
        return (
            self.cost_mask * cost_mask + self.cost_class * cost_class + self.cost_dice * cost_dice
        )

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, torch.Tensor], targets: List[Dict[str, torch.Tensor]]
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """
        Args:
            outputs (dict): "pred_logits" (B, Q, K + 1) and "pred_masks" (B, Q, H, W) logits.
            targets (list[dict]): per image, "labels" (T,) int64 and "masks" (T, H', W').
        Returns:
            list[tuple[Tensor, Tensor]]: per image, (query indices, target indices), int64 of
            length min(Q, T), query indices ascending.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        indices = []
        # Costs in float32 even under mixed precision, as official.
        with torch.autocast(device_type=masks.device.type, enabled=False):
            for b, target in enumerate(targets):
                if len(target["labels"]) == 0:
                    empty = torch.empty(0, dtype=torch.int64)
                    indices.append((empty, empty.clone()))
                    continue
                cost = self.cost_matrix(logits[b], masks[b], target["labels"], target["masks"])
                rows, cols = linear_sum_assignment(cost.cpu().numpy())
                indices.append(tuple(torch.as_tensor(i, dtype=torch.int64) for i in (rows, cols)))
        return indices


class HungarianMatcher(BaseHungarianMatcher):
    """
    Mask2Former's matcher: the mask costs (mean sigmoid BCE and dice) are computed at
    `num_points` random points shared by all predicted and target masks of an image.
    """

    @configurable
    def __init__(
        self,
        *,
        num_points: int,
        cost_class: float = 1.0,
        cost_mask: float = 1.0,
        cost_dice: float = 1.0,
    ):
        """
        Args:
            num_points (int): points sampled per image for the mask costs.
            cost_class (float): weight of the classification cost.
            cost_mask (float): weight of the sigmoid cross-entropy mask cost.
            cost_dice (float): weight of the dice cost.
        """
        super().__init__(cost_class=cost_class, cost_mask=cost_mask, cost_dice=cost_dice)
        if num_points <= 0:
            raise ValueError(f"num_points must be positive, got {num_points}")
        self.num_points = num_points

    @classmethod
    def from_config(cls, cfg) -> Dict:
        return {**cls.cost_weights(cfg), "num_points": cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS}

    def _random_points(self, device: torch.device) -> torch.Tensor:
        """
        (1, num_points, 2) uniform (x, y) in [-1, 1]: detectron2's ``torch.rand`` points in
        grid_sample's range, from the same draws; a method so tests can fix it.
        """
        return uniform_grid(1, self.num_points, 2, device=device)

    def mask_costs(
        self, masks: torch.Tensor, tgt_masks: Union[torch.Tensor, ImageMasks]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Mean sigmoid BCE and dice at the random points; see the base class. `tgt_masks` may
        also be the image's masks of the criterion's :class:`MaskTable`.
        """
        grid = self._random_points(masks.device)
        # Masks as channels of one image: every mask is sampled at the same points, no copies.
        pred = grid_sample_points(masks[None], grid)[0]
        if isinstance(tgt_masks, torch.Tensor):
            tgt = sample_masks(tgt_masks, grid)
        else:
            tgt = tgt_masks.sample(grid)
        return batch_sigmoid_ce_cost(pred, tgt), batch_dice_cost(pred, tgt)
