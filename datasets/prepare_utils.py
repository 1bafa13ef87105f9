"""
Helpers shared by the ``prepare_*.py`` scripts of this folder (not a script itself): the default
root, atomic writes, and a loop that keeps existing outputs unless asked to overwrite.
"""

import argparse
import json
import os
import shutil
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

from PIL import Image

__all__ = [
    "fail",
    "parse_args",
    "require_dir",
    "copy_file",
    "save_image",
    "save_json",
    "convert_all",
    "splits_to_convert",
]


def fail(message: str) -> None:
    """Stop the script: status 1 and `message` (naming the file or folder and the fix) last."""
    raise SystemExit(f"error: {message}")


def parse_args(
    description: str,
    subfolder: str,
    argv: Optional[Sequence[str]],
    extra: Optional[Callable] = None,
) -> argparse.Namespace:
    """
    Parse ``--root`` (default ``$DETECTRON2_DATASETS/<subfolder>``, ``~`` expanded) and
    ``--overwrite``, plus the options `extra(parser)` adds.
    """
    datasets = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--root",
        default=os.path.join(datasets, subfolder),
        help="dataset folder (default: $DETECTRON2_DATASETS/%(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rewrite outputs that already exist"
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.root = os.path.expanduser(args.root)
    return args


def require_dir(path: str, fix: str) -> None:
    """Fail unless `path` is a folder."""
    if not os.path.isdir(path):
        fail(f"folder not found: {path}. Fix: {fix}")


def save_image(image: Image.Image, path: str) -> None:
    """Write `image` to `path` atomically (an interrupted run leaves no partial output)."""
    tmp = path + ".partial"
    image.save(tmp, format=Image.registered_extensions()[os.path.splitext(path)[1].lower()])
    os.replace(tmp, path)


def save_json(data, path: str) -> None:
    """Write `data` as JSON to `path` atomically."""
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def copy_file(src: str, dst: str) -> None:
    """Copy `src` to `dst` atomically."""
    tmp = dst + ".partial"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def convert_all(
    jobs: Iterable[Tuple[str, Tuple]], convert: Callable, overwrite: bool, what: str
) -> None:
    """
    Run ``convert(*inputs, output)`` for every ``(output, inputs)`` of `jobs`, creating output
    folders. Existing outputs are kept unless `overwrite`, so the scripts can be re-run.
    A ValueError or OSError stops the script with the first input's path in the message.
    """
    written = kept = 0
    for output, inputs in jobs:
        if os.path.exists(output) and not overwrite:
            kept += 1
            continue
        os.makedirs(os.path.dirname(output), exist_ok=True)
        try:
            convert(*inputs, output)
        except (ValueError, OSError) as e:
            fail(f"{inputs[0]}: {e}. Fix: replace or remove this file and re-run")
        written += 1
    print(
        f"{what}: wrote {written}, kept {kept} existing"
        + (" (--overwrite redoes them)" if kept else "")
    )


def splits_to_convert(
    splits: Iterable[Tuple[str, str]], output: Callable[[str], str], overwrite: bool, what: str
) -> List[Tuple[str, str]]:
    """
    The ``(name, split)`` pairs of `splits` to convert: all of them with `overwrite`, else those
    whose output file ``output(name)`` does not exist yet (the others are reported as kept).
    """
    todo = []
    for name, split in splits:
        path = output(name)
        if os.path.exists(path) and not overwrite:
            print(f"{what} {name}: kept {path} (--overwrite redoes it)")
        else:
            todo.append((name, split))
    return todo
