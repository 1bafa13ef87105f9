"""
Registers the package's datasets under ``$DETECTRON2_DATASETS`` (default ``./datasets``) when
imported. Registration only records paths; nothing is read until a dataset is loaded.
"""

import os
from typing import Optional

from .ade20k import register_all_ade20k
from .ade20k_full import register_all_ade20k_full
from .ade20k_instance import register_all_ade20k_instance
from .ade20k_panoptic import register_all_ade20k_panoptic
from .cityscapes import register_all_cityscapes
from .cityscapes_instance import register_all_cityscapes_instance
from .cityscapes_panoptic import register_all_cityscapes_panoptic
from .coco_panoptic import register_all_coco_panoptic
from .coco_stuff_10k import register_all_coco_stuff_10k
from .synthetic_shapes import register_semask_shapes
from .synthetic_shapes_panoptic import register_semask_shapes_panoptic

__all__ = ["default_root", "register_all_builtin"]


def default_root() -> str:
    """``$DETECTRON2_DATASETS`` with ``~`` expanded, or "datasets" (relative to the cwd)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def register_all_builtin(root: Optional[str] = None) -> None:
    """
    Register (or re-register) every dataset of the package. The ADE20K-150 and Cityscapes names
    (semantic, instance, panoptic) replace detectron2's builtin entries; detectron2's COCO
    entries are left as they are.

    Args:
        root (str or None): the datasets folder; None: :func:`default_root`.
    """
    root = default_root() if root is None else root
    register_all_ade20k(root)
    register_all_ade20k_panoptic(root)
    register_all_ade20k_instance(root)
    register_all_ade20k_full(root)
    register_all_coco_stuff_10k(root)
    register_all_coco_panoptic(root)
    register_all_cityscapes(root)
    register_all_cityscapes_panoptic(root)
    register_all_cityscapes_instance(root)
    register_semask_shapes(root)
    register_semask_shapes_panoptic(root)


register_all_builtin()
