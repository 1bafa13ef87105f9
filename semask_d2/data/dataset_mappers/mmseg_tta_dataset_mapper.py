"""
Multi-scale + flip test-time views as mmseg's ``MultiScaleFlipAug`` builds them for the released
SeMask-FPN models (mmsegmentation v0.11 ``mmseg/datasets/pipelines/test_time_aug.py``): every
view is resized from the original image with the keep-ratio cv2 resize, at img_scale x ratio.
"""

import copy
from typing import Dict, List, Sequence

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import transforms as T

from ..file_checks import read_image_checked
from ..transforms import MMSegKeepRatioResize

__all__ = ["MMSegMultiScaleFlipMapper"]


class MMSegMultiScaleFlipMapper:
    """
    Maps a test record to one view per scale ratio (and its horizontal flip), read from the
    record's ``file_name``: detectron2's ``DatasetMapperTTA`` would instead resize the image the
    test mapper already resized, a second interpolation mmseg does not do.
    """

    @configurable
    def __init__(
        self,
        *,
        short_edge: int,
        long_edge: int,
        ratios: Sequence[float],
        flip: bool,
        image_format: str,
    ):
        """
        Args:
            short_edge, long_edge (int): img_scale at ratio 1 (INPUT.MIN_SIZE_TEST and
                MAX_SIZE_TEST).
            ratios (list[float]): mmseg ``img_ratios``.
            flip (bool): add the horizontally flipped view of each scale.
            image_format (str): detectron2 image format, e.g. "RGB".
        """
        self.scales = [(int(short_edge * r), int(long_edge * r)) for r in ratios]
        self.flip = flip
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg) -> Dict:
        # TEST.AUG.MIN_SIZES are the short sides: ratios of MIN_SIZE_TEST (512 x 0.5 = 256, ...);
        # the long side scales with them (2048 x 0.5), so TEST.AUG.MAX_SIZE is not read.
        return {
            "short_edge": cfg.INPUT.MIN_SIZE_TEST,
            "long_edge": cfg.INPUT.MAX_SIZE_TEST,
            "ratios": [m / cfg.INPUT.MIN_SIZE_TEST for m in cfg.TEST.AUG.MIN_SIZES],
            "flip": cfg.TEST.AUG.FLIP,
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: Dict) -> List[Dict]:
        """
        Args:
            dataset_dict (dict): a test record with ``file_name``.
        Returns:
            list[dict]: per view, the record with ``image`` (C, H', W') and ``transforms``
            (a TransformList from the original image), ``height`` / ``width`` kept.
        """
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        views = []
        for short_edge, long_edge in self.scales:
            resize = MMSegKeepRatioResize(short_edge, long_edge).get_transform(image)
            resized = resize.apply_image(image)
            candidates = [(resized, [resize])]
            if self.flip:
                flip = T.HFlipTransform(resized.shape[1])
                candidates.append((flip.apply_image(resized), [resize, flip]))
            for pixels, transforms in candidates:
                view = copy.copy(dataset_dict)
                view["image"] = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
                view["transforms"] = T.TransformList(transforms)
                views.append(view)
        return views
