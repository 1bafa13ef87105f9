"""
Cityscapes fine semantic segmentation (19 train-id classes):
``cityscapes_fine_sem_seg_{train,val,test}``.

Images pair directly with ``*_gtFine_labelTrainIds.png``; unlike detectron2's loader, no
``*_polygons.json`` is needed and sizes come from the image headers.
"""

import os

from .sem_seg import register_sem_seg_dataset

__all__ = ["CITYSCAPES_CLASSES", "register_all_cityscapes", "label_id_to_train_id"]

# The 19 evaluated classes in trainId order: (name, labelId, RGB colour, is a thing). Ids and
# colours are cityscapesScripts' `helpers/labels.py` values; every other labelId is ignored.
CITYSCAPES_CLASSES = (
    ("road", 7, (128, 64, 128), False),
    ("sidewalk", 8, (244, 35, 232), False),
    ("building", 11, (70, 70, 70), False),
    ("wall", 12, (102, 102, 156), False),
    ("fence", 13, (190, 153, 153), False),
    ("pole", 17, (153, 153, 153), False),
    ("traffic light", 19, (250, 170, 30), False),
    ("traffic sign", 20, (220, 220, 0), False),
    ("vegetation", 21, (107, 142, 35), False),
    ("terrain", 22, (152, 251, 152), False),
    ("sky", 23, (70, 130, 180), False),
    ("person", 24, (220, 20, 60), True),
    ("rider", 25, (255, 0, 0), True),
    ("car", 26, (0, 0, 142), True),
    ("truck", 27, (0, 0, 70), True),
    ("bus", 28, (0, 60, 100), True),
    ("train", 31, (0, 80, 100), True),
    ("motorcycle", 32, (0, 0, 230), True),
    ("bicycle", 33, (119, 11, 32), True),
)

_SPLITS = ("train", "val", "test")
_FIX = (
    "download leftImg8bit and gtFine into $DETECTRON2_DATASETS/cityscapes and run "
    "python datasets/prepare_cityscapes_sem_seg.py (see datasets/README.md)"
)


def label_id_to_train_id() -> dict:
    """Cityscapes labelId -> trainId of the 19 evaluated classes (other ids map to 255)."""
    return {label_id: train_id for train_id, (_, label_id, _, _) in enumerate(CITYSCAPES_CLASSES)}


def register_all_cityscapes(root: str) -> None:
    """
    Register Cityscapes semantic segmentation under `root`, replacing detectron2's builtin
    entries of the same names.

    Layout: ``cityscapes/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` and
    ``cityscapes/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` (uint8 trainIds 0..18,
    ignore 255; made by ``datasets/prepare_cityscapes_sem_seg.py``). The metadata keeps
    detectron2's ``image_dir`` / ``gt_dir`` for the official Cityscapes evaluator.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "cityscapes")
    for split in _SPLITS:
        image_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        register_sem_seg_dataset(
            f"cityscapes_fine_sem_seg_{split}",
            image_dir,
            gt_dir,
            stuff_classes=[name for name, _, _, _ in CITYSCAPES_CLASSES],
            stuff_colors=[color for _, _, color, _ in CITYSCAPES_CLASSES],
            ignore_label=255,
            image_ext="_leftImg8bit.png",
            gt_ext="_gtFine_labelTrainIds.png",
            evaluator_type="cityscapes_sem_seg",
            fix_hint=_FIX,
            image_dir=image_dir,
            gt_dir=gt_dir,
            thing_classes=[name for name, _, _, isthing in CITYSCAPES_CLASSES if isthing],
        )
