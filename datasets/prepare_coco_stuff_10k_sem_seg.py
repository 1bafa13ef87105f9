#!/usr/bin/env python
"""
Convert COCO-Stuff-10k v1.0 (``cocostuff-10k-v1.0.zip``) to detectron2's layout.

Reads ``coco_stuff_10k/imageLists/{train,test}.txt``, ``images/<name>.jpg`` and
``annotations/<name>.mat`` (field ``S``, 1-based: 1 = unlabelled, 2..81 things, 82..172 stuff)
and writes ``images_detectron2/<split>/<name>.jpg`` (copies) and
``annotations_detectron2/<split>/<name>.png`` (uint8 S - 2: classes 0..170, 1 -> 255 ignore).
MATLAB v7.3 files need the ``h5py`` package; older ones are read with scipy.

Usage: python datasets/prepare_coco_stuff_10k_sem_seg.py [--root DIR] [--overwrite]
"""

import os

import numpy as np
import scipy.io
from PIL import Image

from prepare_utils import convert_all, copy_file, fail, parse_args, require_dir, save_image

SPLITS = ("train", "test")
NUM_CLASSES = 171


def read_mat_labels(path: str) -> np.ndarray:
    """
    Args:
        path (str): a COCO-Stuff-10k ``.mat`` annotation.

    Returns:
        np.ndarray: (H, W) field ``S``, in image orientation.
    """
    try:
        return np.asarray(scipy.io.loadmat(path)["S"])
    except NotImplementedError:
        # MATLAB v7.3 files are HDF5, which scipy does not read; HDF5 stores them transposed.
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f["S"]).T


def convert_label(s: np.ndarray) -> np.ndarray:
    """
    Args:
        s (np.ndarray): (H, W) v1.0 labels, 1 = unlabelled, 2..172 = the 171 classes.

    Returns:
        np.ndarray: (H, W) uint8, S - 2 modulo 256 (1 -> 255 ignore, 2..172 -> 0..170).
    """
    s = np.asarray(s).astype(np.int64)
    bad = (s < 1) | (s > NUM_CLASSES + 1)
    if bad.any():
        raise ValueError(f"values {np.unique(s[bad])[:5].tolist()} outside 1..{NUM_CLASSES + 1}")
    return ((s - 2) % 256).astype(np.uint8)


def convert_pair(image_path: str, mat_path: str, image_out: str, label_out: str) -> None:
    label = convert_label(read_mat_labels(mat_path))
    with Image.open(image_path) as image:
        if image.size != (label.shape[1], label.shape[0]):
            raise ValueError(f"image size {image.size} differs from {mat_path}")
    copy_file(image_path, image_out)
    save_image(Image.fromarray(label), label_out)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], os.path.join("coco", "coco_stuff_10k"), argv)
    for folder in ("imageLists", "images", "annotations"):
        require_dir(
            os.path.join(args.root, folder),
            "unzip cocostuff-10k-v1.0.zip there, or pass --root coco_stuff_10k",
        )
    jobs = []
    for split in SPLITS:
        with open(os.path.join(args.root, "imageLists", f"{split}.txt")) as f:
            names = [line.strip() for line in f if line.strip()]
        image_dir = os.path.join(args.root, "images_detectron2", split)
        os.makedirs(image_dir, exist_ok=True)
        for name in names:
            image_path = os.path.join(args.root, "images", name + ".jpg")
            mat_path = os.path.join(args.root, "annotations", name + ".mat")
            for path in (image_path, mat_path):
                if not os.path.isfile(path):
                    fail(f"{path} (listed in imageLists/{split}.txt) is missing. Fix: unzip again")
            # The label is written last, so an existing label means the pair is complete.
            label_out = os.path.join(args.root, "annotations_detectron2", split, name + ".png")
            jobs.append((label_out, (image_path, mat_path, os.path.join(image_dir, name + ".jpg"))))
    convert_all(jobs, convert_pair, args.overwrite, "COCO-Stuff-10k")


if __name__ == "__main__":
    main()
