"""
SeMask shapes: a small synthetic semantic-segmentation dataset that the package generates on
first use (``semask_shapes_{train,val}``), for the quick start and for tests. No download.

Each image shows a textured background and 2-4 possibly overlapping objects. A class is a
combination of shape, pattern and colour. The four plain classes draw their colour from
overlapping thirds of one six-colour palette: any two of them share exactly one colour, which
only the shape (and, for the ring, the hole) tells apart. Stripes use any two palette colours,
and the background is tinted from the palette too:

====  ==============  =============================================================
 id   class           appearance
====  ==============  =============================================================
 0    background      smooth low-saturation noise, tinted with any palette colour
 1    disc            plain filled circle; red, green or blue
 2    square          plain filled square, any rotation; blue, yellow or purple
 3    triangle        plain equilateral triangle, any rotation; purple, cyan or red
 4    striped disc    circle striped in any two palette colours, any direction
 5    ring            plain annulus, its hole shows what lies below; green, yellow or cyan
====  ==============  =============================================================

Labels are single-channel PNGs. The ignore value 255 marks a 2-pixel band on every boundary
between two labels (as in PASCAL VOC) and "clutter" crosses that belong to no class.

Layout under ``<root>/semask_shapes/``: ``images/{train,val}/NNNN.png`` (RGB) and
``annotations/{train,val}/NNNN.png``, plus ``COMPLETE``, a JSON record of the generation
parameters written last. The folder is generated into a temporary sibling and renamed into
place, so a killed generation never leaves a partial dataset; a folder without a matching
``COMPLETE`` is generated again. Every image has its own generator seeded from (seed, split,
index): the files depend only on the parameters, byte for byte.
"""

import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Optional

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog

from ..errors import DatasetError
from .sem_seg import register_sem_seg_dataset

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_COLORS",
    "SHAPES_FOLDER",
    "SHAPES_SPLITS",
    "ensure_generated",
    "ensure_semask_shapes",
    "generate_semask_shapes",
    "mark_complete",
    "noise_background",
    "register_semask_shapes",
    "render_sample",
    "shape_fill",
    "shape_mask",
    "split_key",
]

logger = logging.getLogger(__name__)

SHAPES_FOLDER = "semask_shapes"
SHAPES_CLASSES = ("background", "disc", "square", "triangle", "striped disc", "ring")
# Display colours (visualizer, not the rendered images).
SHAPES_COLORS = (
    (70, 70, 70),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
)
# Split -> number of images. The quick start (configs/quickstart/semask_fpn_shapes.yaml) sees
# the 600 train images 13 times (1000 iterations of 8) and evaluates the 100 val ones in ~2 s.
SHAPES_SPLITS = {"train": 600, "val": 100}
_IMAGE_SIZE = 128
_SEED = 0
# Bump when the rendering changes: existing folders with another version are regenerated.
_VERSION = 2
_IGNORE = 255
_MARKER = "COMPLETE"

# Object fill colours (RGB): red, green, blue, yellow, purple, cyan.
_PALETTE = np.array(
    [(200, 50, 50), (50, 170, 60), (50, 90, 210), (220, 200, 40), (170, 60, 190), (40, 190, 200)],
    dtype=np.float32,
)
_DISC, _SQUARE, _TRIANGLE, _STRIPED_DISC, _RING = 1, 2, 3, 4, 5
# Palette indices of each plain class: every colour belongs to exactly two of them.
_CLASS_COLORS = {_DISC: (0, 1, 2), _SQUARE: (2, 3, 4), _TRIANGLE: (4, 5, 0), _RING: (1, 3, 5)}


def register_semask_shapes(
    root: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> None:
    """
    Register ``semask_shapes_{split}`` for every split through :func:`register_sem_seg_dataset`,
    with a loader that first generates ``<root>/semask_shapes`` when it is missing, incomplete
    or made with other parameters (:func:`ensure_semask_shapes`). Nothing is read or written
    here.

    Args:
        root (str): the datasets folder, normally ``$DETECTRON2_DATASETS``.
        splits (dict[str, int] or None): split name -> number of images; None:
            :data:`SHAPES_SPLITS`.
        image_size (int): side of the square images (pixels).
        seed (int): base seed of the generation.
    """
    splits = dict(SHAPES_SPLITS if splits is None else splits)
    folder = os.path.join(root, SHAPES_FOLDER)
    spec = generation_spec(splits, image_size, seed)
    for split in splits:
        name = f"semask_shapes_{split}"
        register_sem_seg_dataset(
            name,
            os.path.join(folder, "images", split),
            os.path.join(folder, "annotations", split),
            stuff_classes=SHAPES_CLASSES,
            stuff_colors=SHAPES_COLORS,
            ignore_label=_IGNORE,
            image_ext="png",
            gt_ext="png",
            fix_hint="delete the folder to have it generated again",
        )
        generate_before_loading(name, ensure_semask_shapes, folder, spec)


def generate_before_loading(name: str, ensure: Callable[..., bool], folder: str, spec: Dict):
    """
    Keep the registered (checked) loader of dataset `name`, but make it first call
    ``ensure(folder, splits=..., image_size=..., seed=...)`` with the parameters of `spec`.
    """
    load = DatasetCatalog[name]
    DatasetCatalog.remove(name)

    def generate_then_load() -> List[Dict]:
        ensure(folder, **spec_arguments(spec))
        return load()

    DatasetCatalog.register(name, generate_then_load)


def ensure_semask_shapes(
    folder: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> bool:
    """
    Make `folder` hold the dataset of these parameters, generating it atomically if needed
    (:func:`ensure_generated`).

    Args:
        folder (str): the dataset folder, ``<root>/semask_shapes``.
        splits, image_size, seed: see :func:`register_semask_shapes`.

    Returns:
        bool: True when this call generated the dataset.

    Raises:
        DatasetError: the parent folder cannot be written.
    """
    spec = generation_spec(dict(SHAPES_SPLITS if splits is None else splits), image_size, seed)
    return ensure_generated(
        folder,
        spec,
        lambda partial: generate_semask_shapes(partial, **spec_arguments(spec)),
        _describe(spec),
    )


def ensure_generated(
    folder: str, spec: Dict, generate: Callable[[str], None], description: str
) -> bool:
    """
    Make `folder` hold the generated dataset that `spec` describes, generating it atomically
    if needed. The dataset is complete when its ``COMPLETE`` file holds `spec`.

    The dataset is written into ``.<folder name>.partial-<pid>-*`` next to `folder`, then
    renamed to `folder`. Partial folders of processes that no longer run are removed. When
    several processes (DDP ranks) generate at once, the first rename wins and the others
    discard their copy, which is identical.

    Args:
        folder (str): the dataset folder, e.g. ``<root>/semask_shapes``.
        spec (dict): the generation parameters (JSON-serializable).
        generate (callable): writes the dataset into the empty folder it is given, ending with
            :func:`mark_complete` of `spec`.
        description (str): the parameters in words, for the log.

    Returns:
        bool: True when this call generated the dataset.

    Raises:
        DatasetError: the parent folder cannot be written.
    """
    if _is_complete(folder, spec):
        return False
    parent, name = os.path.split(os.path.abspath(folder))
    prefix = f".{name}.partial-"
    try:
        os.makedirs(parent, exist_ok=True)
        _remove_stale_partials(parent, prefix)
        partial = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    except OSError as e:
        raise DatasetError(
            f"cannot create the generated dataset {folder} ({e}). Fix: make {parent} writable, "
            "or set $DETECTRON2_DATASETS to a writable folder."
        ) from e
    try:
        logger.info("Generating %s (%s) ...", folder, description)
        generate(partial)
        _move_into_place(partial, folder, spec, prefix)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return True


def mark_complete(folder: str, spec: Dict) -> None:
    """Write the ``COMPLETE`` record of `spec` into `folder`: the last file of a generation."""
    with open(os.path.join(folder, _MARKER), "w") as f:
        json.dump(spec, f, sort_keys=True)


def generate_semask_shapes(
    folder: str,
    *,
    splits: Optional[Dict[str, int]] = None,
    image_size: int = _IMAGE_SIZE,
    seed: int = _SEED,
) -> None:
    """
    Write the dataset into the existing folder `folder` (not atomic; see
    :func:`ensure_semask_shapes`), the ``COMPLETE`` record last.

    Args:
        folder (str): an existing, empty folder.
        splits, image_size, seed: see :func:`register_semask_shapes`.
    """
    splits = dict(SHAPES_SPLITS if splits is None else splits)
    for split_index, (split, count) in enumerate(sorted(splits.items())):
        image_dir = os.path.join(folder, "images", split)
        label_dir = os.path.join(folder, "annotations", split)
        os.makedirs(image_dir)
        os.makedirs(label_dir)
        for index in range(count):
            # The split's name, not its position, seeds it: adding a split changes no file.
            rng = np.random.default_rng([seed, split_key(split), index])
            image, label = render_sample(rng, image_size)
            filename = f"{index:04d}.png"
            Image.fromarray(image).save(os.path.join(image_dir, filename))
            Image.fromarray(label).save(os.path.join(label_dir, filename))
    mark_complete(folder, generation_spec(splits, image_size, seed))


def render_sample(rng: np.random.Generator, size: int):
    """
    Draw one image and its label.

    Args:
        rng (np.random.Generator): the image's own generator.
        size (int): side of the square image (pixels).

    Returns:
        tuple[np.ndarray, np.ndarray]: (size, size, 3) uint8 RGB image, (size, size) uint8 label
        with values 0..5 and 255.
    """
    image = noise_background(rng, size)
    label = np.zeros((size, size), dtype=np.uint8)
    classes = rng.integers(1, len(SHAPES_CLASSES), size=rng.integers(2, 5))
    for cls in classes:
        radius = size * rng.uniform(0.11, 0.22)
        cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, size=2)
        # Draw inside the bounding box of the triangle's circumcircle, the largest shape.
        box = tuple(
            slice(max(0, int(c - 1.3 * radius)), min(size, int(c + 1.3 * radius) + 1))
            for c in (cy, cx)
        )
        ys, xs = np.mgrid[box].astype(np.float32) + 0.5
        mask = shape_mask(int(cls), xs - cx, ys - cy, radius, rng)
        image[box][mask] = shape_fill(int(cls), xs, ys, rng)[mask]
        label[box][mask] = cls
    if rng.random() < 0.3:
        # Clutter that belongs to no class: a plain cross, labelled ignore.
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        arm, width = size * rng.uniform(0.06, 0.1), size * rng.uniform(0.015, 0.03)
        dx, dy = xs - rng.uniform(0, size), ys - rng.uniform(0, size)
        mask = ((np.abs(dx) < arm) & (np.abs(dy) < width)) | (
            (np.abs(dy) < arm) & (np.abs(dx) < width)
        )
        image[mask] = _PALETTE[rng.integers(len(_PALETTE))]
        label[mask] = _IGNORE
    image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).round().astype(np.uint8), _ignore_boundaries(label)


def noise_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """
    Smooth low-saturation noise: a palette colour mixed with grey, modulated by bilinearly
    upsampled 5x5 noise.

    Returns:
        np.ndarray: (size, size, 3) float32 RGB, roughly 0-255 (not clipped).
    """
    tint = 0.35 * _PALETTE[rng.integers(len(_PALETTE))] + 0.65 * rng.uniform(60, 160)
    coarse = rng.uniform(-35, 35, size=(5, 5)).astype(np.float32)
    grid = np.linspace(0, 4, size, dtype=np.float32)
    i0 = np.minimum(grid.astype(int), 3)
    t = grid - i0
    rows = coarse[i0] * (1 - t)[:, None] + coarse[i0 + 1] * t[:, None]
    field = rows[:, i0] * (1 - t)[None] + rows[:, i0 + 1] * t[None]
    return tint[None, None, :] + field[:, :, None]


def shape_mask(cls: int, dx: np.ndarray, dy: np.ndarray, radius: float, rng) -> np.ndarray:
    """
    The pixels of one shape at a random rotation.

    Args:
        cls (int): the shape's class id in :data:`SHAPES_CLASSES` (1..5).
        dx, dy (np.ndarray): (h, w) offsets of the pixel centres from the shape's centre.
        radius (float): the disc's radius; the other shapes have about its area.
        rng (np.random.Generator): draws the rotation.

    Returns:
        np.ndarray: (h, w) bool.
    """
    angle = rng.uniform(0, 2 * np.pi)
    if cls in (_DISC, _STRIPED_DISC):
        return dx**2 + dy**2 <= radius**2
    if cls == _RING:
        return (dx**2 + dy**2 <= radius**2) & (dx**2 + dy**2 >= (radius * 0.55) ** 2)
    if cls == _SQUARE:
        # Half side 0.8 r: about the area of a disc of radius r.
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        return (np.abs(u) <= 0.8 * radius) & (np.abs(v) <= 0.8 * radius)
    # Triangle with circumradius 1.3 r: the three half-planes at distance 0.65 r (inradius).
    mask = np.ones(dx.shape, dtype=bool)
    for k in range(3):
        theta = angle + 2 * np.pi * k / 3
        mask &= dx * np.cos(theta) + dy * np.sin(theta) <= 0.65 * radius
    return mask


def shape_fill(cls: int, xs: np.ndarray, ys: np.ndarray, rng) -> np.ndarray:
    """
    The colours of one shape: a plain colour of its class, or random stripes.

    Args:
        cls (int): the shape's class id in :data:`SHAPES_CLASSES` (1..5).
        xs, ys (np.ndarray): (h, w) pixel centres, for the stripes.
        rng (np.random.Generator): draws the colours (and the stripes).

    Returns:
        np.ndarray: (h, w, 3) float32 RGB.
    """
    if cls != _STRIPED_DISC:
        colour = _PALETTE[rng.choice(_CLASS_COLORS[cls])] * rng.uniform(0.8, 1.15)
        return np.broadcast_to(colour, xs.shape + (3,))
    first, second = rng.choice(len(_PALETTE), size=2, replace=False)
    angle, period = rng.uniform(0, np.pi), rng.uniform(5, 8)
    phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    stripes = (np.floor(phase) % 2 == 0)[:, :, None]
    return np.where(stripes, _PALETTE[first] * rng.uniform(0.8, 1.15), _PALETTE[second])


def _ignore_boundaries(label: np.ndarray) -> np.ndarray:
    # Pixels with a 4-neighbour of another value: one pixel on each side of every boundary.
    edge = np.zeros(label.shape, dtype=bool)
    vertical = label[1:] != label[:-1]
    horizontal = label[:, 1:] != label[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    out = label.copy()
    out[edge] = _IGNORE
    return out


def split_key(split: str) -> int:
    """A stable integer per split name, for seeds (Python's hash() is salted per process)."""
    return int.from_bytes(split.encode(), "little") % (2**32)


def generation_spec(
    splits: Dict[str, int], image_size: int, seed: int, version: int = _VERSION
) -> Dict:
    """The parameters a generated dataset folder is made from (compared on reuse)."""
    return {
        "version": version,
        "splits": {k: int(v) for k, v in sorted(splits.items())},
        "image_size": int(image_size),
        "seed": int(seed),
    }


def spec_arguments(spec: Dict) -> Dict:
    """The keyword arguments of the generator for `spec`."""
    return {"splits": spec["splits"], "image_size": spec["image_size"], "seed": spec["seed"]}


def _describe(spec: Dict) -> str:
    counts = ", ".join(f"{n} {split}" for split, n in spec["splits"].items())
    return f"{counts} images of {spec['image_size']} px, seed {spec['seed']}"


def _is_complete(folder: str, spec: Dict) -> bool:
    try:
        with open(os.path.join(folder, _MARKER)) as f:
            return json.load(f) == spec
    except (OSError, ValueError):
        return False


def _move_into_place(partial: str, folder: str, spec: Dict, prefix: str) -> None:
    if os.path.lexists(folder):
        if _is_complete(folder, spec):
            return  # another process finished first
        # Incomplete or stale: move it aside atomically, then delete it.
        stale = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-old-", dir=os.path.dirname(partial))
        try:
            os.replace(folder, os.path.join(stale, "old"))
            logger.info("Replacing incomplete or outdated %s", folder)
        except FileNotFoundError:
            pass  # another process moved it first
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(partial, folder)
    except OSError:
        if not _is_complete(folder, spec):
            raise
        return  # another process renamed its identical copy first
    logger.info("Generated %s", folder)


def _remove_stale_partials(parent: str, prefix: str) -> None:
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            logger.info("Removing %s, left by an interrupted generation", entry)
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True
