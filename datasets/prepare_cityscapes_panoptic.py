#!/usr/bin/env python
"""
Generate Cityscapes panoptic annotations ``gtFine/cityscapes_panoptic_{train,val}[.json]``.

Runs cityscapesScripts' ``preparation/createPanopticImgs.py`` (``pip install cityscapesscripts``)
on ``gtFine/{train,val}/<city>/*_gtFine_instanceIds.png``; no ``*_polygons.json`` and no images
are read. Category ids are the Cityscapes label ids (the loader maps them to trainIds), segment
ids the instanceIds values; thing pixels without an instance become one crowd segment per class.
Each split is written into a temporary folder and moved into place when complete, so an existing
JSON means a finished split: it is kept unless --overwrite.

Usage: python datasets/prepare_cityscapes_panoptic.py [--root DIR] [--overwrite]
"""

import glob
import os
import shutil

from prepare_utils import fail, parse_args, require_dir

SPLITS = ("train", "val")


def convert_split(gt_root: str, split: str) -> None:
    """
    Write ``cityscapes_panoptic_<split>/`` and ``cityscapes_panoptic_<split>.json`` into
    `gt_root` (the gtFine folder), replacing earlier ones.
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    # A hidden sibling folder, so that the move into place stays on one file system.
    partial = os.path.join(gt_root, f".cityscapes_panoptic_{split}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    convert2panoptic(gt_root, partial, useTrainId=False, setNames=[split])
    folder, json_file = f"cityscapes_panoptic_{split}", f"cityscapes_panoptic_{split}.json"
    # The JSON marks a finished split: it goes first and comes back last.
    if os.path.exists(os.path.join(gt_root, json_file)):
        os.remove(os.path.join(gt_root, json_file))
    shutil.rmtree(os.path.join(gt_root, folder), ignore_errors=True)
    os.replace(os.path.join(partial, folder), os.path.join(gt_root, folder))
    os.replace(os.path.join(partial, json_file), os.path.join(gt_root, json_file))
    os.rmdir(partial)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "cityscapes", argv)
    gt_root = os.path.join(args.root, "gtFine")
    require_dir(gt_root, "unzip gtFine_trainvaltest.zip into the cityscapes folder, or pass --root")
    try:
        import cityscapesscripts  # noqa: F401
    except ImportError:
        fail("the cityscapesscripts package is not installed. Fix: pip install cityscapesscripts")
    found = 0
    for split in SPLITS:
        pattern = os.path.join(gt_root, split, "*", "*_gtFine_instanceIds.png")
        if not glob.glob(pattern):
            print(f"{split}: no {pattern}; skipped")
            continue
        found += 1
        json_file = os.path.join(gt_root, f"cityscapes_panoptic_{split}.json")
        if os.path.exists(json_file) and not args.overwrite:
            print(f"{split}: kept existing {json_file} (--overwrite redoes it)")
            continue
        convert_split(gt_root, split)
    if not found:
        fail(
            f"no {{train,val}}/<city>/*_gtFine_instanceIds.png under {gt_root}. Fix: unzip "
            "gtFine_trainvaltest.zip into the cityscapes folder, or pass --root"
        )


if __name__ == "__main__":
    main()
