"""
Training mapper of COCO instance segmentation with large-scale jitter (the behaviour of
Mask2Former's ``coco_instance_lsj`` mapper, ``COCOInstanceNewBaselineDatasetMapper``), which
also emits the per-pixel labels of SeMask's prior loss.
"""

from typing import Dict

from detectron2.config import CfgNode
from detectron2.structures import BitMasks

from .mask_former_instance_dataset_mapper import MaskFormerInstanceDatasetMapper
from .mask_former_segment_dataset_mapper import build_lsj_augmentations
from .registration import register_training_mapper

__all__ = ["COCOInstanceLSJDatasetMapper"]


@register_training_mapper("coco_instance_lsj")
class COCOInstanceLSJDatasetMapper(MaskFormerInstanceDatasetMapper):
    """
    :class:`MaskFormerInstanceDatasetMapper` with large-scale jitter
    (:func:`build_lsj_augmentations`), padding to ``INPUT.IMAGE_SIZE`` squared, ``gt_boxes``
    (XYXY, from the masks) and no empty instances: an instance whose mask the crop removed
    is dropped. Crowd regions still label the prior loss's map.
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_lsj_augmentations(cfg)
        ret["size_divisibility"] = cfg.INPUT.IMAGE_SIZE
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        """As :meth:`MaskFormerInstanceDatasetMapper.__call__`, plus boxes, without empty masks."""
        dataset_dict = super().__call__(dataset_dict)
        instances = dataset_dict["instances"]
        instances = instances[instances.gt_masks.flatten(1).any(dim=1)]
        instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
        dataset_dict["instances"] = instances
        return dataset_dict
