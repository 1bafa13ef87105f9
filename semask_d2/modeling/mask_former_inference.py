"""
Per-image inference of mask-classification models (facebookresearch/Mask2Former
``mask2former/maskformer_model.py``, ``semantic_inference`` / ``panoptic_inference`` /
``instance_inference``): turns query class logits and mask logits into a semantic score map, a
panoptic segmentation or instances. Pure functions: thresholds and metadata come in as arguments.
Written for semask-d2.
"""

from typing import Collection, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from detectron2.structures import Boxes, Instances

__all__ = ["instance_inference", "panoptic_inference", "semantic_inference"]


def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
    """
    Args:
        mask_cls (Tensor): (Q, K + 1) class logits, the last column "no object".
        mask_pred (Tensor): (Q, H, W) mask logits.
    Returns:
        Tensor: (K, H, W) scores S[k] = sum_q softmax(mask_cls[q])[k] * sigmoid(mask_pred[q]);
        evaluators take their argmax.
    """
    probs = F.softmax(mask_cls, dim=-1)[:, :-1]
    return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())


def panoptic_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    object_mask_threshold: float,
    overlap_threshold: float,
    thing_ids: Collection[int],
) -> Tuple[torch.Tensor, List[Dict]]:
    """
    Args:
        mask_cls (Tensor): (Q, K + 1) class logits, the last column "no object".
        mask_pred (Tensor): (Q, H, W) mask logits.
        object_mask_threshold (float): keep queries whose top class is not "no object" and
            whose score exceeds this.
        overlap_threshold (float): drop a segment when its argmax area is below this fraction
            of its sigmoid >= 0.5 area.
        thing_ids (collection[int]): contiguous ids of thing classes, i.e.
            `metadata.thing_dataset_id_to_contiguous_id.values()`.
    Returns:
        panoptic_seg (Tensor): (H, W) int32 segment ids, 0 where no segment.
        segments_info (list[dict]): per segment "id" (from 1), "isthing" and "category_id"
            (contiguous); stuff segments of one class are merged into one.
    """
    num_classes = mask_cls.shape[-1] - 1
    scores, labels = F.softmax(mask_cls, dim=-1).max(-1)
    keep = labels.ne(num_classes) & (scores > object_mask_threshold)
    cur_scores, cur_classes, cur_masks = scores[keep], labels[keep], mask_pred[keep].sigmoid()

    panoptic_seg = torch.zeros(mask_pred.shape[-2:], dtype=torch.int32, device=mask_pred.device)
    segments_info = []
    if cur_masks.shape[0] == 0:
        return panoptic_seg, segments_info

    # Each pixel goes to the query with the highest score-weighted mask probability.
    owner = (cur_scores[:, None, None] * cur_masks).argmax(0)
    thing_ids = set(thing_ids)
    stuff_segment = {}
    for k, pred_class in enumerate(cur_classes.tolist()):
        isthing = pred_class in thing_ids
        owned = owner == k
        confident = cur_masks[k] >= 0.5
        mask = owned & confident
        owned_area, confident_area = owned.sum().item(), confident.sum().item()
        if owned_area == 0 or confident_area == 0 or not mask.any():
            continue
        # Official ratio: argmax area (not the intersection) over the confident area.
        if owned_area / confident_area < overlap_threshold:
            continue
        if not isthing and pred_class in stuff_segment:
            panoptic_seg[mask] = stuff_segment[pred_class]
            continue
        segment_id = len(segments_info) + 1
        if not isthing:
            stuff_segment[pred_class] = segment_id
        panoptic_seg[mask] = segment_id
        segments_info.append({"id": segment_id, "isthing": isthing, "category_id": pred_class})
    return panoptic_seg, segments_info


def instance_inference(
    mask_cls: torch.Tensor,
    mask_pred: torch.Tensor,
    *,
    topk: int,
    thing_ids: Optional[Collection[int]] = None,
) -> Instances:
    """
    Args:
        mask_cls (Tensor): (Q, K + 1) class logits, the last column "no object".
        mask_pred (Tensor): (Q, H, W) mask logits.
        topk (int): keep the `topk` highest (query, class) scores among the Q * K.
        thing_ids (collection[int] or None): contiguous ids of thing classes; when given (as
            when panoptic inference is on) only those classes are kept.
    Returns:
        Instances: of image size (H, W), sorted by class score, with `pred_masks` (N, H, W)
        float 0/1 (mask logit > 0), `pred_boxes` all-zero Boxes, `scores` = class score times
        the mean sigmoid inside the mask, and `pred_classes` int64.
    """
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[-1] - 1
    scores = F.softmax(mask_cls, dim=-1)[:, :-1].flatten()
    # Sorted (official: unsorted), so that results do not depend on the topk implementation.
    class_scores, index = scores.topk(min(topk, num_queries * num_classes), sorted=True)
    labels, query = index % num_classes, index // num_classes
    if thing_ids is not None:
        thing_ids = set(thing_ids)
        is_thing = torch.tensor([c in thing_ids for c in labels.tolist()], dtype=torch.bool)
        is_thing = is_thing.to(labels.device)
        class_scores, labels, query = class_scores[is_thing], labels[is_thing], query[is_thing]
    masks = mask_pred[query]

    result = Instances(tuple(mask_pred.shape[-2:]))
    result.pred_masks = (masks > 0).float()
    result.pred_boxes = Boxes(torch.zeros(masks.shape[0], 4, device=masks.device))
    inside = result.pred_masks.flatten(1)
    mask_scores = (masks.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    result.scores = class_scores * mask_scores
    result.pred_classes = labels
    return result
