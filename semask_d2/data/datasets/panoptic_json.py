"""
Loading COCO-format panoptic annotations (one JSON plus one segment-id PNG per image) with
checks that turn bad files into one-line :class:`DatasetError` messages.

The records have the shape of detectron2's ``load_coco_panoptic_json``
(``detectron2/data/datasets/coco_panoptic.py``), so the same mappers and evaluators serve our
datasets and those a user registers with detectron2's ``register_coco_panoptic``:
``file_name``, ``image_id``, ``pan_seg_file_name``, ``segments_info`` (per segment ``id``,
contiguous ``category_id``, ``isthing``, ``iscrowd``, plus the JSON's ``area`` / ``bbox``);
``height`` / ``width`` when the JSON lists them; ``sem_seg_file_name`` for datasets with
semantic labels. :func:`register_panoptic_json` registers such a dataset.
"""

import json
import logging
import os
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Set

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetError
from .sem_seg import unregister

__all__ = [
    "SemSegFiles",
    "add_sem_seg_files",
    "check_exists",
    "list_files",
    "load_panoptic_json",
    "register_panoptic_json",
]

logger = logging.getLogger(__name__)


class SemSegFiles(NamedTuple):
    """
    The semantic labels of a panoptic dataset (``sem_seg_file_name`` of its records).

    Attributes:
        root (str): folder of the single-channel labels (contiguous ids, ignore 255).
        relative_path (callable): record -> label path relative to `root`.
        fix_hint (str): how to make the labels; ends the error messages.
    """

    root: str
    relative_path: Callable[[Dict], str]
    fix_hint: str


def register_panoptic_json(
    name: str,
    metadata: Dict,
    *,
    image_root: str,
    panoptic_root: str,
    panoptic_json: str,
    evaluator_type: str,
    fix_hint: str,
    image_file: Optional[Callable[[Dict], str]] = None,
    sem_seg: Optional[SemSegFiles] = None,
    **extra_metadata,
) -> None:
    """
    Register a COCO-format panoptic dataset under `name`, replacing any dataset of that name,
    with ``ignore_label`` 255 and ``label_divisor`` 1000 (all panoptic datasets of the package).
    Nothing is read here; ``DatasetCatalog.get(name)`` runs :func:`load_panoptic_json` (and
    :func:`add_sem_seg_files` when `sem_seg` is given).

    Args:
        name (str): dataset name.
        metadata (dict): class names and colours, ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``.
        image_root, panoptic_root, panoptic_json, image_file, fix_hint: see
            :func:`load_panoptic_json`.
        evaluator_type (str): e.g. "coco_panoptic_seg".
        sem_seg (SemSegFiles or None): the semantic labels, if the dataset has them.
        extra_metadata: further metadata, e.g. ``json_file`` (instances) or ``gt_dir``.
    """
    metadata = dict(metadata)

    def load() -> List[Dict]:
        records = load_panoptic_json(
            panoptic_json,
            image_root,
            panoptic_root,
            metadata,
            image_file=image_file,
            name=name,
            fix_hint=fix_hint,
        )
        if sem_seg is None:
            return records
        return add_sem_seg_files(
            records, sem_seg.root, sem_seg.relative_path, name=name, fix_hint=sem_seg.fix_hint
        )

    unregister(name)
    DatasetCatalog.register(name, load)
    if sem_seg is not None:
        extra_metadata["sem_seg_root"] = sem_seg.root
    MetadataCatalog.get(name).set(
        image_root=image_root,
        panoptic_root=panoptic_root,
        panoptic_json=panoptic_json,
        evaluator_type=evaluator_type,
        ignore_label=255,
        label_divisor=1000,
        **metadata,
        **extra_metadata,
    )


def check_exists(path: str, prefix: str, fix_hint: str, what: str = "folder") -> None:
    """
    Raise :class:`DatasetError` unless `path` exists. The message names the outermost missing
    folder, because a missing dataset root says more than a file inside it.

    Args:
        path (str): the file or folder.
        prefix (str): start of the message, e.g. "dataset 'x': ".
        fix_hint (str): what to do; ends the message.
        what (str): "folder", "panoptic JSON", ..., for the message when `path` itself is missing.
    """
    if os.path.exists(path):
        return
    missing = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(missing)):
        missing = os.path.dirname(missing)
    if missing != os.path.abspath(path):
        what = "folder"
    raise DatasetError(f"{prefix}{what} not found: {missing}. Fix: {fix_hint}.")


def list_files(root: str, suffix: str = "") -> Set[str]:
    """Paths relative to `root` of every file under it (sub-folders included) ending in `suffix`."""
    found = set()
    for folder, _, filenames in os.walk(root, followlinks=True):
        relative = os.path.relpath(folder, root)
        for filename in filenames:
            if filename.endswith(suffix):
                found.add(os.path.normpath(os.path.join(relative, filename)))
    return found


def load_panoptic_json(
    json_file: str,
    image_root: str,
    panoptic_root: str,
    metadata: Mapping,
    *,
    image_file: Optional[Callable[[Dict], str]] = None,
    name: str = "",
    fix_hint: str,
) -> List[Dict]:
    """
    Read a COCO-format panoptic JSON and check it against its image and PNG folders.

    Checks: the JSON and both folders exist; every annotation has an entry in ``images``, an
    image in `image_root` and a PNG in `panoptic_root`; every PNG of `panoptic_root` has an
    annotation; every segment's category is one of the metadata's. The segment ids inside the
    PNGs are checked by the mappers, which decode them.

    Args:
        json_file (str): the panoptic JSON (``images``, ``annotations``, ``categories``).
        image_root (str): folder of the images.
        panoptic_root (str): folder of the segment-id PNGs (id = R + 256 G + 256^2 B).
        metadata (Mapping): with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``; a category in both maps is a thing.
        image_file (callable or None): ``images`` entry -> image path relative to
            `image_root`; None: the entry's ``file_name``.
        name (str): dataset name, for the messages.
        fix_hint (str): how to make the missing files; ends the messages.

    Returns:
        list[dict]: one record per annotation, in JSON order (keys in the module docstring).

    Raises:
        DatasetError: with a one-line message naming the file or folder and the fix.
    """
    prefix = f"dataset '{name}': " if name else ""
    check_exists(json_file, prefix, fix_hint, "panoptic JSON")
    for folder in (image_root, panoptic_root):
        check_exists(folder, prefix, fix_hint)
    data = _read_json(json_file, prefix, fix_hint)
    images, pngs = list_files(image_root), list_files(panoptic_root, ".png")
    where = _Source(json_file, image_root, panoptic_root, prefix)
    try:
        image_entries = {image["id"]: image for image in data["images"]}
        records = [
            _record(ann, image_entries, image_file or _file_name, metadata, where)
            for ann in data["annotations"]
        ]
    except (KeyError, TypeError) as e:
        raise DatasetError(
            f"{prefix}malformed panoptic JSON {json_file} (missing or bad entry {e}). Fix: "
            f"regenerate it: {fix_hint}."
        ) from e
    if not records:
        raise DatasetError(f"{prefix}no annotations in {json_file}. Fix: {fix_hint}.")
    _check_files(records, images, pngs, where)
    logger.info("%sloaded %d panoptic annotations from %s", prefix, len(records), json_file)
    return records


class _Source(NamedTuple):
    """Where a record comes from, for its paths and messages."""

    json_file: str
    image_root: str
    panoptic_root: str
    prefix: str


def _file_name(image: Dict) -> str:
    return image["file_name"]


def _read_json(json_file: str, prefix: str, fix_hint: str) -> Dict:
    try:
        with open(json_file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"{prefix}cannot read panoptic JSON {json_file} ({e}). Fix: regenerate it: "
            f"{fix_hint}."
        ) from e


def _record(ann, image_entries, image_file, metadata, where: _Source) -> Dict:
    image_id = ann["image_id"]
    image = image_entries.get(image_id)
    if image is None:
        raise DatasetError(
            f"{where.prefix}annotation {ann['file_name']} has image_id {image_id!r}, which is "
            f"not in the 'images' of {where.json_file}. Fix: regenerate the JSON."
        )
    pan_seg_file_name = os.path.join(where.panoptic_root, ann["file_name"])
    record = {
        "file_name": os.path.join(where.image_root, image_file(image)),
        "image_id": image_id,
        "pan_seg_file_name": pan_seg_file_name,
        "segments_info": [
            _segment(s, pan_seg_file_name, metadata, where) for s in ann["segments_info"]
        ],
    }
    if "height" in image and "width" in image:
        record["height"], record["width"] = image["height"], image["width"]
    return record


def _segment(segment: Dict, pan_seg_file_name: str, metadata: Mapping, where: _Source) -> Dict:
    category_id = segment["category_id"]
    things = metadata["thing_dataset_id_to_contiguous_id"]
    stuff = metadata["stuff_dataset_id_to_contiguous_id"]
    if category_id not in things and category_id not in stuff:
        known = sorted(set(things) | set(stuff))
        raise DatasetError(
            f"{where.prefix}segment {segment['id']} of {pan_seg_file_name} has category_id "
            f"{category_id}, which is not a category of the dataset (ids {known[0]}.."
            f"{known[-1]}, {len(known)} in all). Fix: regenerate {where.json_file} with the "
            "dataset's category ids, or register it with metadata that lists them."
        )
    isthing = category_id in things
    return {
        **segment,
        "category_id": (things if isthing else stuff)[category_id],
        "isthing": isthing,
        "iscrowd": int(segment.get("iscrowd", 0)),
    }


def _check_files(records: List[Dict], images: Set[str], pngs: Set[str], where: _Source) -> None:
    prefix, json_file, panoptic_root = where.prefix, where.json_file, where.panoptic_root
    for record in records:
        if os.path.relpath(record["file_name"], where.image_root) not in images:
            raise DatasetError(
                f"{prefix}image {record['file_name']} (image_id {record['image_id']!r} of "
                f"{json_file}) not found. Fix: put the image there, or use the JSON made for "
                "this image folder."
            )
        if os.path.relpath(record["pan_seg_file_name"], panoptic_root) not in pngs:
            raise DatasetError(
                f"{prefix}panoptic PNG {record['pan_seg_file_name']} of {json_file} not found. "
                "Fix: regenerate the PNGs and the JSON together."
            )
    referenced = {os.path.relpath(r["pan_seg_file_name"], panoptic_root) for r in records}
    orphans = sorted(pngs - referenced)
    if orphans:
        raise DatasetError(
            f"{prefix}panoptic PNG {os.path.join(panoptic_root, orphans[0])} has no annotation "
            f"in {json_file} ({len(orphans)} such PNGs). Fix: regenerate the PNGs and the JSON "
            "together, or remove the extra PNGs."
        )


def add_sem_seg_files(
    records: List[Dict],
    sem_seg_root: str,
    relative_path: Callable[[Dict], str],
    *,
    name: str = "",
    fix_hint: str,
) -> List[Dict]:
    """
    Set ``sem_seg_file_name`` of every record, checking that the files exist.

    Args:
        records (list[dict]): from :func:`load_panoptic_json`; changed in place.
        sem_seg_root (str): folder of the single-channel semantic labels.
        relative_path (callable): record -> label path relative to `sem_seg_root`.
        name (str): dataset name, for the messages.
        fix_hint (str): how to make the labels; ends the messages.

    Returns:
        list[dict]: `records`.
    """
    prefix = f"dataset '{name}': " if name else ""
    check_exists(sem_seg_root, prefix, fix_hint)
    labels = list_files(sem_seg_root)
    for record in records:
        relative = os.path.normpath(relative_path(record))
        if relative not in labels:
            raise DatasetError(
                f"{prefix}semantic label {os.path.join(sem_seg_root, relative)} of image "
                f"{record['file_name']} not found. Fix: {fix_hint}."
            )
        record["sem_seg_file_name"] = os.path.join(sem_seg_root, relative)
    return records
