"""
Training mapper of COCO panoptic with large-scale jitter (the behaviour of Mask2Former's
``coco_panoptic_lsj`` mapper, ``COCOPanopticNewBaselineDatasetMapper``), which also emits the
per-pixel labels of SeMask's prior loss.
"""

from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_segment_dataset_mapper import LSJDatasetMapperMixin
from .registration import register_training_mapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


@register_training_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(LSJDatasetMapperMixin, MaskFormerPanopticDatasetMapper):
    """
    :class:`MaskFormerPanopticDatasetMapper` with large-scale jitter
    (:func:`build_lsj_augmentations`), padding to ``INPUT.IMAGE_SIZE`` squared, and
    ``gt_boxes`` (XYXY, from the masks; zeros for an empty mask).

    Unlike Mask2Former, which reads only the panoptic PNG here, the record's
    ``sem_seg_file_name`` (COCO ``*_with_sem_seg`` registrations) supplies the prior loss's
    labels when present; otherwise they are derived from the segments, which gives the same
    map for COCO.
    """
