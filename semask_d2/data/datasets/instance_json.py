"""
COCO-format instance datasets: detectron2's ``load_coco_json`` plus checks that turn bad files
into one-line :class:`DatasetError` messages.

Unlike detectron2's ``register_coco_instances``, the category map is fixed by the metadata
instead of being derived from the JSON's ``categories``, so a JSON with other category ids is an
error rather than a silent relabelling. The records are detectron2's: ``file_name``,
``image_id``, ``height``, ``width``, ``annotations`` (``bbox`` XYWH_ABS, ``bbox_mode``,
``category_id`` contiguous, ``iscrowd``, ``segmentation`` polygons or RLE).
"""

import logging
import os
from typing import Dict, List, Mapping

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..errors import DatasetError
from .panoptic_json import check_exists, list_files
from .sem_seg import unregister

__all__ = ["load_coco_instances_checked", "register_coco_instances_checked"]

logger = logging.getLogger(__name__)


def register_coco_instances_checked(
    name: str, metadata: Dict, json_file: str, image_root: str, *, fix_hint: str
) -> None:
    """
    Register a COCO-format instance dataset under `name` (``evaluator_type`` "coco"), replacing
    any dataset of that name. Nothing is read here.

    Args:
        name (str): dataset name.
        metadata (dict): ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` (JSON
            category id -> 0..K-1), optionally ``thing_colors``.
        json_file (str): the instance JSON.
        image_root (str): folder of the images; the JSON's ``file_name`` values are relative to it.
        fix_hint (str): how to make the missing files; ends the error messages.
    """
    id_map = dict(metadata["thing_dataset_id_to_contiguous_id"])
    unregister(name)
    DatasetCatalog.register(
        name,
        lambda: load_coco_instances_checked(
            json_file, image_root, id_map, name=name, fix_hint=fix_hint
        ),
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def load_coco_instances_checked(
    json_file: str, image_root: str, id_map: Mapping[int, int], *, name: str = "", fix_hint: str
) -> List[Dict]:
    """
    Load a COCO instance JSON and check it against its image folder.

    Checks: the JSON and the image folder exist; the JSON parses; it lists images; every listed
    image is in `image_root`; every annotation's category is a key of `id_map`; at least one
    annotation belongs to one of the listed images (detectron2 drops annotations whose
    ``image_id`` matches no image, with only a warning).

    Args:
        json_file (str): the instance JSON.
        image_root (str): folder of the images.
        id_map (Mapping[int, int]): JSON category id -> contiguous id.
        name (str): dataset name, for the messages.
        fix_hint (str): how to make the missing files; ends the messages.

    Returns:
        list[dict]: detectron2 records (see the module docstring), sorted by image id.

    Raises:
        DatasetError: with a one-line message naming the file or folder and the fix.
    """
    prefix = f"dataset '{name}': " if name else ""
    check_exists(json_file, prefix, fix_hint, "instance JSON")
    check_exists(image_root, prefix, fix_hint)
    try:
        records = load_coco_json(json_file, image_root)
    except (AssertionError, KeyError, TypeError, ValueError) as e:
        # ValueError includes json.JSONDecodeError; detectron2 and pycocotools assert on the rest.
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise DatasetError(
            f"{prefix}cannot read instance JSON {json_file} ({reason}). Fix: regenerate it: "
            f"{fix_hint}."
        ) from e
    if not records:
        raise DatasetError(f"{prefix}no images in {json_file}. Fix: {fix_hint}.")
    images = list_files(image_root)
    for record in records:
        if os.path.relpath(record["file_name"], image_root) not in images:
            raise DatasetError(
                f"{prefix}image {record['file_name']} (image_id {record['image_id']!r} of "
                f"{json_file}) not found. Fix: put the image there, or use the JSON made for "
                "this image folder."
            )
        for annotation in record["annotations"]:
            annotation["category_id"] = _contiguous(annotation, record, id_map, json_file, prefix)
    if not any(record["annotations"] for record in records):
        raise DatasetError(
            f"{prefix}{json_file} has no annotation for any of its {len(records)} images (every "
            "annotation's image_id must be the id of an entry of 'images'). Fix: regenerate it: "
            f"{fix_hint}."
        )
    logger.info("%sloaded %d images from %s", prefix, len(records), json_file)
    return records


def _contiguous(
    annotation: Dict, record: Dict, id_map: Mapping[int, int], json_file: str, prefix: str
) -> int:
    category_id = annotation["category_id"]
    if category_id not in id_map:
        known = sorted(id_map)
        raise DatasetError(
            f"{prefix}an annotation of image_id {record['image_id']!r} in {json_file} has "
            f"category_id {category_id}, which is not a category of the dataset (ids "
            f"{known[0]}..{known[-1]}, {len(known)} in all). Fix: regenerate the JSON with the "
            "dataset's category ids, or register it with metadata that lists them."
        )
    return id_map[category_id]
