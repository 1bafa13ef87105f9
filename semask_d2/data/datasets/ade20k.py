"""ADE20K-150 (SceneParsing, ``ADEChallengeData2016``): ``ade20k_sem_seg_{train,val}``."""

import os

from .class_tables import class_colors, class_names
from .sem_seg import register_sem_seg_dataset

__all__ = ["register_all_ade20k"]

_TABLE = "ade20k_150_classes.json"
_SPLITS = {"ade20k_sem_seg_train": "training", "ade20k_sem_seg_val": "validation"}
_FIX = (
    "download ADEChallengeData2016 into $DETECTRON2_DATASETS and run "
    "python datasets/prepare_ade20k_sem_seg.py (see datasets/README.md)"
)


def register_all_ade20k(root: str) -> None:
    """
    Register ADE20K-150 under `root`, replacing detectron2's builtin entries of the same names
    (ours check the files and add ``stuff_colors``).

    Layout: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
    ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png`` (uint8, 0..149,
    ignore 255; made by ``datasets/prepare_ade20k_sem_seg.py``).

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "ADEChallengeData2016")
    for name, split in _SPLITS.items():
        register_sem_seg_dataset(
            name,
            os.path.join(root, "images", split),
            os.path.join(root, "annotations_detectron2", split),
            # detectron2's names, including its "window " with a trailing space.
            stuff_classes=class_names(_TABLE),
            stuff_colors=class_colors(_TABLE),
            ignore_label=255,
            image_ext="jpg",
            gt_ext="png",
            fix_hint=_FIX,
        )
