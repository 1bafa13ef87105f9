"""
ADE20K instance segmentation (the 100 thing classes of ADE20K panoptic):
``ade20k_instance_{train,val}``.

The COCO-format JSONs come from ``datasets/prepare_ade20k_instance_seg.py`` (RLE masks, category
ids = the 0-based ADE20K-150 semantic ids of the things, as in Mask2Former's
``datasets/prepare_ade20k_ins_seg.py``); the contiguous ids 0..99 follow the semantic id order.
"""

import os
from typing import Dict

from .ade20k_panoptic import ade20k_panoptic_metadata
from .instance_json import register_coco_instances_checked

__all__ = ["ade20k_instance_metadata", "register_all_ade20k_instance"]

_SPLITS = {"train": "training", "val": "validation"}
_FIX = (
    "put ADEChallengeData2016 with its annotations_instance/ (SceneParsing instance "
    "annotations) into $DETECTRON2_DATASETS and run python datasets/prepare_ade20k_instance_seg.py"
    " (see datasets/README.md)"
)


def ade20k_instance_metadata() -> Dict:
    """
    Returns:
        dict: ``thing_classes`` and ``thing_colors`` (100, in semantic id order) and
        ``thing_dataset_id_to_contiguous_id`` (semantic id of each thing -> 0..99).
    """
    panoptic = ade20k_panoptic_metadata()
    thing_ids = sorted(panoptic["thing_dataset_id_to_contiguous_id"])
    return {
        "thing_classes": panoptic["thing_classes"],
        "thing_colors": panoptic["thing_colors"],
        "thing_dataset_id_to_contiguous_id": {
            dataset_id: i for i, dataset_id in enumerate(thing_ids)
        },
    }


def register_all_ade20k_instance(root: str) -> None:
    """
    Register ``ade20k_instance_{train,val}`` under `root`: images
    ``ADEChallengeData2016/images/{training,validation}/*.jpg``, annotations
    ``ADEChallengeData2016/ade20k_instance_{train,val}.json``.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "ADEChallengeData2016")
    metadata = ade20k_instance_metadata()
    for split, folder in _SPLITS.items():
        register_coco_instances_checked(
            f"ade20k_instance_{split}",
            metadata,
            os.path.join(root, f"ade20k_instance_{split}.json"),
            os.path.join(root, "images", folder),
            fix_hint=_FIX,
        )
