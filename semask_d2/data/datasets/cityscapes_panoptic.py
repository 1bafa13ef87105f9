"""
Cityscapes panoptic segmentation (19 train-id classes, 8 things):
``cityscapes_fine_panoptic_{train,val}``, replacing detectron2's builtin entries.

The PNGs and JSON are cityscapesScripts' ``preparation/createPanopticImgs.py`` output with
label ids as category ids (``datasets/prepare_cityscapes_panoptic.py`` runs it); the records map
them to trainIds and carry the ``*_gtFine_labelTrainIds.png`` labels. Unlike detectron2's
``detectron2/data/datasets/cityscapes_panoptic.py``, every path is joined from its parts, so a
"." in the dataset root is fine, and bad files raise one-line errors. The metadata is
detectron2's for these names.
"""

import os
from typing import Dict

from .cityscapes import CITYSCAPES_CLASSES
from .panoptic_json import SemSegFiles, register_panoptic_json

__all__ = ["cityscapes_panoptic_metadata", "register_all_cityscapes_panoptic"]

_PANOPTIC_FIX = (
    "download leftImg8bit and gtFine into $DETECTRON2_DATASETS/cityscapes and run "
    "python datasets/prepare_cityscapes_panoptic.py (see datasets/README.md)"
)
_SEM_SEG_FIX = "run python datasets/prepare_cityscapes_sem_seg.py (see datasets/README.md)"


def cityscapes_panoptic_metadata() -> Dict:
    """
    Class names, colours and id maps of Cityscapes panoptic, as detectron2's builtin ones.

    ``thing_classes`` and ``stuff_classes`` both list the 19 classes (detectron2's visualizer
    looks classes up in either); the thing map takes the 8 thing label ids to their trainIds
    11..18, the stuff map the 11 stuff label ids to 0..10.

    Returns:
        dict: ``thing_classes`` / ``thing_colors``, ``stuff_classes`` / ``stuff_colors`` (19
        each), ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``.
    """
    names = [name for name, _, _, _ in CITYSCAPES_CLASSES]
    colors = [list(color) for _, _, color, _ in CITYSCAPES_CLASSES]
    return {
        "thing_classes": names,
        "thing_colors": colors,
        "stuff_classes": list(names),
        "stuff_colors": [list(color) for color in colors],
        "thing_dataset_id_to_contiguous_id": _id_map(things=True),
        "stuff_dataset_id_to_contiguous_id": _id_map(things=False),
    }


def _id_map(things: bool) -> Dict[int, int]:
    return {
        label_id: train_id
        for train_id, (_, label_id, _, isthing) in enumerate(CITYSCAPES_CLASSES)
        if isthing == things
    }


def register_all_cityscapes_panoptic(root: str) -> None:
    """
    Register ``cityscapes_fine_panoptic_{train,val}`` under `root`.

    Layout under ``root/cityscapes``: ``leftImg8bit/<split>/<city>/<id>_leftImg8bit.png``,
    ``gtFine/cityscapes_panoptic_<split>/<id>_gtFine_panoptic.png`` and
    ``gtFine/cityscapes_panoptic_<split>.json`` (panoptic, ``image_id`` = ``<id>`` =
    ``<city>_<seq>_<frame>``), ``gtFine/<split>/<city>/<id>_gtFine_labelTrainIds.png``
    (semantic). ``gt_dir`` (``gtFine/<split>``) is for the official Cityscapes evaluators.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "cityscapes")
    metadata = cityscapes_panoptic_metadata()
    for split in ("train", "val"):
        gt_dir = os.path.join(root, "gtFine", split)
        register_panoptic_json(
            f"cityscapes_fine_panoptic_{split}",
            metadata,
            image_root=os.path.join(root, "leftImg8bit", split),
            panoptic_root=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}"),
            panoptic_json=os.path.join(root, "gtFine", f"cityscapes_panoptic_{split}.json"),
            evaluator_type="cityscapes_panoptic_seg",
            fix_hint=_PANOPTIC_FIX,
            image_file=_image_file,
            sem_seg=SemSegFiles(gt_dir, _sem_seg_file, _SEM_SEG_FIX),
            gt_dir=gt_dir,
        )


def _image_file(image: Dict) -> str:
    # The JSON's own file_name (<id>_gtFine_leftImg8bit.png) is not the image's name.
    return _city_path(image["id"], "_leftImg8bit.png")


def _sem_seg_file(record: Dict) -> str:
    return _city_path(record["image_id"], "_gtFine_labelTrainIds.png")


def _city_path(image_id, suffix: str) -> str:
    """``<city>/<image_id><suffix>``; image ids are ``<city>_<seq>_<frame>``."""
    image_id = str(image_id)
    return os.path.join(image_id.rsplit("_", 2)[0], image_id + suffix)
