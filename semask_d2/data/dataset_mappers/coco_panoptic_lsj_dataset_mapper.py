"""
Training mapper of COCO panoptic with large-scale jitter (the behaviour of Mask2Former's
``coco_panoptic_lsj`` mapper, ``COCOPanopticNewBaselineDatasetMapper``), which also emits the
per-pixel labels of SeMask's prior loss.
"""

from typing import Callable, Dict

from detectron2.config import CfgNode
from detectron2.structures import BitMasks

from ..build import DATASET_MAPPER_REGISTRY
from .mask_former_panoptic_dataset_mapper import MaskFormerPanopticDatasetMapper
from .mask_former_segment_dataset_mapper import build_lsj_augmentations
from .semantic_test_dataset_mapper import SemanticTestDatasetMapper

__all__ = ["COCOPanopticLSJDatasetMapper"]


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


@DATASET_MAPPER_REGISTRY.register()
def coco_panoptic_lsj(cfg: CfgNode, is_train: bool) -> Callable:
    """
    Registry entry "coco_panoptic_lsj" (the official mapper name): the training mapper, or the
    inference mapper (image only) when `is_train` is False.
    """
    if is_train:
        return COCOPanopticLSJDatasetMapper(cfg, is_train=True)
    return SemanticTestDatasetMapper(cfg)
