"""Dataset registration; importing it registers the builtin datasets (see ``builtin.py``)."""

from .ade20k import register_all_ade20k
from .ade20k_full import register_all_ade20k_full
from .builtin import default_root, register_all_builtin
from .cityscapes import CITYSCAPES_CLASSES, register_all_cityscapes
from .coco_stuff_10k import register_all_coco_stuff_10k
from .sem_seg import load_sem_seg_pairs, register_sem_seg_dataset, unregister
from .synthetic_shapes import register_semask_shapes
