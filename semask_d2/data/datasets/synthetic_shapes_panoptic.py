"""
SeMask shapes panoptic: a small synthetic panoptic-segmentation dataset in COCO panoptic format
that the package generates on first use (``semask_shapes_panoptic_{train,val}``), for the
panoptic quick start and for tests. No download.

Each image is split into 1-3 background regions of textured "stuff" classes, then 3-6 "thing"
instances are drawn over it, often touching or overlapping each other (a later shape hides part
of an earlier one, never more than 40% of what was still visible). Shapes, colours and noise
are those of ``semask_shapes`` (:mod:`.synthetic_shapes`): a thing class is a shape, and any two
thing classes share one of their three colours. Every instance has a dark 1-pixel outline, so
that two touching instances of the same class and colour stay apart, as object edges do in
photographs.

====  ====  =========  =====  ===========================================================
 id   cid   class      thing  appearance
====  ====  =========  =====  ===========================================================
 1    0     disc       yes    plain filled circle; red, green or blue
 2    1     square     yes    plain filled square, any rotation; blue, yellow or purple
 3    2     triangle   yes    plain equilateral triangle, any rotation; purple, cyan or red
 4    3     smooth     no     smooth low-saturation noise, greyish blue
 5    4     stripes    no     the same, greyish green, with dark and light stripes 4-6 px wide
 6    5     grain      no     the same, sandy, with strong per-pixel noise
====  ====  =========  =====  ===========================================================

(id: the COCO category id of the JSON files; cid: the contiguous id of the records, the
semantic labels and the model's classes.) Every pixel belongs to a segment: there is no void.

Layout under ``<root>/semask_shapes_panoptic/``, for each split: ``images/<split>/NNNN.png``
(RGB), ``panoptic/<split>/NNNN.png`` (segment id = R + 256 G + 256^2 B) with
``annotations/panoptic_<split>.json`` (COCO panoptic), ``semantic/<split>/NNNN.png``
(contiguous ids, for mIoU and SeMask's prior loss) and ``annotations/instances_<split>.json``
(COCO instances of the things, RLE masks, for mask AP); plus ``COMPLETE``, written last. As for
``semask_shapes``, the folder is generated atomically (:func:`.synthetic_shapes.ensure_generated`)
and every image has its own generator seeded from (seed, split, index): the files depend only on
the parameters, byte for byte.
"""

import json
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb
from PIL import Image


from .panoptic_json import SemSegFiles, register_panoptic_json
from .synthetic_shapes import (
    SHAPES_CLASSES,
    ensure_generated,
    generate_before_loading,
    generation_spec,
    mark_complete,
    noise_background,
    shape_fill,
    shape_mask,
    spec_arguments,
    split_key,
)

__all__ = [
    "PANOPTIC_CATEGORIES",
    "PANOPTIC_FOLDER",
    "PANOPTIC_SPLITS",
    "Segment",
    "ensure_semask_shapes_panoptic",
    "generate_semask_shapes_panoptic",
    "register_semask_shapes_panoptic",
    "render_panoptic_sample",
    "shapes_panoptic_metadata",
]

PANOPTIC_FOLDER = "semask_shapes_panoptic"
# COCO-style categories, things first: the contiguous id of a category is its position.
PANOPTIC_CATEGORIES = (
    {"id": 1, "name": "disc", "isthing": 1, "color": [230, 25, 75]},
    {"id": 2, "name": "square", "isthing": 1, "color": [60, 180, 75]},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [0, 130, 200]},
    {"id": 4, "name": "smooth", "isthing": 0, "color": [140, 140, 140]},
    {"id": 5, "name": "stripes", "isthing": 0, "color": [170, 110, 40]},
    {"id": 6, "name": "grain", "isthing": 0, "color": [145, 30, 180]},
)
# Split -> number of images, as semask_shapes.
PANOPTIC_SPLITS = {"train": 600, "val": 100}
_IMAGE_SIZE = 128
_SEED = 0
# Bump when the rendering changes: existing folders with another version are regenerated.
_VERSION = 1
_FIX = "delete the folder to have it generated again"

_THINGS = [c for c in PANOPTIC_CATEGORIES if c["isthing"]]
_STUFF = [c for c in PANOPTIC_CATEGORIES if not c["isthing"]]
_SMOOTH, _STRIPES, _GRAIN = (c["id"] for c in _STUFF)
# The background of semask_shapes (any tint) is pulled halfway to these colours (RGB): like sky
# and grass, stuff has a typical colour as well as a texture. Without them, the panoptic quick
# start's 600 iterations leave the stripes and the grain confused (PQ_st below 25).
_STUFF_TINTS = {_SMOOTH: (120, 140, 180), _STRIPES: (120, 150, 100), _GRAIN: (175, 145, 105)}
# Placement of the things: at most this share of an instance's visible pixels may be hidden by
# a later one, and every instance keeps at least this share of the image.
_MAX_HIDDEN = 0.4
_MIN_AREA = 0.004
_PLACEMENT_TRIES = 20
# Outlines darken the colour to this share.
_OUTLINE = 0.4


class Segment(NamedTuple):
    """One segment of a rendered image: its id in the segment map and its COCO category."""

    id: int
    category_id: int


def shapes_panoptic_metadata() -> Dict:
    """
    Class names, colours and id maps, as COCO panoptic's (detectron2's conventions).

    Returns:
        dict: ``thing_classes`` / ``thing_colors`` (3), ``stuff_classes`` / ``stuff_colors``
        (all 6 classes: detectron2's visualizer and the semantic evaluator index them by
        contiguous id), ``thing_dataset_id_to_contiguous_id``,
        ``stuff_dataset_id_to_contiguous_id`` (all 6).
    """
    return {
        "thing_classes": [c["name"] for c in _THINGS],
        "thing_colors": [list(c["color"]) for c in _THINGS],
        "stuff_classes": [c["name"] for c in PANOPTIC_CATEGORIES],
        "stuff_colors": [list(c["color"]) for c in PANOPTIC_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(_THINGS)},
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(PANOPTIC_CATEGORIES)
        },
    }


def register_semask_shapes_panoptic(
    root: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> None:
    """
    Register ``semask_shapes_panoptic_{split}`` for every split through
    :func:`register_panoptic_json` (evaluator type "coco_panoptic_seg": PQ, mask AP and mIoU),
    with a loader that first generates ``<root>/semask_shapes_panoptic`` when it is missing,
    incomplete or made with other parameters. Nothing is read or written here.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
        splits (dict[str, int] or None): split name -> number of images; None:
            :data:`PANOPTIC_SPLITS`.
        image_size (int): side of the square images (pixels).
        seed (int): base seed of the generation.
    """
    spec = generation_spec(
        dict(PANOPTIC_SPLITS if splits is None else splits), image_size, seed, version=_VERSION
    )
    folder = os.path.join(root, PANOPTIC_FOLDER)
    for split in spec["splits"]:
        name = f"semask_shapes_panoptic_{split}"
        register_panoptic_json(
            name,
            shapes_panoptic_metadata(),
            image_root=os.path.join(folder, "images", split),
            panoptic_root=os.path.join(folder, "panoptic", split),
            panoptic_json=os.path.join(folder, "annotations", f"panoptic_{split}.json"),
            evaluator_type="coco_panoptic_seg",
            fix_hint=_FIX,
            sem_seg=SemSegFiles(os.path.join(folder, "semantic", split), _sem_seg_file, _FIX),
            json_file=os.path.join(folder, "annotations", f"instances_{split}.json"),
        )
        generate_before_loading(name, ensure_semask_shapes_panoptic, folder, spec)


def _sem_seg_file(record: Dict) -> str:
    # The semantic label has the panoptic PNG's name.
    return os.path.basename(record["pan_seg_file_name"])


def ensure_semask_shapes_panoptic(
    folder: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> bool:
    """
    Make `folder` hold the dataset of these parameters, generating it atomically if needed
    (:func:`.synthetic_shapes.ensure_generated`).

    Args:
        folder (str): the dataset folder, ``<root>/semask_shapes_panoptic``.
        splits, image_size, seed: see :func:`register_semask_shapes_panoptic`.

    Returns:
        bool: True when this call generated the dataset.

    Raises:
        DatasetError: the parent folder cannot be written.
    """
    spec = generation_spec(
        dict(PANOPTIC_SPLITS if splits is None else splits), image_size, seed, version=_VERSION
    )
    counts = ", ".join(f"{n} {split}" for split, n in spec["splits"].items())
    return ensure_generated(
        folder,
        spec,
        lambda partial: generate_semask_shapes_panoptic(partial, **spec_arguments(spec)),
        f"{counts} panoptic images of {image_size} px, seed {seed}",
    )


def generate_semask_shapes_panoptic(
    folder: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> None:
    """
    Write the dataset into the existing folder `folder` (not atomic; see
    :func:`ensure_semask_shapes_panoptic`), the ``COMPLETE`` record last.

    Args:
        folder (str): an existing, empty folder.
        splits, image_size, seed: see :func:`register_semask_shapes_panoptic`.
    """
    splits = dict(PANOPTIC_SPLITS if splits is None else splits)
    os.makedirs(os.path.join(folder, "annotations"))
    for split, count in sorted(splits.items()):
        dirs = {
            kind: os.path.join(folder, kind, split) for kind in ("images", "panoptic", "semantic")
        }
        for path in dirs.values():
            os.makedirs(path)
        images, panoptic, instances = [], [], []
        for index in range(count):
            # The split's name, not its position, seeds it: adding a split changes no file.
            rng = np.random.default_rng([seed, split_key(split), index])
            image, segment_ids, segments = render_panoptic_sample(rng, image_size)
            filename = f"{index:04d}.png"
            Image.fromarray(image).save(os.path.join(dirs["images"], filename))
            Image.fromarray(id2rgb(segment_ids)).save(os.path.join(dirs["panoptic"], filename))
            semantic = _semantic_labels(segment_ids, segments)
            Image.fromarray(semantic).save(os.path.join(dirs["semantic"], filename))
            images.append(
                {"id": index, "file_name": filename, "height": image_size, "width": image_size}
            )
            segments_info, things = _annotations(segment_ids, segments)
            panoptic.append(
                {"image_id": index, "file_name": filename, "segments_info": segments_info}
            )
            for thing in things:
                instances.append({"id": len(instances) + 1, "image_id": index, **thing})
        _write_json(
            os.path.join(folder, "annotations", f"panoptic_{split}.json"),
            {"images": images, "annotations": panoptic, "categories": list(PANOPTIC_CATEGORIES)},
        )
        categories = [{"id": c["id"], "name": c["name"]} for c in _THINGS]
        _write_json(
            os.path.join(folder, "annotations", f"instances_{split}.json"),
            {"images": images, "annotations": instances, "categories": categories},
        )
    mark_complete(folder, generation_spec(splits, image_size, seed, version=_VERSION))


def render_panoptic_sample(
    rng: np.random.Generator, size: int
) -> Tuple[np.ndarray, np.ndarray, List[Segment]]:
    """
    Draw one image and its panoptic segmentation.

    Args:
        rng (np.random.Generator): the image's own generator.
        size (int): side of the square image (pixels).

    Returns:
        tuple: the (size, size, 3) uint8 RGB image; the (size, size) int32 segment ids, each
        pixel in one segment (ids from 1: the stuff regions, then the things in drawing order);
        the segments, in id order. Every segment has pixels.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = np.empty((size, size, 3), dtype=np.float32)
    segment_ids = np.zeros((size, size), dtype=np.int32)
    segments = []
    regions = _stuff_regions(rng, xs, ys)
    categories = rng.permutation([c["id"] for c in _STUFF])[: len(regions)]
    for region, category_id in zip(regions, categories):
        image[region] = _stuff_texture(int(category_id), xs, ys, rng)[region]
        segments.append(Segment(len(segments) + 1, int(category_id)))
        segment_ids[region] = segments[-1].id
    for category_id, mask in _place_things(rng, xs, ys):
        # The shape's class id in semask_shapes chooses its colours.
        colour = shape_fill(SHAPES_CLASSES.index(_name(category_id)), xs, ys, rng)
        image[mask] = colour[mask]
        image[mask & ~_eroded(mask)] *= _OUTLINE
        segments.append(Segment(len(segments) + 1, category_id))
        segment_ids[mask] = segments[-1].id
    image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)
    # A later shape may hide a stuff region (never a thing) entirely: renumber without gaps.
    kept = [s for s in segments if (segment_ids == s.id).any()]
    renumber = np.zeros(len(segments) + 1, dtype=np.int32)
    renumber[[s.id for s in kept]] = np.arange(1, len(kept) + 1)
    segments = [Segment(i, s.category_id) for i, s in enumerate(kept, start=1)]
    return np.clip(image, 0, 255).round().astype(np.uint8), renumber[segment_ids], segments


def _stuff_regions(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> List[np.ndarray]:
    # Voronoi cells of 1-3 random points, each at least a tenth of the image.
    size = xs.shape[0]
    count = int(rng.integers(1, 4))
    while True:
        centres = rng.uniform(0, size, size=(count, 2))
        distance = (xs[None] - centres[:, 0, None, None]) ** 2 + (
            ys[None] - centres[:, 1, None, None]
        ) ** 2
        nearest = distance.argmin(axis=0)
        regions = [nearest == k for k in range(count)]
        if min(r.mean() for r in regions) >= 0.1:
            return regions


def _stuff_texture(category_id: int, xs: np.ndarray, ys: np.ndarray, rng) -> np.ndarray:
    # Plain, striped or grainy: patterns of different structure (none, oriented, per pixel).
    base = 0.5 * noise_background(rng, xs.shape[0])
    base += 0.5 * np.array(_STUFF_TINTS[category_id], dtype=np.float32)
    if category_id == _SMOOTH:
        return base
    if category_id == _STRIPES:
        angle = rng.uniform(0, np.pi)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) / rng.uniform(4, 6)
        pattern = np.floor(phase) % 2 - 0.5
        return base + pattern[:, :, None] * rng.uniform(50, 70)
    grain = rng.normal(0.0, 1.0, size=xs.shape).astype(np.float32)
    return base + grain[:, :, None] * rng.uniform(20, 30)


def _place_things(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray
) -> List[Tuple[int, np.ndarray]]:
    """
    The things of one image in drawing order: (COCO category id, full mask) each, placed so
    that every instance stays visible (see :data:`_MAX_HIDDEN`, :data:`_MIN_AREA`).
    """
    size = xs.shape[0]
    min_area = _MIN_AREA * size * size
    placed, visible = [], []  # (category id, full mask, centre, radius); visible masks
    for _ in range(int(rng.integers(3, 7))):
        category_id = int(_THINGS[rng.integers(len(_THINGS))]["id"])
        radius = size * rng.uniform(0.1, 0.16)
        for _ in range(_PLACEMENT_TRIES):
            if placed and rng.random() < 0.7:
                # Next to an earlier instance: touching or overlapping it.
                _, _, (x0, y0), r0 = placed[rng.integers(len(placed))]
                direction = rng.uniform(0, 2 * np.pi)
                distance = (r0 + radius) * rng.uniform(0.7, 1.0)
                centre = (x0 + distance * np.cos(direction), y0 + distance * np.sin(direction))
            else:
                centre = tuple(rng.uniform(radius, size - radius, size=2))
            if not all(0.5 * radius <= c <= size - 0.5 * radius for c in centre):
                continue
            mask = shape_mask(
                SHAPES_CLASSES.index(_name(category_id)),
                xs - centre[0],
                ys - centre[1],
                radius,
                rng,
            )
            left = [v & ~mask for v in visible]
            if mask.sum() >= min_area and all(
                kept.sum() >= max(min_area, (1 - _MAX_HIDDEN) * v.sum())
                for kept, v in zip(left, visible)
            ):
                placed.append((category_id, mask, centre, radius))
                visible = left + [mask]
                break
    return [(category_id, mask) for category_id, mask, _, _ in placed]


def _eroded(mask: np.ndarray) -> np.ndarray:
    # Pixels whose four neighbours are in the mask too; the image border counts as outside.
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _name(category_id: int) -> str:
    return PANOPTIC_CATEGORIES[category_id - 1]["name"]


def _semantic_labels(segment_ids: np.ndarray, segments: List[Segment]) -> np.ndarray:
    # Contiguous id = position in PANOPTIC_CATEGORIES = COCO id - 1.
    lookup = np.zeros(len(segments) + 1, dtype=np.uint8)
    for segment in segments:
        lookup[segment.id] = segment.category_id - 1
    return lookup[segment_ids]


def _annotations(segment_ids: np.ndarray, segments: List[Segment]) -> Tuple[List[Dict], List[Dict]]:
    """The COCO panoptic ``segments_info`` of an image, and its COCO instance annotations."""
    segments_info, things = [], []
    for segment in segments:
        mask = segment_ids == segment.id
        encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        area = int(mask.sum())
        bbox = [int(v) for v in mask_util.toBbox(encoded)]
        segments_info.append(
            {
                "id": segment.id,
                "category_id": segment.category_id,
                "iscrowd": 0,
                "area": area,
                "bbox": bbox,
            }
        )
        if PANOPTIC_CATEGORIES[segment.category_id - 1]["isthing"]:
            rle = {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}
            things.append(
                {
                    "category_id": segment.category_id,
                    "segmentation": rle,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    return segments_info, things


def _write_json(path: str, data: Dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, sort_keys=True)
