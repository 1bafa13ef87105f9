"""
ADE20K panoptic segmentation (150 classes: 100 things, 50 stuff): ``ade20k_panoptic_{train,val}``.

Layout and metadata follow Mask2Former's ``register_ade20k_panoptic.py``. The panoptic PNGs and
JSON come from ``datasets/prepare_ade20k_panoptic_seg.py`` (category ids = the 150 semantic
train ids), the semantic labels are ADE20K-150's ``annotations_detectron2``.
"""

import os
from typing import Dict

from .class_tables import class_colors, class_names, load_class_table
from .panoptic_json import SemSegFiles, register_panoptic_json

__all__ = ["ade20k_panoptic_metadata", "register_all_ade20k_panoptic"]

_TABLE = "ade20k_150_classes.json"
_SPLITS = {"train": "training", "val": "validation"}
_PANOPTIC_FIX = (
    "put ADEChallengeData2016 with its annotations_instance/ (SceneParsing instance "
    "annotations) into $DETECTRON2_DATASETS and run python datasets/prepare_ade20k_panoptic_seg.py"
    " (see datasets/README.md)"
)
_SEM_SEG_FIX = "run python datasets/prepare_ade20k_sem_seg.py (see datasets/README.md)"


def ade20k_panoptic_metadata() -> Dict:
    """
    Class names, colours and id maps of ADE20K panoptic.

    Category ids are the 150 semantic train ids, which are also the contiguous ids: the thing
    map is the identity on the 100 thing ids (a non-contiguous subset of 0..149), the stuff map
    the identity on all 150 ids, things included, so that the semantic evaluator covers every
    class.

    Returns:
        dict: ``thing_classes`` / ``thing_colors`` (100), ``stuff_classes`` / ``stuff_colors``
        (150), ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``.
    """
    table = load_class_table(_TABLE)
    names, colors = class_names(_TABLE), class_colors(_TABLE)
    thing_ids = [i for i, record in enumerate(table) if record["isthing"]]
    return {
        "thing_classes": [names[i] for i in thing_ids],
        "thing_colors": [colors[i] for i in thing_ids],
        "stuff_classes": names,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {i: i for i in thing_ids},
        "stuff_dataset_id_to_contiguous_id": {i: i for i in range(len(table))},
    }


def register_all_ade20k_panoptic(root: str) -> None:
    """
    Register ``ade20k_panoptic_{train,val}`` under `root`.

    Layout under ``root/ADEChallengeData2016``: ``images/{training,validation}/*.jpg``,
    ``ade20k_panoptic_{train,val}/*.png`` and ``ade20k_panoptic_{train,val}.json`` (panoptic),
    ``annotations_detectron2/{training,validation}/*.png`` (semantic, 0..149, ignore 255),
    ``ade20k_instance_{train,val}.json`` (``json_file`` of the metadata, for the instance
    evaluator).

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "ADEChallengeData2016")
    metadata = ade20k_panoptic_metadata()
    for split, folder in _SPLITS.items():
        register_panoptic_json(
            f"ade20k_panoptic_{split}",
            metadata,
            image_root=os.path.join(root, "images", folder),
            panoptic_root=os.path.join(root, f"ade20k_panoptic_{split}"),
            panoptic_json=os.path.join(root, f"ade20k_panoptic_{split}.json"),
            evaluator_type="ade20k_panoptic_seg",
            fix_hint=_PANOPTIC_FIX,
            sem_seg=SemSegFiles(
                os.path.join(root, "annotations_detectron2", folder),
                _sem_seg_file,
                _SEM_SEG_FIX,
            ),
            json_file=os.path.join(root, f"ade20k_instance_{split}.json"),
        )


def _sem_seg_file(record: Dict) -> str:
    # The semantic label has the panoptic PNG's name (<image id>.png).
    return os.path.basename(record["pan_seg_file_name"])
