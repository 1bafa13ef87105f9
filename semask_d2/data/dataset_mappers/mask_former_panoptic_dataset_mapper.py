"""
Training mapper of panoptic-segmentation datasets for MaskFormer models (the behaviour of
Mask2Former's ``mask_former_panoptic`` mapper, with checked inputs), which also emits the
per-pixel labels of SeMask's prior loss.
"""

import copy
from typing import Dict, List, Tuple

import numpy as np
from panopticapi.utils import rgb2id

from detectron2.data import transforms as T

from ..errors import DatasetError
from ..file_checks import check_size, read_header, read_image_checked
from .mask_former_segment_dataset_mapper import MaskFormerSegmentDatasetMapper
from .registration import register_training_mapper
from .semantic_targets import labels_from_panoptic

__all__ = ["MaskFormerPanopticDatasetMapper", "read_panoptic_checked"]

_PANOPTIC_MODES = frozenset({"RGB", "RGBA"})


def read_panoptic_checked(
    path: str, segments_info: List[Dict], image_size: Tuple[int, int]
) -> Tuple[np.ndarray, np.ndarray]:
    """
    Decode a COCO-format panoptic PNG and check it against its record.

    Args:
        path (str): the PNG; segment id = R + 256 G + 256^2 B, 0 = void (unlabelled).
        segments_info (list[dict]): the record's segments (``id`` each).
        image_size (tuple[int, int]): (H, W) of the image.

    Returns:
        tuple[np.ndarray, np.ndarray]: the (H, W, 3) uint8 colours and the (H, W) int32 ids.

    Raises:
        DatasetError: the PNG is missing, unreadable, not RGB, not of the image's size, or
            holds a non-zero id that `segments_info` lacks.
    """
    mode, _, _ = read_header(path, role="panoptic PNG")
    if mode not in _PANOPTIC_MODES:
        raise DatasetError(
            f"panoptic PNG {path} is a {mode} image; panoptic PNGs are RGB, with segment id = "
            "R + 256 G + 256^2 B. Fix: regenerate it with the dataset's panoptic preparation "
            "script (see datasets/README.md)."
        )
    colors = read_image_checked(path, "RGB")
    check_size({"height": image_size[0], "width": image_size[1]}, colors, path)
    segment_ids = rgb2id(colors)
    unknown = np.setdiff1d(segment_ids, [0] + [s["id"] for s in segments_info])
    if unknown.size:
        raise DatasetError(
            f"panoptic PNG {path} has segment id(s) {', '.join(map(str, unknown[:5]))} that "
            "the record's segments_info lacks. Fix: regenerate the PNGs and their JSON together "
            "(they are out of step), or drop the image from the JSON."
        )
    return colors, segment_ids


@register_training_mapper("mask_former_panoptic")
class MaskFormerPanopticDatasetMapper(MaskFormerSegmentDatasetMapper):
    """
    Map a detectron2 panoptic record (``file_name``, ``pan_seg_file_name``, ``segments_info``
    with contiguous ``category_id``s, optionally ``sem_seg_file_name``) to a training input:

    1. read the image and the panoptic PNG (checked against ``segments_info``);
    2. take the prior loss's labels from ``sem_seg_file_name``, or derive them from the
       segments (:func:`labels_from_panoptic`: crowd segments keep their class, void is
       ignored);
    3. augment as the semantic mapper does (its ``from_config``: resize, crop with a cap on one
       category's area, optional SSD colour jitter, flip); the PNG follows (nearest);
    4. pad the image (128) and labels (ignore value) to exactly `size_divisibility`;
    5. one target per non-crowd segment: its class and mask (empty when cropped away). Crowd
       segments give no target.
    """

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict (dict): detectron2 panoptic record.

        Returns:
            dict: the record (with the image's ``height``/``width``) plus ``image``,
            ``sem_seg`` and ``instances``, as
            :meth:`MaskFormerSegmentDatasetMapper._training_input` describes.

        Raises:
            DatasetError: the record is not panoptic, a file is missing or corrupt, sizes
                differ, or a segment id or class does not match the record.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image, colors, segment_ids = self._read(dataset_dict)
        segments_info = dataset_dict["segments_info"]
        sem_seg = self._prior_labels(
            dataset_dict,
            image.shape[:2],
            lambda: labels_from_panoptic(segment_ids, segments_info, self.ignore_label),
        )
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        # Nearest-neighbour transforms of the colours keep every id exact.
        segment_ids = rgb2id(transforms.apply_segmentation(colors))
        targets = [s for s in segments_info if not s.get("iscrowd", 0)]
        return self._training_input(
            dataset_dict,
            aug_input,
            [s["category_id"] for s in targets],
            [segment_ids == s["id"] for s in targets],
        )

    def _read(self, dataset_dict: Dict) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The checked image (H, W, C), panoptic colours (H, W, 3) and ids (H, W) of a record."""
        if "pan_seg_file_name" not in dataset_dict or "segments_info" not in dataset_dict:
            raise self._record_error(
                dataset_dict,
                "pan_seg_file_name and segments_info",
                "its panoptic annotations (e.g. detectron2's register_coco_panoptic)",
            )
        image = self._read_image(dataset_dict)
        path = dataset_dict["pan_seg_file_name"]
        segments_info = dataset_dict["segments_info"]
        colors, segment_ids = read_panoptic_checked(path, segments_info, image.shape[:2])
        self._check_classes(
            [s["category_id"] for s in segments_info],
            f"a segment of panoptic PNG {path}",
            "register the dataset with contiguous category ids (its metadata's "
            "*_dataset_id_to_contiguous_id), or check stuff_classes.",
        )
        return image, colors, segment_ids
