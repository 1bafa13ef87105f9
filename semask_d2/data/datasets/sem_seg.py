"""
Registration of semantic-segmentation datasets stored as image files plus label images.

Every dataset of the package, and any custom one, goes through :func:`register_sem_seg_dataset`:
it registers a lazy loader (no file access until ``DatasetCatalog.get``) and the metadata, with
class colours, that the evaluators and the visualizer read.
"""

import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetError
from ..file_checks import check_label_mode, read_header
from .class_tables import class_colors, class_names, indexed_palette

__all__ = ["register_sem_seg_dataset", "register_table_splits", "load_sem_seg_pairs", "unregister"]

logger = logging.getLogger(__name__)

_DEFAULT_FIX = "check the path, or set $DETECTRON2_DATASETS (see datasets/README.md)"


def register_sem_seg_dataset(
    name: str,
    image_root: str,
    gt_root: str,
    *,
    stuff_classes: Sequence[str],
    stuff_colors: Optional[Sequence[Sequence[int]]] = None,
    ignore_label: int = 255,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    evaluator_type: str = "sem_seg",
    fix_hint: str = _DEFAULT_FIX,
    **extra_metadata,
) -> None:
    """
    Register a semantic-segmentation dataset under `name`, replacing any dataset of that name.

    Images and labels pair by their path relative to `image_root` / `gt_root` without the
    endings `image_ext` / `gt_ext`; sub-folders are searched. Nothing is read here: the loader
    checks the files when ``DatasetCatalog.get(name)`` runs (see :func:`load_sem_seg_pairs`).

    Args:
        name (str): dataset name, as used in ``cfg.DATASETS.TRAIN`` / ``TEST``.
        image_root (str): folder of the images.
        gt_root (str): folder of the single-channel label images (class ids 0..K-1, or
            `ignore_label`).
        stuff_classes (list[str]): the K class names, in label-value order.
        stuff_colors (list[list[int]] or None): an RGB colour per class; None: a fixed palette.
        ignore_label (int): label value excluded from training and evaluation.
        image_ext (str): file ending of the images: an extension such as "jpg" (meaning ".jpg"),
            or a full ending that starts with "." or "_", e.g. "_leftImg8bit.png".
        gt_ext (str): file ending of the labels, like `image_ext`.
        evaluator_type (str): "sem_seg" (``SemSegEvaluator``) or "cityscapes_sem_seg".
        fix_hint (str): what the user should do when the folders are missing; ends the message.
        extra_metadata: further metadata, e.g. ``image_dir`` and ``gt_dir`` for Cityscapes.
    """
    if stuff_colors is not None and len(stuff_colors) != len(stuff_classes):
        raise ValueError(
            f"dataset '{name}': {len(stuff_colors)} stuff_colors for {len(stuff_classes)} classes"
        )
    if stuff_colors is None:
        stuff_colors = indexed_palette(len(stuff_classes))
    unregister(name)
    DatasetCatalog.register(
        name,
        lambda: load_sem_seg_pairs(
            image_root, gt_root, image_ext=image_ext, gt_ext=gt_ext, name=name, fix_hint=fix_hint
        ),
    )
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes),
        stuff_colors=[list(c) for c in stuff_colors],
        ignore_label=ignore_label,
        evaluator_type=evaluator_type,
        image_root=image_root,
        sem_seg_root=gt_root,
        **extra_metadata,
    )


def unregister(name: str) -> None:
    """Remove `name` from DatasetCatalog and MetadataCatalog if present (detectron2's included)."""
    if name in DatasetCatalog:
        logger.debug("Replacing dataset '%s'", name)
        DatasetCatalog.remove(name)
    if name in MetadataCatalog:
        MetadataCatalog.remove(name)


def load_sem_seg_pairs(
    image_root: str,
    gt_root: str,
    *,
    image_ext: str = "jpg",
    gt_ext: str = "png",
    name: str = "",
    fix_hint: str = _DEFAULT_FIX,
) -> List[Dict]:
    """
    List image/label pairs in detectron2's format and check them from the file headers.

    Checks: both folders exist, the image folder holds images, every image has a label, every
    label is single-channel and has the size of its image, every file opens. Labels without an
    image are skipped with a warning. Label values and pixel data are checked by the mappers.

    Args:
        image_root, gt_root, image_ext, gt_ext, fix_hint: see :func:`register_sem_seg_dataset`.
        name (str): dataset name, for the messages.

    Returns:
        list[dict]: sorted by path; keys ``file_name``, ``sem_seg_file_name``, ``height``,
        ``width`` (of the image, after its EXIF orientation).

    Raises:
        DatasetError: with a one-line message naming the file or folder and the fix.
    """
    prefix = f"dataset '{name}': " if name else ""
    image_suffix, gt_suffix = _suffix(image_ext), _suffix(gt_ext)
    for folder in (image_root, gt_root):
        _check_folder(folder, prefix, fix_hint)
    images = _list_files(image_root, image_suffix)
    labels = _list_files(gt_root, gt_suffix)
    if not images:
        raise DatasetError(
            f"{prefix}no '*{image_suffix}' images in {image_root}. Fix: put the split's images "
            f"there, or {fix_hint}."
        )
    orphans = len(set(labels) - set(images))
    if orphans:
        logger.warning("%s%d labels in %s have no image; skipped", prefix, orphans, gt_root)
    records = [_record(key, images[key], labels, gt_root, gt_suffix) for key in sorted(images)]
    logger.info("%sloaded %d images from %s", prefix, len(records), image_root)
    return records


def _suffix(ext: str) -> str:
    return ext if ext.startswith((".", "_")) else "." + ext


def _check_folder(folder: str, prefix: str, fix_hint: str) -> None:
    if os.path.isdir(folder):
        return
    # Name the outermost missing folder: a missing dataset root says more than its sub-folder.
    missing = os.path.abspath(folder)
    while not os.path.exists(os.path.dirname(missing)):
        missing = os.path.dirname(missing)
    raise DatasetError(f"{prefix}folder not found: {missing}. Fix: {fix_hint}.")


def _list_files(root: str, suffix: str) -> Dict[str, str]:
    """Map path relative to `root` without `suffix` -> path, for every file ending in `suffix`."""
    files = {}
    for folder, subfolders, filenames in os.walk(root, followlinks=True):
        subfolders.sort()
        for filename in filenames:
            if filename.endswith(suffix):
                path = os.path.join(folder, filename)
                files[os.path.relpath(path, root)[: -len(suffix)]] = path
    return files


def _record(key: str, image_path: str, labels: Dict[str, str], gt_root: str, suffix: str) -> Dict:
    label_path = labels.get(key)
    if label_path is None:
        expected = os.path.join(gt_root, key + suffix)
        raise DatasetError(
            f"image {image_path} has no label {expected}. Fix: add the label, or remove the image."
        )
    _, width, height = read_header(image_path, "image")
    mode, label_width, label_height = read_header(label_path, "label")
    check_label_mode(label_path, mode)
    if (label_width, label_height) != (width, height):
        raise DatasetError(
            f"label {label_path} is {label_width}x{label_height} but its image {image_path} is "
            f"{width}x{height}. Fix: regenerate the label at the image size."
        )
    return {
        "file_name": image_path,
        "sem_seg_file_name": label_path,
        "height": height,
        "width": width,
    }


def register_table_splits(
    root: str, splits: Dict[str, str], *, image_dir: str, gt_dir: str, table: str, **kwargs
) -> None:
    """
    Register each ``name -> split`` of `splits` through :func:`register_sem_seg_dataset`, with
    images in ``root/image_dir/split``, labels in ``root/gt_dir/split`` and the class names and
    colours of the package table `table`.

    Args:
        kwargs: the other arguments of :func:`register_sem_seg_dataset` (ignore label, file
            endings, fix hint, extra metadata).
    """
    for name, split in splits.items():
        register_sem_seg_dataset(
            name,
            os.path.join(root, image_dir, split),
            os.path.join(root, gt_dir, split),
            stuff_classes=class_names(table),
            stuff_colors=class_colors(table),
            **kwargs,
        )
