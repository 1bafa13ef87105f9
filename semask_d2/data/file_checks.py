"""
Reading dataset images and labels with checks that turn bad files into :class:`DatasetError`.

Two levels: :func:`read_header` opens a file without decoding its pixels (cheap; used by the
dataset loaders for every record), :func:`read_image_checked` and :func:`read_label_checked`
decode it (used by the dataset mappers when each sample is read).
"""

from typing import Dict, Tuple

import numpy as np
from PIL import Image

from detectron2.data import detection_utils as utils

from .errors import DatasetError

__all__ = [
    "LABEL_MODES",
    "check_label_mode",
    "check_size",
    "read_header",
    "read_image_checked",
    "read_label_checked",
]

# PIL modes of single-channel class-index images: 1/8-bit ("P" keeps its indices; its palette is
# only for display), 16-bit (ADE20K-full TIFFs) and 32-bit integer.
LABEL_MODES = frozenset({"1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"})

_EXIF_ORIENTATION = 0x0112
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPED_ORIENTATIONS = frozenset({5, 6, 7, 8})
# What PIL raises on unreadable files: UnidentifiedImageError and truncation are OSErrors;
# damaged headers and chunks raise SyntaxError or ValueError.
_READ_ERRORS = (OSError, SyntaxError, ValueError)
_CORRUPT_FIX = "Fix: replace the file with a valid image, or remove it and its pair."


def read_header(path: str, role: str = "image") -> Tuple[str, int, int]:
    """
    Read mode and size of an image file without decoding its pixels.

    The size follows the EXIF orientation, as :func:`detectron2.data.detection_utils.read_image`
    applies it. Only EXIF data stored before the pixel data is seen (always so for JPEG); a PNG
    whose eXIf chunk follows the pixels is caught by the mapper's size check instead.

    Args:
        path (str): image or label file.
        role (str): "image" or "label", for the error message.

    Returns:
        tuple[str, int, int]: PIL mode, width, height.

    Raises:
        DatasetError: the file is missing or is not a readable image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if "exif" in image.info:
                if image.getexif().get(_EXIF_ORIENTATION) in _SWAPPED_ORIENTATIONS:
                    width, height = height, width
            return image.mode, width, height
    except FileNotFoundError:
        raise DatasetError(f"{role} file not found: {path}. Fix: restore the file.") from None
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {role} {path} ({e}). {_CORRUPT_FIX}") from e


def check_label_mode(path: str, mode: str) -> None:
    """
    Raise :class:`DatasetError` unless `mode` is a single-channel index mode (:data:`LABEL_MODES`).

    Args:
        path (str): the label file, for the message.
        mode (str): its PIL mode.
    """
    if mode not in LABEL_MODES:
        raise DatasetError(
            f"label {path} is a {mode} image; labels must be single-channel class indices "
            "(8-bit L or P, or 16-bit). Fix: convert colours to class ids, e.g. with "
            "datasets/prepare_*.py (see datasets/README.md)."
        )


def read_image_checked(path: str, image_format: str) -> np.ndarray:
    """
    Decode an image as :func:`detectron2.data.detection_utils.read_image` does.

    Args:
        path (str): image file.
        image_format (str): detectron2 image format, e.g. "BGR", "RGB" or "L"; grayscale files
            are converted, so they work with any format.

    Returns:
        np.ndarray: (H, W, C) array, uint8 for PIL formats and "BGR".

    Raises:
        DatasetError: the file is missing, corrupt or truncated.
    """
    try:
        return utils.read_image(path, format=image_format)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}. Fix: restore the file.") from None
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read image {path} ({e}). {_CORRUPT_FIX}") from e


def read_label_checked(path: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """
    Decode a label image without converting it to 8 bits, and check its values.

    Args:
        path (str): label file (8-bit, palette or 16-bit single-channel).
        num_classes (int): K; valid values are 0..K-1 and `ignore_label`.
        ignore_label (int): the dataset's ignore value (255, or 65535 for ADE20K-full).

    Returns:
        np.ndarray: (H, W) integer array with the stored values (uint8, uint16 or int32).

    Raises:
        DatasetError: the file is missing, corrupt, not single-channel, or holds a value outside
            the classes other than `ignore_label`.
    """
    try:
        # No format: PIL keeps the file's own mode, so 16-bit values survive.
        label = utils.read_image(path)
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}. Fix: restore the file.") from None
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read label {path} ({e}). {_CORRUPT_FIX}") from e
    if label.ndim != 2:
        check_label_mode(path, f"{label.shape[-1]}-channel")
    if label.dtype == bool:
        label = label.astype(np.uint8)
    bad = ((label < 0) | (label >= num_classes)) & (label != ignore_label)
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(label[bad])[:5])
        raise DatasetError(
            f"label {path} has value(s) {values} outside the classes 0..{num_classes - 1} and "
            f"the ignore value {ignore_label}. Fix: map them to class ids or {ignore_label} "
            "(raw ADE20K/COCO-Stuff labels need datasets/prepare_*.py), or correct the "
            "dataset's stuff_classes/ignore_label."
        )
    return label


def check_size(dataset_dict: Dict, array: np.ndarray, path: str = "") -> None:
    """
    Raise :class:`DatasetError` when `array` is not of the record's ``height`` x ``width``.

    Args:
        dataset_dict (dict): detectron2 record; the check is skipped without ``height``/``width``.
        array (np.ndarray): decoded image or label, (H, W) or (H, W, C).
        path (str): the decoded file; default the record's ``file_name``.
    """
    if "height" not in dataset_dict or "width" not in dataset_dict:
        return
    expected = (dataset_dict["height"], dataset_dict["width"])
    if tuple(array.shape[:2]) != expected:
        raise DatasetError(
            f"{path or dataset_dict['file_name']} decodes to {array.shape[1]}x{array.shape[0]} "
            f"but the dataset expects {expected[1]}x{expected[0]}. Fix: make the image and its "
            "label the same size (EXIF rotation counts), and reload the dataset."
        )
