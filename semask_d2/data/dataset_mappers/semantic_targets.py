"""
Per-pixel class labels derived from panoptic segments or instance masks, for SeMask's semantic
prior loss (``loss_cate``) on datasets whose records have no semantic label file.

The rules:

* every pixel of a segment gets the segment's contiguous class, crowd segments included (a
  crowd is a region of known class whose instances are not told apart);
* pixels that no segment covers get the ignore value;
* pixels covered by segments of *different* classes get the ignore value (their class is
  ambiguous); overlapping segments of one class keep it.

Panoptic segments never overlap, so for a COCO panoptic record this is the semantic map that
Mask2Former's ``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`` writes.
"""

from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["labels_from_masks", "labels_from_panoptic"]


def labels_from_masks(
    masks: Sequence[np.ndarray],
    classes: Sequence[int],
    image_size: Tuple[int, int],
    ignore_label: int,
) -> np.ndarray:
    """
    Args:
        masks (list[np.ndarray]): N boolean (or 0/1) (H, W) masks, possibly overlapping.
        classes (list[int]): the N contiguous class ids.
        image_size (tuple[int, int]): (H, W), also for N = 0.
        ignore_label (int): the value of uncovered and ambiguous pixels.

    Returns:
        np.ndarray: (H, W) int64 labels.
    """
    if len(masks) != len(classes):
        raise ValueError(f"{len(masks)} masks for {len(classes)} classes")
    unions: Dict[int, np.ndarray] = {}
    for mask, cls in zip(masks, classes):
        mask = np.asarray(mask, dtype=bool)
        unions[cls] = unions[cls] | mask if cls in unions else mask
    labels = np.full(image_size, ignore_label, dtype=np.int64)
    covered = np.zeros(labels.shape, dtype=bool)
    ambiguous = np.zeros(labels.shape, dtype=bool)
    for cls, union in unions.items():
        ambiguous |= covered & union
        covered |= union
        labels[union] = cls
    labels[ambiguous] = ignore_label
    return labels


def labels_from_panoptic(
    segment_ids: np.ndarray, segments_info: List[Dict], ignore_label: int
) -> np.ndarray:
    """
    Args:
        segment_ids (np.ndarray): (H, W) integer segment ids of a panoptic PNG (0 = void).
        segments_info (list[dict]): the record's segments, each with ``id`` and contiguous
            ``category_id``; crowd segments count like the others.
        ignore_label (int): the value of pixels in no listed segment.

    Returns:
        np.ndarray: (H, W) int64 labels.
    """
    labels = np.full(segment_ids.shape, ignore_label, dtype=np.int64)
    for segment in segments_info:
        labels[segment_ids == segment["id"]] = segment["category_id"]
    return labels
