"""
Cityscapes instance segmentation (8 thing classes):
``cityscapes_fine_instance_seg_{train,val,test}``, replacing detectron2's builtin entries.

Annotations come from ``gtFine/<split>/<city>/*_gtFine_instanceIds.png`` alone: unlike
detectron2's ``load_cityscapes_instances`` (``detectron2/data/datasets/cityscapes.py``), no
``*_gtFine_polygons.json`` and no shapely are needed. The rules are those of its PNG path and of
cityscapesScripts' ``preparation/createPanopticImgs.py``: a value v >= 1000 is instance
v mod 1000 of label id v // 1000; a value v < 1000 of a class that has instances is a crowd
region of label id v; classes without instances (stuff) and ``ignoreInEval`` classes (caravan,
trailer) are skipped. Masks are COCO RLE, boxes XYXY_ABS, category ids 0..7.
"""

import logging
import multiprocessing as mp
import os
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util
from cityscapesscripts.helpers.labels import id2label, labels
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..errors import DatasetError
from .cityscapes import CITYSCAPES_CLASSES
from .panoptic_json import check_exists, list_files
from .sem_seg import unregister

__all__ = [
    "CITYSCAPES_THING_LABELS",
    "load_cityscapes_instances_from_pngs",
    "register_all_cityscapes_instance",
]

logger = logging.getLogger(__name__)

# cityscapesScripts labels in contiguous-id order: person, rider, car, truck, bus, train,
# motorcycle, bicycle (classes with instances that are evaluated).
CITYSCAPES_THING_LABELS = tuple(x for x in labels if x.hasInstances and not x.ignoreInEval)
_CONTIGUOUS_ID = {label.id: i for i, label in enumerate(CITYSCAPES_THING_LABELS)}
_IMAGE_SUFFIX = "_leftImg8bit.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_FIX = (
    "download leftImg8bit and gtFine into $DETECTRON2_DATASETS/cityscapes (see "
    "datasets/README.md)"
)


def register_all_cityscapes_instance(root: str) -> None:
    """
    Register ``cityscapes_fine_instance_seg_{train,val,test}`` under `root`: images
    ``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png``, annotations
    ``cityscapes/gtFine/<split>/<city>/*_gtFine_instanceIds.png``. The metadata is detectron2's
    (no thing id map), plus ``thing_colors``; ``gt_dir`` is for the official evaluator.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
    """
    root = os.path.join(root, "cityscapes")
    for split in ("train", "val", "test"):
        name = f"cityscapes_fine_instance_seg_{split}"
        image_dir = os.path.join(root, "leftImg8bit", split)
        gt_dir = os.path.join(root, "gtFine", split)
        unregister(name)
        DatasetCatalog.register(
            name,
            lambda image_dir=image_dir, gt_dir=gt_dir, name=name: (
                load_cityscapes_instances_from_pngs(image_dir, gt_dir, name=name)
            ),
        )
        MetadataCatalog.get(name).set(
            thing_classes=[label.name for label in CITYSCAPES_THING_LABELS],
            thing_colors=[list(label.color) for label in CITYSCAPES_THING_LABELS],
            stuff_classes=[class_name for class_name, _, _, _ in CITYSCAPES_CLASSES],
            image_dir=image_dir,
            gt_dir=gt_dir,
            evaluator_type="cityscapes_instance",
        )


def load_cityscapes_instances_from_pngs(
    image_dir: str, gt_dir: str, *, name: str = ""
) -> List[Dict]:
    """
    Pair every ``<city>/<id>_leftImg8bit.png`` of `image_dir` with
    ``<city>/<id>_gtFine_instanceIds.png`` of `gt_dir` and read its instances. Files are read
    in parallel processes (half the CPUs of this process's share).

    Args:
        image_dir (str): e.g. ``cityscapes/leftImg8bit/train``.
        gt_dir (str): e.g. ``cityscapes/gtFine/train``.
        name (str): dataset name, for the messages.

    Returns:
        list[dict]: sorted by path; ``file_name``, ``image_id`` (the image's file name),
        ``height``, ``width`` (of the instanceIds PNG) and ``annotations``: per instance
        ``category_id`` (0..7), ``iscrowd`` (0 or 1), ``bbox`` [x0, y0, x1, y1] (pixel edges),
        ``bbox_mode`` XYXY_ABS, ``segmentation`` (RLE dict ``size`` [H, W], ``counts`` str).

    Raises:
        DatasetError: a folder or an instanceIds file is missing or unreadable, or holds a
            value that is no Cityscapes label id.
    """
    prefix = f"dataset '{name}': " if name else ""
    for folder in (image_dir, gt_dir):
        check_exists(folder, prefix, _FIX)
    images = sorted(list_files(image_dir, _IMAGE_SUFFIX))
    if not images:
        raise DatasetError(f"{prefix}no '*{_IMAGE_SUFFIX}' images in {image_dir}. Fix: {_FIX}.")
    instance_files = list_files(gt_dir, _INSTANCE_SUFFIX)
    pairs = []
    for image in images:
        instance_file = image[: -len(_IMAGE_SUFFIX)] + _INSTANCE_SUFFIX
        if instance_file not in instance_files:
            raise DatasetError(
                f"{prefix}image {os.path.join(image_dir, image)} has no instance label "
                f"{os.path.join(gt_dir, instance_file)}. Fix: restore it from "
                "gtFine_trainvaltest.zip, or remove the image."
            )
        pairs.append((os.path.join(image_dir, image), os.path.join(gt_dir, instance_file)))
    processes = min(len(pairs), max((os.cpu_count() or 1) // comm.get_world_size() // 2, 1))
    if processes > 1:
        with mp.Pool(processes) as pool:
            records = pool.map(_record, pairs, chunksize=8)
    else:
        records = [_record(pair) for pair in pairs]
    logger.info("%sloaded %d images from %s", prefix, len(records), image_dir)
    return records


def _record(pair: Tuple[str, str]) -> Dict:
    image_file, instance_file = pair
    try:
        with Image.open(instance_file) as image:
            ids = np.asarray(image)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(
            f"cannot read instance label {instance_file} ({e}). Fix: restore it from "
            "gtFine_trainvaltest.zip."
        ) from e
    if ids.ndim != 2:
        raise DatasetError(
            f"instance label {instance_file} has {ids.shape[-1]} channels; instanceIds PNGs are "
            "single-channel 16-bit. Fix: restore it from gtFine_trainvaltest.zip."
        )
    # Fortran order once, so that every mask comes out in the layout RLE encoding reads.
    fortran_ids = np.asfortranarray(ids)
    annotations = []
    # bincount finds the values present far faster than np.unique's sort of 2M pixels.
    for value in np.flatnonzero(np.bincount(ids.ravel())).tolist():
        label_id = value // 1000 if value >= 1000 else value
        if label_id not in id2label:
            raise DatasetError(
                f"instance label {instance_file} has value {value}, which is neither a "
                "Cityscapes label id nor label id * 1000 + k. Fix: restore it from "
                "gtFine_trainvaltest.zip."
            )
        if label_id in _CONTIGUOUS_ID:
            annotations.append(
                _annotation(fortran_ids == value, _CONTIGUOUS_ID[label_id], value < 1000)
            )
    return {
        "file_name": image_file,
        "image_id": os.path.basename(image_file),
        "height": ids.shape[0],
        "width": ids.shape[1],
        "annotations": annotations,
    }


def _annotation(mask: np.ndarray, category_id: int, iscrowd: bool) -> Dict:
    """
    Args:
        mask (np.ndarray): (H, W) bool in Fortran order; never empty (it holds a value of the
            image).
        category_id (int): contiguous class 0..7.
        iscrowd (bool): a group region rather than one instance.
    """
    rle = mask_util.encode(np.asfortranarray(mask.view(np.uint8)))
    x, y, w, h = mask_util.toBbox(rle).tolist()
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "category_id": category_id,
        "iscrowd": int(iscrowd),
        "bbox": [x, y, x + w, y + h],
        "bbox_mode": BoxMode.XYXY_ABS,
        "segmentation": rle,
    }
