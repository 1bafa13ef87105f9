#!/usr/bin/env python
"""
Build ADE20K-full (847 classes) semantic labels from the ADE20K_2021_17_01 release.

For every ``images/ADE/**/ADE_*.jpg`` with its ``*_seg.png`` (release colour encoding: class
index = R / 10 * 256 + G; B encodes instances), write
``images_detectron2/<split>/<name>.jpg`` and ``annotations_detectron2/<split>/<name>.tif``
(uint16 train ids 0..846 of semask_d2's ADE20K-full table, every other class 65535 = ignore).
The split comes from the name (``ADE_val_*`` -> validation, else training). Images whose short
side exceeds 512 are resized to 512 (image bilinear, label nearest); others are copied as is.
The release's ``index_ade20k.pkl`` is not needed: the files are found by walking the folders.

Usage: python datasets/prepare_ade20k_full_sem_seg.py [--root DIR] [--overwrite]
"""

import os
from typing import Iterable, Optional, Tuple

import numpy as np
from PIL import Image

from prepare_utils import convert_all, copy_file, fail, parse_args, require_dir, save_image
from semask_d2.data.datasets.class_tables import load_class_table

SHORT_SIDE = 512
IGNORE = 65535
TABLE = "ade20k_full_847_classes.json"


def decode_class_ids(seg: np.ndarray) -> np.ndarray:
    """
    Args:
        seg (np.ndarray): (H, W, 3) uint8 RGB of a release ``*_seg.png``.

    Returns:
        np.ndarray: (H, W) int64 release class index, R // 10 * 256 + G (0 = unlabelled).
    """
    if seg.ndim != 3 or seg.shape[2] < 3:
        raise ValueError(f"expected an RGB *_seg.png, got shape {seg.shape}")
    return seg[..., 0].astype(np.int64) // 10 * 256 + seg[..., 1].astype(np.int64)


def build_lookup(table: Iterable[dict]) -> np.ndarray:
    """
    Args:
        table (list[dict]): records with ``ade_full_id`` and ``train_id``.

    Returns:
        np.ndarray: uint16 array mapping release class index -> train id, IGNORE elsewhere.
    """
    table = list(table)
    lookup = np.full(max(r["ade_full_id"] for r in table) + 1, IGNORE, dtype=np.uint16)
    for record in table:
        lookup[record["ade_full_id"]] = record["train_id"]
    return lookup


def to_train_ids(class_ids: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """Map release class indices to uint16 train ids; indices beyond the table -> IGNORE."""
    train_ids = np.full(class_ids.shape, IGNORE, dtype=np.uint16)
    known = class_ids < len(lookup)
    train_ids[known] = lookup[class_ids[known]]
    return train_ids


def resized_size(
    width: int, height: int, short_side: int = SHORT_SIDE
) -> Optional[Tuple[int, int]]:
    """(width, height) with the short side scaled to `short_side`, or None if already small."""
    short = min(width, height)
    if short <= short_side:
        return None
    scale = short_side / short
    return max(1, round(width * scale)), max(1, round(height * scale))


def convert_pair(
    image_path: str, seg_path: str, lookup: np.ndarray, image_out: str, label_out: str
) -> None:
    with Image.open(seg_path) as seg:
        train_ids = to_train_ids(decode_class_ids(np.asarray(seg.convert("RGB"))), lookup)
    with Image.open(image_path) as image:
        if image.size != (train_ids.shape[1], train_ids.shape[0]):
            raise ValueError(f"image size {image.size} differs from {seg_path}")
        size = resized_size(*image.size)
        label = Image.fromarray(train_ids)  # mode I;16
        if size is None:
            copy_file(image_path, image_out)
        else:
            save_image(image.convert("RGB").resize(size, Image.BILINEAR), image_out)
            label = label.resize(size, Image.NEAREST)
    save_image(label, label_out)


def _find_pairs(images_dir: str):
    for folder, subfolders, filenames in os.walk(images_dir):
        subfolders.sort()
        for name in sorted(filenames):
            if name.startswith("ADE_") and name.endswith(".jpg"):
                seg = os.path.join(folder, name[: -len(".jpg")] + "_seg.png")
                if not os.path.isfile(seg):
                    fail(f"{seg} is missing. Fix: unzip the ADE20K_2021_17_01 release again")
                yield os.path.join(folder, name), seg


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "ADE20K_2021_17_01", argv)
    images_dir = os.path.join(args.root, "images", "ADE")
    require_dir(images_dir, "unzip ADE20K_2021_17_01.zip there, or pass --root ADE20K_2021_17_01")
    lookup = build_lookup(load_class_table(TABLE))
    jobs = []
    for image_path, seg_path in _find_pairs(images_dir):
        name = os.path.basename(image_path)[: -len(".jpg")]
        split = "validation" if name.startswith("ADE_val_") else "training"
        image_out = os.path.join(args.root, "images_detectron2", split, name + ".jpg")
        label_out = os.path.join(args.root, "annotations_detectron2", split, name + ".tif")
        # convert_all creates the label folder only.
        os.makedirs(os.path.dirname(image_out), exist_ok=True)
        jobs.append((label_out, (image_path, seg_path, lookup, image_out)))
    if not jobs:
        fail(f"no ADE_*.jpg images under {images_dir}. Fix: unzip the release again")
    # The label is written last, so an existing label means the pair is complete.
    convert_all(jobs, convert_pair, args.overwrite, "ADE20K-full")


if __name__ == "__main__":
    main()
