"""
Training mapper of COCO panoptic with large-scale jitter (the behaviour of Mask2Former's
``coco_panoptic_lsj`` mapper, ``COCOPanopticNewBaselineDatasetMapper``), which also emits the
per-pixel labels of SeMask's prior loss.
"""

from typing import Dict

from detectron2.config import CfgNode
from detectron2.structures import BitMasks

from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_segment_dataset_mapper import build_lsj_augmentations
from .registration import register_training_mapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


@register_training_mapper("coco_panoptic_lsj")
class COCOPanopticLSJDatasetMapper(MaskFormerPanopticDatasetMapper):
    """
    :class:`MaskFormerPanopticDatasetMapper` with large-scale jitter
    (:func:`build_lsj_augmentations`), padding to ``INPUT.IMAGE_SIZE`` squared, and
    ``gt_boxes`` (XYXY, from the masks; zeros for an empty mask).

    Unlike Mask2Former, which reads only the panoptic PNG here, the record's
    ``sem_seg_file_name`` (COCO ``*_with_sem_seg`` registrations) supplies the prior loss's
    labels when present; otherwise they are derived from the segments, which gives the same
    map for COCO.
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_lsj_augmentations(cfg)
        ret["size_divisibility"] = cfg.INPUT.IMAGE_SIZE
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        """As :meth:`MaskFormerPanopticDatasetMapper.__call__`, plus ``instances.gt_boxes``."""
        dataset_dict = super().__call__(dataset_dict)
        instances = dataset_dict["instances"]
        instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
        return dataset_dict
