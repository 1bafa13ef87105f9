"""ADE20K-150 (SceneParsing, ``ADEChallengeData2016``): ``ade20k_sem_seg_{train,val}``."""

import os

from .sem_seg import register_table_splits

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
    # The table keeps detectron2's names, including its "window " with a trailing space.
    register_table_splits(
        root,
        _SPLITS,
        image_dir="images",
        gt_dir="annotations_detectron2",
        table=_TABLE,
        ignore_label=255,
        image_ext="jpg",
        gt_ext="png",
        fix_hint=_FIX,
    )
