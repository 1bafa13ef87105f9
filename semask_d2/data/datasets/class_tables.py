"""
Class tables shipped with the package (``tables/*.json``) and a fallback colour palette.

The tables are read on first use and cached. Their values are those of Mask2Former's dataset
registration (facebookresearch/Mask2Former
``mask2former/data/datasets/register_ade20k_panoptic.py``, ``register_ade20k_full.py``,
``register_coco_stuff_10k.py``); see also datasets/README.md.
"""

import functools
import json
from importlib import resources
from typing import Dict, List, Tuple

__all__ = ["load_class_table", "class_names", "class_colors", "indexed_palette"]


@functools.lru_cache(maxsize=None)
def load_class_table(filename: str) -> Tuple[Dict, ...]:
    """
    Args:
        filename (str): a file in ``semask_d2/data/datasets/tables/``,
            e.g. "ade20k_150_classes.json".

    Returns:
        tuple[dict]: one record per class, in contiguous (train id) order. Cached: do not mutate.
    """
    text = resources.files(__package__).joinpath("tables", filename).read_text(encoding="utf-8")
    return tuple(json.loads(text))


def class_names(filename: str) -> List[str]:
    """The ``name`` field of every class of a table, in train-id order."""
    return [record["name"] for record in load_class_table(filename)]


def class_colors(filename: str) -> List[List[int]]:
    """
    RGB colour of every class of a table, in train-id order. Classes whose table colour is
    missing or null get the colour of their index in :func:`indexed_palette`.
    """
    table = load_class_table(filename)
    fallback = indexed_palette(len(table))
    return [list(r["color"]) if r.get("color") else fallback[i] for i, r in enumerate(table)]


def indexed_palette(num_classes: int) -> List[List[int]]:
    """
    Deterministic, well-spread RGB colours for class indices 0..num_classes-1: the PASCAL VOC
    colour map, which spreads the bits of ``index + 1`` over the high bits of R, G and B
    (``+ 1`` so that no class is black, the usual "void" colour).

    Args:
        num_classes (int): number of colours.

    Returns:
        list[list[int]]: ``num_classes`` [R, G, B] triplets in 0..255.
    """
    return [_voc_color(index + 1) for index in range(num_classes)]


def _voc_color(code: int) -> List[int]:
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((code >> channel) & 1) << shift
        code >>= 3
    return rgb
