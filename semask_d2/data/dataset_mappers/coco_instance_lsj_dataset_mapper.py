"""
Training mapper of COCO instance segmentation with large-scale jitter (the behaviour of
Mask2Former's ``coco_instance_lsj`` mapper, ``COCOInstanceNewBaselineDatasetMapper``), which
also emits the per-pixel labels of SeMask's prior loss.
"""

from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_segment_dataset_mapper import LSJDatasetMapperMixin
from .registration import register_training_mapper

__all__ = ["COCOInstanceLSJDatasetMapper"]


@register_training_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(LSJDatasetMapperMixin, MaskFormerInstanceDatasetMapper):
    """
    :class:`MaskFormerInstanceDatasetMapper` with large-scale jitter
    (:func:`build_lsj_augmentations`), padding to ``INPUT.IMAGE_SIZE`` squared, ``gt_boxes``
    (XYXY, from the masks) and no empty instances: an instance whose mask the crop removed
    is dropped. Crowd regions still label the prior loss's map.
    """

    drop_empty_instances = True
