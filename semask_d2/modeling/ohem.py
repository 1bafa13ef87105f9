"""
Online hard example mining over pixels, as mmseg's ``OHEMPixelSampler``
(mmsegmentation v0.11 ``mmseg/core/seg/sampler/ohem_pixel_sampler.py``, used by the official
SeMask-FPN configs of SeMask-L ADE20K and of every COCO-Stuff-10k size).
"""

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["OHEMPixelSelector"]


class OHEMPixelSelector:
    """
    Keeps the hard labelled pixels of a batch and marks every other one as ignored, so that a
    loss over the returned labels sees the kept pixels only (mmseg: weight 1 for kept pixels,
    0 for the others).

    With ``thresh`` None (the official SeMask-FPN recipes): the ``min_kept * B`` labelled pixels
    with the highest cross-entropy are kept (all of them when there are fewer).

    With a ``thresh``: p = softmax probability of the target class; with the labelled pixels'
    p sorted ascending, ``threshold = max(thresh, p_sorted[min(min_kept * B, n - 1)])`` and the
    pixels with p < threshold are kept (strictly, as mmseg: when ``min_kept * B >= n`` the pixels
    with the largest p are dropped unless p < thresh).

    The selection runs without gradient.
    """

    def __init__(self, min_kept: int, thresh: Optional[float] = None, ignore_value: int = 255):
        """
        Args:
            min_kept (int): pixels kept at least per image (mmseg ``min_kept``), >= 0.
            thresh (float or None): probability threshold (mmseg ``thresh``), None to rank by
                loss only.
            ignore_value (int): label of unlabelled pixels.
        """
        if min_kept < 0:
            raise ValueError(f"OHEM min_kept must be >= 0, got {min_kept}")
        self.min_kept = min_kept
        self.thresh = thresh
        self.ignore_value = ignore_value

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """
        Args:
            logits (Tensor): (B, K, H, W) class scores at the label size.
            targets (Tensor): (B, H, W) integer labels, ``ignore_value`` where unlabelled.
        Returns:
            Tensor: (B, H, W) labels, ``ignore_value`` at every pixel that is not kept.
        """
        valid = targets != self.ignore_value
        batch_kept = self.min_kept * targets.shape[0]
        if self.thresh is None:
            losses = F.cross_entropy(
                logits.float(), targets, ignore_index=self.ignore_value, reduction="none"
            )[valid]
            hardest = losses.argsort(descending=True, stable=True)[:batch_kept]
            kept = torch.zeros_like(losses, dtype=torch.bool)
            kept[hardest] = True
        else:
            probs = F.softmax(logits.float(), dim=1)
            safe_targets = targets.masked_fill(~valid, 0).unsqueeze(1)
            target_probs = probs.gather(1, safe_targets).squeeze(1)[valid]
            threshold = self.thresh
            if target_probs.numel() > 0:
                ranked = target_probs.sort().values
                threshold = max(threshold, ranked[min(batch_kept, ranked.numel() - 1)].item())
            kept = target_probs < threshold
        selected = torch.full_like(targets, self.ignore_value)
        selected[valid] = torch.where(kept, targets[valid], self.ignore_value)
        return selected
