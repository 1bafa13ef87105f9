#!/usr/bin/env python
"""
Build ADE20K-150 panoptic annotations (COCO panoptic format) from the semantic and instance PNGs.

Reads, per split (``training`` -> ``train``, ``validation`` -> ``val``) of ADEChallengeData2016:
``images/<split>/*.jpg`` (sorted, the image list), ``annotations/<split>/<id>.png`` (0 = other,
1..150) and ``annotations_instance/<split>/<id>.png`` of the SceneParsing instance release
(R = instance class 1..100, G = instance index, 0 = none). Writes
``ade20k_panoptic_<name>/<id>.png`` (RGB, segment id = R + 256 G + 256^2 B, 0 = void) and
``ade20k_panoptic_<name>.json`` (category ids = train ids 0..149, the same as the semantic labels).

The rules are those of Mask2Former ``datasets/prepare_ade20k_pan_seg.py``: one segment per stuff
class present, then one segment per instance pasted over whatever is there (the semantic and
instance annotations overlap); pixels of "other" and thing-class pixels outside every instance are
void. One difference: segment ids are 1, 2, 3, ... in paste order instead of panopticapi's
randomly jittered category colours, so every run writes the same files.

The JSON is written last: an existing JSON means the split is done and is kept unless
--overwrite. Otherwise every image is processed again, and an existing PNG is kept (its ids are
recomputed identically, since they are deterministic) unless --overwrite.

Usage: python datasets/prepare_ade20k_panoptic_seg.py [--root DIR] [--overwrite]
"""

import os
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from panopticapi.utils import id2rgb
from prepare_utils import fail, parse_args, require_dir, save_image, save_json, splits_to_convert
from semask_d2.data.datasets.class_tables import load_class_table

# (output name, release folder)
SPLITS = (("train", "training"), ("val", "validation"))
CLASS_TABLE = "ade20k_150_classes.json"
MAPPING_TABLE = "ade20k_instance_catid_mapping.json"
OTHER = 255  # semantic train id of raw label 0 ("other")

GET_RELEASE = "unzip ADEChallengeData2016.zip there, or pass --root ADEChallengeData2016"
GET_INSTANCES = (
    "download the ADE20K SceneParsing instance annotations (annotations_instance.tar, "
    "http://sceneparsing.csail.mit.edu/data/ChallengeData2017/annotations_instance.tar) "
    "and untar it into {root}"
)
FROM_RELEASE = "take this file from ADEChallengeData2016.zip again and re-run"
FROM_INSTANCES = "take this file from annotations_instance.tar again and re-run"


def instance_class_lookup(mapping: Sequence[dict]) -> Dict[int, int]:
    """
    Args:
        mapping (list[dict]): rows with ``instance_id`` (1..100) and ``sceneparse150_id`` (1..150);
            an instance class may have several rows, all with the same ``sceneparse150_id``.

    Returns:
        dict[int, int]: instance class (R value of an instance PNG) -> train id 0..149.
    """
    return {row["instance_id"]: row["sceneparse150_id"] - 1 for row in mapping}


def require_inputs(root: str, split: str, folders: Sequence[str] = ("images", "annotations")):
    """Fail unless the `folders` of the release and the instance folder of `split` exist."""
    for folder in folders:
        require_dir(os.path.join(root, folder, split), GET_RELEASE)
    require_dir(os.path.join(root, "annotations_instance", split), GET_INSTANCES.format(root=root))


def split_images(root: str, split: str) -> List[Tuple[str, str]]:
    """(image id, path) of every ``images/<split>/*.jpg``, sorted by name; fails if none."""
    folder = os.path.join(root, "images", split)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    if not names:
        fail(f"no *.jpg images in {folder}. Fix: unzip ADEChallengeData2016.zip again")
    return [(os.path.splitext(n)[0], os.path.join(folder, n)) for n in names]


def annotation_path(root: str, folder: str, split: str, image_id: str, fix: str) -> str:
    """Path of ``<folder>/<split>/<image_id>.png``; fails if the file is missing."""
    path = os.path.join(root, folder, split, image_id + ".png")
    if not os.path.isfile(path):
        fail(f"{path} is missing (the annotation of {image_id}.jpg). Fix: {fix}")
    return path


def read_or_fail(read: Callable, path: str, fix: str, *args):
    """``read(path, *args)``; a ValueError or OSError stops the script naming `path`."""
    try:
        return read(path, *args)
    except (ValueError, OSError) as e:
        fail(f"{path}: {e}. Fix: {fix}")


def image_size(path: str) -> Tuple[int, int]:
    """(width, height) of an image, from its header."""
    with Image.open(path) as image:
        return image.size


def read_semantic(path: str) -> np.ndarray:
    """
    Returns:
        np.ndarray: (H, W) uint8 train ids, raw - 1 with wrap-around (0 "other" -> 255).
    """
    with Image.open(path) as image:
        raw = np.asarray(image)
    if raw.ndim != 2 or raw.dtype != np.uint8:
        raise ValueError(f"expected a single-channel 8-bit label, got {raw.dtype} {raw.shape}")
    if raw.max() > 150:
        raise ValueError(f"label value {raw.max()} outside 0..150")
    return raw - np.uint8(1)


def read_instances(path: str, class_lookup: Dict[int, int]) -> List[Tuple[int, np.ndarray]]:
    """
    Args:
        path (str): an ``annotations_instance`` PNG (R = instance class, G = instance index).
        class_lookup (dict): from :func:`instance_class_lookup`.

    Returns:
        list[tuple[int, np.ndarray]]: (train id, (H, W) bool mask), one per non-zero G value,
        in increasing G order.

    Raises:
        ValueError: not 8-bit RGB, an instance with several R values, or an R value outside the
            instance classes 1..100.
    """
    with Image.open(path) as image:
        pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] < 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an 8-bit RGB instance annotation, got {pixels.shape}")
    classes, indices = pixels[..., 0], pixels[..., 1]
    instances = []
    for index in np.unique(indices):
        if index == 0:
            continue
        mask = indices == index
        values = np.unique(classes[mask])
        if len(values) != 1:
            raise ValueError(
                f"instance G={index} has {len(values)} class values R={values.tolist()}, "
                "expected one"
            )
        if int(values[0]) not in class_lookup:
            raise ValueError(f"instance G={index} has class value R={values[0]}, expected 1..100")
        instances.append((class_lookup[int(values[0])], mask))
    return instances


def bounding_box(mask: np.ndarray) -> List[int]:
    """Tight [x, y, width, height] of the True pixels of a non-empty (H, W) mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def panoptic_segments(
    semantic: np.ndarray, instances: Sequence[Tuple[int, np.ndarray]], is_thing: np.ndarray
) -> Tuple[np.ndarray, List[dict]]:
    """
    Args:
        semantic (np.ndarray): (H, W) uint8 train ids 0..149, 255 = other.
        instances (list): (train id, (H, W) bool mask) per instance, from :func:`read_instances`.
        is_thing (np.ndarray): (150,) bool, True for the 100 thing classes.

    Returns:
        tuple: (H, W) int32 segment ids (0 = void), and the ``segments_info`` list of dicts
        (``id``, ``category_id``, ``area``, ``bbox``, ``iscrowd``) in paste order.
    """
    ids = np.zeros(semantic.shape, dtype=np.int32)
    segments = []

    def paste(category: int, mask: np.ndarray) -> None:
        segment_id = len(segments) + 1
        ids[mask] = segment_id
        # Area and box are measured now, as Mask2Former does: a stuff segment keeps all its
        # semantic pixels in them even where an instance overwrites it later (it may even end
        # up with no pixel). panopticapi's pq_compute reads ground-truth areas from the JSON,
        # so published PQ depends on this; do not "fix" it.
        segments.append(
            {
                "id": segment_id,
                "category_id": int(category),
                "area": int(mask.sum()),
                "bbox": bounding_box(mask),
                "iscrowd": 0,
            }
        )

    for category in np.unique(semantic):
        # Thing classes come only from the instances: their other pixels stay void.
        if category != OTHER and not is_thing[category]:
            paste(category, semantic == category)
    for category, mask in instances:
        paste(category, mask)
    return ids, segments


def check_sizes(image_path: str, label_paths: Sequence[Tuple[str, str]]) -> Tuple[int, int]:
    """
    Args:
        image_path (str): an image.
        label_paths (list[tuple[str, str]]): (path, fix) of its annotations.

    Returns:
        tuple[int, int]: the image's (width, height); fails unless every annotation has it.
    """
    size = read_or_fail(image_size, image_path, FROM_RELEASE)
    for path, fix in label_paths:
        label_size = read_or_fail(image_size, path, fix)
        if label_size != size:
            fail(
                f"{path}: size {label_size[0]}x{label_size[1]} differs from {image_path} "
                f"({size[0]}x{size[1]}). Fix: {fix}"
            )
    return size


def convert_split(root: str, name: str, split: str, overwrite: bool) -> None:
    """Write the panoptic PNGs and JSON of one split."""
    table = load_class_table(CLASS_TABLE)
    is_thing = np.array([bool(record["isthing"]) for record in table])
    class_lookup = instance_class_lookup(load_class_table(MAPPING_TABLE))
    out_dir = os.path.join(root, f"ade20k_panoptic_{name}")
    os.makedirs(out_dir, exist_ok=True)
    images, annotations = [], []
    written = kept = 0
    for image_id, image_path in split_images(root, split):
        semantic_path = annotation_path(root, "annotations", split, image_id, FROM_RELEASE)
        instance_path = annotation_path(
            root, "annotations_instance", split, image_id, FROM_INSTANCES
        )
        size = check_sizes(
            image_path, [(semantic_path, FROM_RELEASE), (instance_path, FROM_INSTANCES)]
        )
        semantic = read_or_fail(read_semantic, semantic_path, FROM_RELEASE)
        instances = read_or_fail(read_instances, instance_path, FROM_INSTANCES, class_lookup)
        ids, segments = panoptic_segments(semantic, instances, is_thing)
        png_path = os.path.join(out_dir, image_id + ".png")
        if os.path.exists(png_path) and not overwrite:
            kept += 1
        else:
            save_image(Image.fromarray(id2rgb(ids)), png_path)
            written += 1
        images.append(
            {"id": image_id, "file_name": image_id + ".jpg", "width": size[0], "height": size[1]}
        )
        annotations.append(
            {"image_id": image_id, "file_name": image_id + ".png", "segments_info": segments}
        )
    categories = [
        {
            "id": record["train_id"],
            "name": record["name"],
            "isthing": record["isthing"],
            "color": list(record["color"]),
        }
        for record in table
    ]
    json_path = os.path.join(root, f"ade20k_panoptic_{name}.json")
    save_json({"images": images, "annotations": annotations, "categories": categories}, json_path)
    print(
        f"ADE20K panoptic {name}: wrote {json_path} and {written} PNGs, kept {kept} existing PNGs"
        + (" (--overwrite redoes them)" if kept else "")
    )


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[1], "ADEChallengeData2016", argv)
    todo = splits_to_convert(
        SPLITS,
        lambda name: os.path.join(args.root, f"ade20k_panoptic_{name}.json"),
        args.overwrite,
        "ADE20K panoptic",
    )
    # Every input folder is checked before the first (long) split starts.
    for _, split in todo:
        require_inputs(args.root, split)
    for name, split in todo:
        convert_split(args.root, name, split, args.overwrite)


if __name__ == "__main__":
    main()
