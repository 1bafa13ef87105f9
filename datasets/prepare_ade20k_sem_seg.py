#!/usr/bin/env python
"""
Convert ADE20K-150 (SceneParsing) annotations to detectron2's encoding.

``ADEChallengeData2016/annotations/{training,validation}/*.png`` (0 = other, 1..150 = classes)
-> ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png`` (uint8 value - 1
with wrap-around: 0 -> 255 ignore, 1..150 -> 0..149). Nothing else changes.

Usage: python datasets/prepare_ade20k_sem_seg.py [--root DIR] [--overwrite]
"""

import os

import numpy as np
from PIL import Image

from prepare_utils import convert_all, fail, parse_args, require_dir, save_image

SPLITS = ("training", "validation")


def convert_label(raw: np.ndarray) -> np.ndarray:
    """
    Args:
        raw (np.ndarray): (H, W) SceneParsing label, 0 = unlabelled, 1..150 = classes.

    Returns:
        np.ndarray: (H, W) uint8, raw - 1 modulo 256 (0 -> 255).
    """
    if raw.ndim != 2:
        raise ValueError(f"expected a single-channel label, got shape {raw.shape}")
    # uint8 arithmetic wraps around: 0 - 1 = 255.
    return raw.astype(np.uint8) - np.uint8(1)


def convert_file(src: str, dst: str) -> None:
    with Image.open(src) as image:
        raw = np.asarray(image)
    save_image(Image.fromarray(convert_label(raw)), dst)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "ADEChallengeData2016", argv)
    for split in SPLITS:
        src_dir = os.path.join(args.root, "annotations", split)
        require_dir(
            src_dir, "unzip ADEChallengeData2016.zip there, or pass --root ADEChallengeData2016"
        )
        names = sorted(n for n in os.listdir(src_dir) if n.endswith(".png"))
        if not names:
            fail(f"no *.png labels in {src_dir}. Fix: unzip ADEChallengeData2016.zip again")
        dst_dir = os.path.join(args.root, "annotations_detectron2", split)
        jobs = [(os.path.join(dst_dir, n), (os.path.join(src_dir, n),)) for n in names]
        convert_all(jobs, convert_file, args.overwrite, f"ADE20K {split}")


if __name__ == "__main__":
    main()
