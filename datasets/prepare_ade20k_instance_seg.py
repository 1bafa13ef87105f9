#!/usr/bin/env python
"""
Build ADE20K instance annotations (COCO instance format, RLE masks) from the instance PNGs.

Reads, per split (``training`` -> ``train``, ``validation`` -> ``val``) of ADEChallengeData2016:
``images/<split>/*.jpg`` (sorted; every image is listed, even one without instances) and
``annotations_instance/<split>/<id>.png`` of the SceneParsing instance release (R = instance
class 1..100, G = instance index, 0 = none). Writes ``ade20k_instance_<name>.json``: one
annotation per non-zero G value, with ``category_id`` = the ADE20K-150 train id of its class
(the ids of the panoptic JSON, a subset of 0..149), ``iscrowd`` 0, a tight box and the RLE of the
full-image mask; ``categories`` are the 100 thing classes. This follows Mask2Former
``datasets/prepare_ade20k_ins_seg.py``, with the class names taken from semask_d2's ADE20K-150
table instead of ``ade20k_instance_imgCatIds.json``. Reading and checking the files is shared
with ``prepare_ade20k_panoptic_seg.py``.

An existing JSON is kept unless --overwrite.

Usage: python datasets/prepare_ade20k_instance_seg.py [--root DIR] [--overwrite]
"""

import os
from typing import List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from prepare_ade20k_panoptic_seg import (
    CLASS_TABLE,
    FROM_INSTANCES,
    MAPPING_TABLE,
    SPLITS,
    annotation_path,
    bounding_box,
    check_sizes,
    instance_class_lookup,
    read_instances,
    read_or_fail,
    require_inputs,
    split_images,
)
from prepare_utils import parse_args, save_json, splits_to_convert
from semask_d2.data.datasets.class_tables import load_class_table


def coco_annotations(
    instances: Sequence[Tuple[int, np.ndarray]], image_id: str, first_id: int
) -> List[dict]:
    """
    Args:
        instances (list): (train id, (H, W) bool mask) per instance, from ``read_instances``.
        image_id (str): the image's id.
        first_id (int): annotation id of the first instance; the others follow.

    Returns:
        list[dict]: COCO annotations (``id``, ``image_id``, ``category_id``, ``iscrowd``,
        ``bbox`` [x, y, w, h], ``segmentation`` RLE with str counts, ``area`` of the RLE).
    """
    annotations = []
    for offset, (category, mask) in enumerate(instances):
        rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": first_id + offset,
                "image_id": image_id,
                "category_id": int(category),
                "iscrowd": 0,
                "bbox": bounding_box(mask),
                "segmentation": rle,
                "area": int(mask_util.area(rle)),
            }
        )
    return annotations


def convert_split(root: str, name: str, split: str) -> None:
    """Write the instance JSON of one split."""
    table = load_class_table(CLASS_TABLE)
    class_lookup = instance_class_lookup(load_class_table(MAPPING_TABLE))
    images, annotations = [], []
    for image_id, image_path in split_images(root, split):
        instance_path = annotation_path(
            root, "annotations_instance", split, image_id, FROM_INSTANCES
        )
        width, height = check_sizes(image_path, [(instance_path, FROM_INSTANCES)])
        instances = read_or_fail(read_instances, instance_path, FROM_INSTANCES, class_lookup)
        images.append(
            {"id": image_id, "file_name": image_id + ".jpg", "width": width, "height": height}
        )
        annotations += coco_annotations(instances, image_id, len(annotations) + 1)
    categories = [
        {"id": train_id, "name": table[train_id]["name"]}
        for train_id in sorted(set(class_lookup.values()))
    ]
    json_path = os.path.join(root, f"ade20k_instance_{name}.json")
    save_json({"images": images, "annotations": annotations, "categories": categories}, json_path)
    print(f"ADE20K instance {name}: wrote {json_path} ({len(annotations)} instances)")


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "ADEChallengeData2016", argv)
    todo = splits_to_convert(
        SPLITS,
        lambda name: os.path.join(args.root, f"ade20k_instance_{name}.json"),
        args.overwrite,
        "ADE20K instance",
    )
    # Every input folder is checked before the first (long) split starts.
    for _, split in todo:
        require_inputs(args.root, split, folders=("images",))
    for name, split in todo:
        convert_split(args.root, name, split)


if __name__ == "__main__":
    main()
