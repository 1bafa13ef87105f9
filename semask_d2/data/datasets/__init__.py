"""Dataset registration; importing it registers the builtin datasets (see ``builtin.py``)."""

from .ade20k import register_all_ade20k
from .ade20k_full import register_all_ade20k_full
from .ade20k_instance import ade20k_instance_metadata, register_all_ade20k_instance
from .ade20k_panoptic import ade20k_panoptic_metadata, register_all_ade20k_panoptic
from .builtin import default_root, register_all_builtin
from .cityscapes import CITYSCAPES_CLASSES, register_all_cityscapes
from .cityscapes_instance import (
    load_cityscapes_instances_from_pngs,
    register_all_cityscapes_instance,
)
from .cityscapes_panoptic import cityscapes_panoptic_metadata, register_all_cityscapes_panoptic
from .coco_panoptic import coco_panoptic_metadata, register_all_coco_panoptic
from .coco_stuff_10k import register_all_coco_stuff_10k
from .instance_json import load_coco_instances_checked, register_coco_instances_checked
from .panoptic_json import load_panoptic_json, register_panoptic_json
from .sem_seg import load_sem_seg_pairs, register_sem_seg_dataset, unregister
from .synthetic_shapes import register_semask_shapes
from .synthetic_shapes_panoptic import register_semask_shapes_panoptic
