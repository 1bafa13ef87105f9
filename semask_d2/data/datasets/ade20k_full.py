"""ADE20K-full (847 classes, ``ADE20K_2021_17_01``): ``ade20k_full_sem_seg_{train,val}``."""

import os

from .sem_seg import register_table_splits

__all__ = ["register_all_ade20k_full"]

_TABLE = "ade20k_full_847_classes.json"
_SPLITS = {"ade20k_full_sem_seg_train": "training", "ade20k_full_sem_seg_val": "validation"}
_FIX = (
    "download ADE20K_2021_17_01 into $DETECTRON2_DATASETS and run "
    "python datasets/prepare_ade20k_full_sem_seg.py (see datasets/README.md)"
)


def register_all_ade20k_full(root: str) -> None:
    """
    Register ADE20K-full under `root`.

    Layout: ``ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg`` and
    ``ADE20K_2021_17_01/annotations_detectron2/{training,validation}/*.tif`` (uint16 train ids
    0..846, ignore 65535; made by ``datasets/prepare_ade20k_full_sem_seg.py``).

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "ADE20K_2021_17_01")
    # The table has no colours: class_colors gives a fixed palette.
    register_table_splits(
        root,
        _SPLITS,
        image_dir="images_detectron2",
        gt_dir="annotations_detectron2",
        table=_TABLE,
        # 16-bit labels: 255 is a class here.
        ignore_label=65535,
        image_ext="jpg",
        gt_ext="tif",
        fix_hint=_FIX,
    )
