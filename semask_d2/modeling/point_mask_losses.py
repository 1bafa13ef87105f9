"""
Mask2Former's two mask losses at sampled points, the mean sigmoid BCE and the dice loss of
matched mask logits (Cheng et al., arXiv 2112.01527), in one autograd function. Written for
semask-d2.

Autograd would keep, for each of the ten predictions of a training step, the matched logit maps,
the (N, P, 2) points, the point logits, their sigmoid and the labels. Both gradients are cheap
to form in the forward pass, so they are formed there and carried back to the mask maps at once:
what is kept is two (N, h, w) gradient maps per prediction. The loss values are computed by the
same operations as :func:`sigmoid_ce_loss` and :func:`dice_loss`.
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .bilinear_sampling import bilinear_sample_backward
from .mask_point_sampling import grid_sample_points

__all__ = ["dice_loss", "point_mask_losses", "sigmoid_ce_loss"]


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Args:
        logits (Tensor): (N, P) mask logits at P points.
        targets (Tensor): (N, P) binary targets at the same points.
        num_masks (float): normaliser.
    Returns:
        Tensor: scalar, sum over masks of the mean BCE over points, divided by `num_masks`.
    """
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """
    Args:
        logits (Tensor): (N, P) mask logits at P points.
        targets (Tensor): (N, P) binary targets at the same points.
        num_masks (float): normaliser.
    Returns:
        Tensor: scalar, sum over masks of 1 - (2 * sum(s * t) + 1) / (sum(s) + sum(t) + 1),
        s = sigmoid(logits), divided by `num_masks`.
    """
    return _dice(logits.sigmoid(), targets, num_masks)[0]


def _dice(
    probs: torch.Tensor, targets: torch.Tensor, num_masks: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The dice loss of :func:`dice_loss` from probabilities, with its per-mask numerator and
    denominator (2 sum(s t) and sum(s) + sum(t))."""
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
    return loss, numerator, denominator


def _to_maps(grad_points: torch.Tensor, maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    The gradients w.r.t. (N, 1, h, w) `maps` of point values with gradients `grad_points`
    (N, G, P): G gradients carried back in one pass over the points, as (N, G, h, w).
    """
    channels = grad_points.shape[1]
    grad_maps, _ = bilinear_sample_backward(
        grad_points[..., None],
        maps.expand(-1, channels, -1, -1),
        grid[:, :, None, :],
        [True, False],
    )
    return grad_maps


class _PointMaskLosses(torch.autograd.Function):
    @staticmethod
    def forward(ctx, masks, grid, labels, num_masks):
        # float32 at least: under autocast the logits may come in bfloat16.
        maps = masks.to(torch.promote_types(masks.dtype, torch.float32))[:, None]
        grid = grid.to(maps.dtype)
        logits = grid_sample_points(maps, grid)[:, 0]
        loss_mask = sigmoid_ce_loss(logits, labels, num_masks)
        probs = logits.sigmoid()
        loss_dice, numerator, denominator = _dice(probs, labels, num_masks)
        # d mean-BCE / d logit = (s - t) / P; d dice / d s_j = ((2a + 1) - 2 t_j (b + 1)) /
        # (b + 1)^2 with a = sum(s t), b = sum(s) + sum(t), and d s / d logit = s (1 - s).
        grad_mask = (probs - labels).div_(logits.shape[1] * num_masks)
        u, v = (numerator + 1)[:, None], (denominator + 1)[:, None]
        grad_dice = (u - 2 * labels * v).div_(v * v * num_masks)
        grad_dice.mul_(probs).mul_(1 - probs)
        grad_maps = _to_maps(torch.stack([grad_mask, grad_dice], dim=1), maps, grid)
        ctx.save_for_backward(grad_maps)
        ctx.dtype = masks.dtype
        return loss_mask, loss_dice

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss_mask, grad_loss_dice):
        (grad_maps,) = ctx.saved_tensors
        grad = grad_maps[:, 0] * grad_loss_mask + grad_maps[:, 1] * grad_loss_dice
        return grad.to(ctx.dtype), None, None, None


def point_mask_losses(
    masks: torch.Tensor, grid: torch.Tensor, labels: torch.Tensor, num_masks: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Args:
        masks (Tensor): (N, h, w) matched mask logits.
        grid (Tensor): (N, P, 2) points (x, y) in [-1, 1] (grid_sample's convention).
        labels (Tensor): (N, P) float32 target values at the points (no gradient).
        num_masks (float): normaliser.
    Returns:
        tuple[Tensor, Tensor]: scalars :func:`sigmoid_ce_loss` and :func:`dice_loss` of the
        bilinear logits at the points; differentiable w.r.t. `masks` only.
    """
    return _PointMaskLosses.apply(masks, grid, labels, num_masks)
