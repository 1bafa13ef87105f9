"""COCO-Stuff-10k (171 classes): ``coco_2017_{train,test}_stuff_10k_sem_seg``."""

import os

from .class_tables import load_class_table
from .sem_seg import register_table_splits

__all__ = ["register_all_coco_stuff_10k"]

_TABLE = "coco_stuff_171_classes.json"
_SPLITS = {"coco_2017_train_stuff_10k_sem_seg": "train", "coco_2017_test_stuff_10k_sem_seg": "test"}
_FIX = (
    "unzip cocostuff-10k-v1.0.zip into $DETECTRON2_DATASETS/coco/coco_stuff_10k and run "
    "python datasets/prepare_coco_stuff_10k_sem_seg.py (see datasets/README.md)"
)


def register_all_coco_stuff_10k(root: str) -> None:
    """
    Register COCO-Stuff-10k (v1.0 encoding) under `root`.

    Layout: ``coco/coco_stuff_10k/images_detectron2/{train,test}/*.jpg`` and
    ``coco/coco_stuff_10k/annotations_detectron2/{train,test}/*.png`` (uint8, 0..170 = 80 things
    then 91 stuff, ignore 255; made by ``datasets/prepare_coco_stuff_10k_sem_seg.py``).

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "coco", "coco_stuff_10k")
    # COCO category ids (1..182 with gaps) -> contiguous ids, to write COCO-style JSON results.
    id_map = {r["coco_id"]: i for i, r in enumerate(load_class_table(_TABLE))}
    # Things keep their COCO colours; stuff classes have none in the table: palette.
    register_table_splits(
        root,
        _SPLITS,
        image_dir="images_detectron2",
        gt_dir="annotations_detectron2",
        table=_TABLE,
        ignore_label=255,
        image_ext="jpg",
        gt_ext="png",
        fix_hint=_FIX,
        stuff_dataset_id_to_contiguous_id=id_map,
    )
