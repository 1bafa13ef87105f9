#!/usr/bin/env python
"""
Generate Cityscapes ``*_gtFine_labelTrainIds.png`` (uint8 trainIds 0..18, 255 = ignore).

By default the labels are rasterised from ``gtFine/<split>/<city>/*_gtFine_polygons.json`` by the
``cityscapesscripts`` package (``pip install cityscapesscripts``), as its
``createTrainIdLabelImgs`` does. With ``--from-label-ids`` they are mapped from
``*_gtFine_labelIds.png`` through the labelId -> trainId table instead (no extra package; same
result for the original-resolution files).

Usage: python datasets/prepare_cityscapes_sem_seg.py [--root DIR] [--from-label-ids] [--overwrite]
"""

import glob
import os

import numpy as np
from PIL import Image

from prepare_utils import convert_all, fail, parse_args, require_dir, save_image
from semask_d2.data.datasets.cityscapes import label_id_to_train_id

SPLITS = ("train", "val", "test")
IGNORE = 255


def build_lookup() -> np.ndarray:
    """uint8 array of 256 entries: labelId -> trainId, 255 for ids outside the 19 classes."""
    lookup = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id in label_id_to_train_id().items():
        lookup[label_id] = train_id
    return lookup


def label_ids_to_train_ids(label_ids: np.ndarray, lookup: np.ndarray) -> np.ndarray:
    """
    Args:
        label_ids (np.ndarray): (H, W) uint8 ``*_gtFine_labelIds.png`` values.
        lookup (np.ndarray): from :func:`build_lookup`.

    Returns:
        np.ndarray: (H, W) uint8 trainIds.
    """
    if label_ids.ndim != 2 or label_ids.dtype != np.uint8:
        raise ValueError(f"expected a uint8 single-channel labelIds image, got {label_ids.shape}")
    return lookup[label_ids]


def _from_label_ids(src: str, lookup: np.ndarray, dst: str) -> None:
    with Image.open(src) as image:
        save_image(Image.fromarray(label_ids_to_train_ids(np.asarray(image), lookup)), dst)


def _from_polygons(src: str, dst: str) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    # Written next to the output under a name the dataset loader does not match.
    tmp = dst[: -len(".png")] + ".partial.png"
    json2labelImg(src, tmp, "trainIds")
    os.replace(tmp, dst)


def _add_options(parser) -> None:
    parser.add_argument(
        "--from-label-ids",
        action="store_true",
        help="map *_gtFine_labelIds.png through the trainId table (no cityscapesscripts)",
    )


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "cityscapes", argv, _add_options)
    gt_root = os.path.join(args.root, "gtFine")
    require_dir(gt_root, "unzip gtFine_trainvaltest.zip into the cityscapes folder, or pass --root")
    if args.from_label_ids:
        source, convert, extra = "_gtFine_labelIds.png", _from_label_ids, (build_lookup(),)
    else:
        try:
            import cityscapesscripts  # noqa: F401
        except ImportError:
            fail(
                "the cityscapesscripts package is not installed. Fix: pip install "
                "cityscapesscripts, or pass --from-label-ids"
            )
        source, convert, extra = "_gtFine_polygons.json", _from_polygons, ()
    for split in SPLITS:
        sources = sorted(glob.glob(os.path.join(gt_root, split, "*", "*" + source)))
        if not sources:
            print(f"{split}: no *{source} under {os.path.join(gt_root, split)}; skipped")
            continue
        jobs = [
            (src[: -len(source)] + "_gtFine_labelTrainIds.png", (src,) + extra) for src in sources
        ]
        convert_all(jobs, convert, args.overwrite, f"Cityscapes {split}")


if __name__ == "__main__":
    main()
