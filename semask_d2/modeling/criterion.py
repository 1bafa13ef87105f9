"""
Set-prediction losses of mask classification: after Hungarian matching, cross-entropy on the
classes of all queries and a per-pixel loss and dice on the matched masks, for the final
prediction and (deep supervision) every auxiliary one (:class:`BaseSetCriterion`). Here also
Mask2Former's criterion (Cheng et al., arXiv 2112.01527; facebookresearch/Mask2Former
``mask2former/modeling/criterion.py``), with point-sampled sigmoid BCE and dice; MaskFormer's
full-resolution focal version is in ``mask_former_criterion.py``. Written for semask-d2. The SeMask
prior loss `loss_cate` is computed by `semask_d2.modeling.semantic_prior.SemanticPriorLoss`, not
here.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm

from .mask_point_sampling import MaskTable, grid_sample_points, uniform_grid
from .matcher import HungarianMatcher
from .point_mask_losses import dice_loss, point_mask_losses

__all__ = ["BaseSetCriterion", "SetCriterion"]

Indices = List[Tuple[torch.Tensor, torch.Tensor]]


def _uncertainty_(logits: torch.Tensor) -> torch.Tensor:
    # Points whose logit is closest to 0 are the least certain. In place: the sampled logits
    # are a temporary.
    return logits.abs_().neg_()


class BaseSetCriterion(nn.Module):
    """
    Matches predictions to targets and computes `loss_ce`, `loss_mask` and `loss_dice` (suffixed
    `_i` for auxiliary output i). Subclasses say which mask logits and labels the mask losses
    compare (:meth:`mask_pairs`) and the per-pixel mask loss (:meth:`pixel_mask_loss`), or
    replace :meth:`loss_masks` with :meth:`prepare_targets` (as :class:`SetCriterion`). The
    returned losses are unweighted; `weight_dict` holds the factors the meta-architecture
    applies (and losses missing from it are dropped there).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        deep_supervision: bool = True,
    ):
        """
        Args:
            num_classes (int): K, number of classes without "no object".
            matcher (nn.Module): returns per image (query indices, target indices).
            weight_dict (dict[str, float]): loss name -> weight, for the meta-architecture.
            eos_coef (float): class weight of "no object" in the cross-entropy.
            deep_supervision (bool): also compute the losses of "aux_outputs".
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.deep_supervision = deep_supervision
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        # Persistent: official checkpoints hold `criterion.empty_weight`.
        self.register_buffer("empty_weight", empty_weight)

    @staticmethod
    def common_config(cfg, matcher: nn.Module) -> Dict:
        """The constructor arguments shared by the subclasses, read from `cfg`."""
        mf = cfg.MODEL.MASK_FORMER
        weight_dict = {
            "loss_ce": mf.CLASS_WEIGHT,
            "loss_mask": mf.MASK_WEIGHT,
            "loss_dice": mf.DICE_WEIGHT,
        }
        if mf.DEEP_SUPERVISION:
            # One auxiliary prediction per decoder layer: DEC_LAYERS - 1 of them.
            weight_dict.update(
                {
                    f"{k}_{i}": v
                    for i in range(mf.DEC_LAYERS - 1)
                    for k, v in list(weight_dict.items())
                }
            )
        # No `loss_cate` entry: SemanticPriorLoss returns it already weighted by CATE_WEIGHT.
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": matcher,
            "weight_dict": weight_dict,
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "deep_supervision": mf.DEEP_SUPERVISION,
        }

    def prepare_targets(self, targets: List[Dict]) -> List[Dict]:
        """The targets as the matcher and :meth:`loss_masks` read them; here unchanged."""
        return targets

    def mask_pairs(self, src: torch.Tensor, tgt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            src (Tensor): (N, h, w) matched mask logits.
            tgt (Tensor): (N, H, W) their binary target masks (bool as stored), zero-padded to
                the batch size.
        Returns:
            tuple[Tensor, Tensor]: (N, P) logits and (N, P) labels the mask losses compare.
        """
        raise NotImplementedError

    def pixel_mask_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, num_masks: float
    ) -> torch.Tensor:
        """
        Args:
            logits, labels (Tensor): (N, P) from :meth:`mask_pairs`.
            num_masks (float): normaliser.
        Returns:
            Tensor: scalar `loss_mask`.
        """
        raise NotImplementedError

    def forward(
        self, outputs: Dict, targets: List[Dict[str, torch.Tensor]]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            outputs (dict): "pred_logits" (B, Q, K + 1), "pred_masks" (B, Q, h, w) and
                optionally "aux_outputs" (list of dicts with the same two keys).
            targets (list[dict]): per image, "labels" (T,) int64 and "masks" (T, H, W) binary;
                sizes may differ between images (masks are zero-padded to the largest).
        Returns:
            dict[str, Tensor]: scalar losses `loss_ce`, `loss_mask`, `loss_dice`, and the same
            with suffix `_i` for each auxiliary output i.
        """
        num_masks = self._num_masks(targets, outputs["pred_logits"].device)
        targets = self.prepare_targets(targets)
        losses = self._losses(outputs, targets, num_masks)
        if self.deep_supervision:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                aux_losses = self._losses(aux, targets, num_masks)
                losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    @staticmethod
    def _num_masks(targets: List[Dict[str, torch.Tensor]], device: torch.device) -> float:
        """Average number of GT masks per process, at least 1."""
        num_masks = torch.tensor(
            [float(sum(len(t["labels"]) for t in targets))], dtype=torch.float, device=device
        )
        world_size = comm.get_world_size()
        if world_size > 1:
            torch.distributed.all_reduce(num_masks)
        return torch.clamp(num_masks / world_size, min=1).item()

    def _losses(
        self,
        outputs: Dict[str, torch.Tensor],
        targets: List[Dict[str, torch.Tensor]],
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        indices = self.matcher(outputs, targets)
        losses = {"loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices)}
        losses.update(self.loss_masks(outputs["pred_masks"], targets, indices, num_masks))
        return losses

    def loss_labels(
        self, logits: torch.Tensor, targets: List[Dict[str, torch.Tensor]], indices: Indices
    ) -> torch.Tensor:
        """
        Args:
            logits (Tensor): (B, Q, K + 1) class logits.
            targets (list[dict]): per image "labels" (T,).
            indices (list[tuple[Tensor, Tensor]]): matcher output.
        Returns:
            Tensor: scalar weighted-mean cross-entropy; unmatched queries target class K.
        """
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, query_idx = self._query_index(indices)
        matched = [t["labels"][tgt] for t, (_, tgt) in zip(targets, indices)]
        target_classes[batch_idx, query_idx] = torch.cat(matched).to(logits.device)
        return F.cross_entropy(logits.float().transpose(1, 2), target_classes, self.empty_weight)

    def loss_masks(
        self,
        masks: torch.Tensor,
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            masks (Tensor): (B, Q, h, w) mask logits.
            targets (list[dict]): per image "masks" (T, H, W).
            indices (list[tuple[Tensor, Tensor]]): matcher output.
            num_masks (float): normaliser.
        Returns:
            dict[str, Tensor]: scalar "loss_mask" and "loss_dice".
        """
        batch_idx, query_idx = self._query_index(indices)
        src = masks[batch_idx, query_idx]
        if src.shape[0] == 0:
            return self._zero_mask_losses(masks)
        # As stored: subclasses read only what they need of the full-resolution targets.
        tgt = self._matched_target_masks(targets, indices)
        logits, labels = self.mask_pairs(src, tgt)
        return {
            "loss_mask": self.pixel_mask_loss(logits, labels, num_masks),
            "loss_dice": dice_loss(logits, labels, num_masks),
        }

    @staticmethod
    def _zero_mask_losses(masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """No matched pair in the batch: zero losses that still belong to the graph."""
        zero = masks.sum() * 0.0
        return {"loss_mask": zero, "loss_dice": zero.clone()}

    @staticmethod
    def _query_index(indices: Indices) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image index, query index) of every matched pair, images in order."""
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        query_idx = torch.cat([src for src, _ in indices])
        return batch_idx, query_idx

    @staticmethod
    def _matched_target_masks(
        targets: List[Dict[str, torch.Tensor]],
        indices: Indices,
        dtype: Optional[torch.dtype] = None,
    ) -> torch.Tensor:
        """
        Returns:
            Tensor: (N, H_max, W_max) the matched GT masks in matching order, zero-padded at
            the bottom and right to the largest size in the batch so that normalised point
            coordinates mean the same pixel in every image; in `dtype`, or as stored (bool)
            when None.
        """
        height = max(t["masks"].shape[-2] for t in targets)
        width = max(t["masks"].shape[-1] for t in targets)
        matched = []
        for t, (_, tgt) in zip(targets, indices):
            m = t["masks"][tgt] if dtype is None else t["masks"][tgt].to(dtype)
            matched.append(F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])))
        return torch.cat(matched)


class SetCriterion(BaseSetCriterion):
    """
    Mask2Former's criterion: the mask losses (mean sigmoid BCE and dice) are computed at
    `num_points` points per matched mask, mostly where the prediction is least certain.
    """

    @configurable
    def __init__(
        self,
        *,
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        **base_args,
    ):
        """
        Args:
            num_points (int): points sampled per matched mask for the mask losses.
            oversample_ratio (float): candidate points drawn per sampled point.
            importance_sample_ratio (float): fraction of points taken among the most uncertain
                candidates; the rest are uniform.
            base_args: the arguments of :class:`BaseSetCriterion`.
        """
        super().__init__(**base_args)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            **cls.common_config(cfg, HungarianMatcher(cfg)),
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
        }

    def prepare_targets(self, targets: List[Dict]) -> List[Dict]:
        """
        The batch's target masks laid out once (:class:`MaskTable`) for the point reads of the
        matcher and the mask losses of every prediction; each target's "masks" becomes its
        :class:`ImageMasks`.
        """
        table = MaskTable([t["masks"] for t in targets])
        return [dict(t, masks=table.image(b)) for b, t in enumerate(targets)]

    def loss_masks(
        self,
        masks: torch.Tensor,
        targets: List[Dict],
        indices: Indices,
        num_masks: float,
    ) -> Dict[str, torch.Tensor]:
        """
        Mean sigmoid BCE and dice at uncertainty-sampled points; `targets` as returned by
        :meth:`prepare_targets`. See the base class.
        """
        batch_idx, query_idx = self._query_index(indices)
        src = masks[batch_idx, query_idx]
        if src.shape[0] == 0:
            return self._zero_mask_losses(masks)
        table = targets[0]["masks"].table
        rows = torch.cat([table.rows(b, tgt) for b, (_, tgt) in enumerate(indices)])
        with torch.no_grad():
            grid = self._uncertain_points(src[:, None])
            # Normalised to the largest target size, as the padded targets of the official
            # criterion: a smaller image's masks read zeros beyond their size.
            labels = table.sample(grid, rows, table.size)
        loss_mask, loss_dice = point_mask_losses(src, grid, labels, num_masks)
        return {"loss_mask": loss_mask, "loss_dice": loss_dice}

    def _uncertain_points(self, logits: torch.Tensor) -> torch.Tensor:
        """
        PointRend's importance sampling (detectron2 ``get_uncertain_point_coords_with_
        randomness``, the same random draws in the same order): of num_points * oversample_ratio
        uniform candidates, the importance_sample_ratio * num_points least certain, then uniform
        points. The uncertain ones come unsorted (the losses average over points), which makes
        the selection about twice as fast on CPU. Points are drawn in [-1, 1] directly
        (:func:`uniform_grid`, exactly detectron2's points mapped to grid_sample's range).

        Args:
            logits (Tensor): (N, 1, h, w) mask logits.
        Returns:
            Tensor: (N, num_points, 2) (x, y) in [-1, 1].
        """
        n = logits.shape[0]
        candidates = uniform_grid(
            n, int(self.num_points * self.oversample_ratio), 2, device=logits.device
        )
        uncertainty = _uncertainty_(grid_sample_points(logits, candidates)[:, 0])
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        chosen = uncertainty.topk(num_uncertain, dim=1, sorted=False).indices
        grid = candidates.gather(1, chosen[..., None].expand(-1, -1, 2))
        num_random = self.num_points - num_uncertain
        if num_random > 0:
            grid = torch.cat([grid, uniform_grid(n, num_random, 2, device=logits.device)], dim=1)
        return grid
