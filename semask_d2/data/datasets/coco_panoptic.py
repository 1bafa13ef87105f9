"""
COCO 2017 panoptic segmentation with semantic labels (133 classes: 80 things, 53 stuff):
``coco_2017_{train,val}_panoptic_with_sem_seg``.

Names, layout and metadata follow Mask2Former's ``register_coco_panoptic_annos_semseg.py``.
detectron2's own ``coco_2017_{train,val}_panoptic`` and ``coco_2017_{train,val}`` registrations
are left as they are (their metadata is not touched). The semantic labels come from
``datasets/prepare_coco_semantic_from_panoptic.py``.
"""

import os
from typing import Dict

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from .panoptic_json import SemSegFiles, register_panoptic_json

__all__ = ["coco_panoptic_metadata", "register_all_coco_panoptic"]

_PANOPTIC_FIX = (
    "download train2017/val2017 and panoptic_annotations_trainval2017.zip from "
    "https://cocodataset.org into $DETECTRON2_DATASETS/coco and unzip "
    "annotations/panoptic_{train,val}2017.zip into coco/ (see datasets/README.md)"
)
_SEM_SEG_FIX = "run python datasets/prepare_coco_semantic_from_panoptic.py (see datasets/README.md)"


def coco_panoptic_metadata() -> Dict:
    """
    Class names, colours and id maps of COCO panoptic, from detectron2's ``COCO_CATEGORIES``.

    Contiguous ids are the positions in ``COCO_CATEGORIES``: things 0..79, stuff 80..132. The
    thing map covers the 80 things, the stuff map all 133 categories, things included, so that
    the semantic evaluator covers every class.

    Returns:
        dict: ``thing_classes`` / ``thing_colors`` (80), ``stuff_classes`` / ``stuff_colors``
        (133), ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id``.
    """
    things = [(i, c) for i, c in enumerate(COCO_CATEGORIES) if c["isthing"]]
    return {
        "thing_classes": [c["name"] for _, c in things],
        "thing_colors": [list(c["color"]) for _, c in things],
        "stuff_classes": [c["name"] for c in COCO_CATEGORIES],
        "stuff_colors": [list(c["color"]) for c in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in things},
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)},
    }


def register_all_coco_panoptic(root: str) -> None:
    """
    Register ``coco_2017_{train,val}_panoptic_with_sem_seg`` under `root`.

    Layout under ``root/coco``: ``{train,val}2017/*.jpg``,
    ``panoptic_{train,val}2017/*.png`` and ``annotations/panoptic_{train,val}2017.json``
    (panoptic), ``panoptic_semseg_{train,val}2017/*.png`` (semantic, 0..132, ignore 255),
    ``annotations/instances_{train,val}2017.json`` (``json_file`` of the metadata, for the
    instance evaluator).

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "coco")
    metadata = coco_panoptic_metadata()
    for split in ("train", "val"):
        register_panoptic_json(
            f"coco_2017_{split}_panoptic_with_sem_seg",
            metadata,
            image_root=os.path.join(root, f"{split}2017"),
            panoptic_root=os.path.join(root, f"panoptic_{split}2017"),
            panoptic_json=os.path.join(root, "annotations", f"panoptic_{split}2017.json"),
            evaluator_type="coco_panoptic_seg",
            fix_hint=_PANOPTIC_FIX,
            sem_seg=SemSegFiles(
                os.path.join(root, f"panoptic_semseg_{split}2017"), _sem_seg_file, _SEM_SEG_FIX
            ),
            json_file=os.path.join(root, "annotations", f"instances_{split}2017.json"),
        )


def _sem_seg_file(record: Dict) -> str:
    # The semantic label has the panoptic PNG's name.
    return os.path.basename(record["pan_seg_file_name"])
