#!/usr/bin/env python
"""
Generate COCO panoptic semantic labels ``panoptic_semseg_{train,val}2017/*.png``.

Each label is a uint8 PNG with the name of its panoptic PNG: 255 where no segment is, elsewhere
the class index 0..132 of the segment's category in detectron2's ``COCO_CATEGORIES`` (things
0..79, stuff 80..132). Every segment, thing, stuff and crowd alike, is painted, as Mask2Former's
``datasets/prepare_coco_semantic_annos_from_panoptic_annos.py`` does. Reads
``annotations/panoptic_{train,val}2017.json`` and the PNGs ``panoptic_{train,val}2017/``
(unzipped from ``annotations/panoptic_{train,val}2017.zip``); a split without its JSON is
skipped.

Usage: python datasets/prepare_coco_semantic_from_panoptic.py [--root DIR] [--overwrite]
"""

import json
import os
from typing import Dict, List, Mapping

import numpy as np
from PIL import Image

from panopticapi.utils import rgb2id
from prepare_utils import convert_all, fail, parse_args, require_dir, save_image
from semask_d2.data.datasets.coco_panoptic import coco_panoptic_metadata

SPLITS = ("train", "val")
IGNORE = 255
GET_PANOPTIC = (
    "download panoptic_annotations_trainval2017.zip from https://cocodataset.org, unzip it into "
    "the coco folder and unzip annotations/panoptic_{split}2017.zip there, or pass --root"
)


def panoptic_to_semantic(
    segment_ids: np.ndarray, segments_info: List[Dict], class_of: Mapping[int, int]
) -> np.ndarray:
    """
    Args:
        segment_ids (np.ndarray): (H, W) segment ids of a panoptic PNG (R + 256 G + 256^2 B).
        segments_info (list[dict]): the JSON's segments of the image (``id``, ``category_id``).
        class_of (Mapping[int, int]): COCO category id -> class index 0..132.

    Returns:
        np.ndarray: (H, W) uint8 class indices, :data:`IGNORE` outside every segment.

    Raises:
        ValueError: a segment's category is not a COCO panoptic category.
    """
    semantic = np.full(segment_ids.shape, IGNORE, dtype=np.uint8)
    for segment in segments_info:
        category_id = segment["category_id"]
        if category_id not in class_of:
            raise ValueError(
                f"segment {segment['id']} has category_id {category_id}, which is not a COCO "
                "panoptic category"
            )
        semantic[segment_ids == segment["id"]] = class_of[category_id]
    return semantic


def _convert(png: str, segments_info: List[Dict], class_of: Mapping[int, int], dst: str) -> None:
    with Image.open(png) as image:
        segment_ids = rgb2id(np.asarray(image.convert("RGB")))
    save_image(Image.fromarray(panoptic_to_semantic(segment_ids, segments_info, class_of)), dst)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "coco", argv)
    require_dir(args.root, "download COCO 2017 into $DETECTRON2_DATASETS/coco, or pass --root")
    class_of = coco_panoptic_metadata()["stuff_dataset_id_to_contiguous_id"]
    done = 0
    for split in SPLITS:
        json_file = os.path.join(args.root, "annotations", f"panoptic_{split}2017.json")
        if not os.path.isfile(json_file):
            print(f"{split}: no {json_file}; skipped")
            continue
        panoptic_root = os.path.join(args.root, f"panoptic_{split}2017")
        require_dir(panoptic_root, GET_PANOPTIC.format(split=split))
        try:
            with open(json_file, encoding="utf-8") as f:
                annotations = json.load(f)["annotations"]
        except (OSError, ValueError, KeyError) as e:
            fail(f"cannot read {json_file} ({e}). Fix: {GET_PANOPTIC.format(split=split)}")
        output_root = os.path.join(args.root, f"panoptic_semseg_{split}2017")
        jobs = [
            (
                os.path.join(output_root, ann["file_name"]),
                (os.path.join(panoptic_root, ann["file_name"]), ann["segments_info"], class_of),
            )
            for ann in annotations
        ]
        convert_all(jobs, _convert, args.overwrite, f"COCO panoptic semantic {split}")
        done += 1
    if not done:
        fail(
            f"no annotations/panoptic_{{train,val}}2017.json under {args.root}. Fix: "
            + GET_PANOPTIC.format(split="{train,val}")
        )


if __name__ == "__main__":
    main()
