"""
Test-time resizing, chosen by ``INPUT.TEST_RESIZE``:

* "detectron2": :class:`detectron2.data.transforms.ResizeShortestEdge` (short side
  ``INPUT.MIN_SIZE_TEST``, long side at most ``INPUT.MAX_SIZE_TEST``; PIL bilinear).
* "mmseg": mmseg's keep-ratio ``Resize`` to ``img_scale = (MAX_SIZE_TEST, MIN_SIZE_TEST)`` with
  ``mmcv.imresize`` (cv2 bilinear on uint8), the test pipeline of the released mmseg SeMask-FPN
  models (mmsegmentation v0.11 ``mmseg/datasets/pipelines/transforms.py``, mmcv
  ``mmcv/image/geometric.py`` ``rescale_size``/``imresize``).

The two agree on the output size up to float rounding but not on the pixels: PIL and cv2
bilinear filters differ, by several grey levels on downscaled images.
"""

from typing import Callable, Dict, Tuple

import cv2
import numpy as np

from detectron2.data import transforms as T

__all__ = ["CV2ResizeTransform", "MMSegKeepRatioResize", "TEST_RESIZES", "build_test_resize"]


class CV2ResizeTransform(T.Transform):
    """Resize images with cv2 bilinear (segmentation maps nearest), as ``mmcv.imresize``."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        """
        Args:
            h, w (int): input size.
            new_h, new_w (int): output size.
        """
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(
                f"CV2ResizeTransform for {self.h}x{self.w} images got {img.shape[0]}x"
                f"{img.shape[1]}"
            )
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def inverse(self) -> T.Transform:
        return CV2ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class MMSegKeepRatioResize(T.Augmentation):
    """
    mmseg ``Resize(img_scale=(long, short), keep_ratio=True)``: scale s = min(long / max(h, w),
    short / min(h, w)), new size (int(h * s + 0.5), int(w * s + 0.5)), cv2 bilinear.
    """

    def __init__(self, short_edge: int, long_edge: int):
        """
        Args:
            short_edge (int): the shorter side of ``img_scale`` (mmseg 512 for ADE20K).
            long_edge (int): the longer side of ``img_scale`` (mmseg 2048 for ADE20K).
        """
        super().__init__()
        if short_edge <= 0 or long_edge <= 0:
            raise ValueError(
                f"MMSegKeepRatioResize needs positive sizes, got short_edge={short_edge}, "
                f"long_edge={long_edge} (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)"
            )
        self._init(locals())

    @staticmethod
    def get_output_shape(h: int, w: int, short_edge: int, long_edge: int) -> Tuple[int, int]:
        """(new_h, new_w) of an h x w image, with mmcv ``rescale_size``'s float arithmetic."""
        scale = min(long_edge / max(h, w), short_edge / min(h, w))
        return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        return CV2ResizeTransform(
            h, w, *self.get_output_shape(h, w, self.short_edge, self.long_edge)
        )


def _detectron2_resize(cfg) -> T.Augmentation:
    return T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")


def _mmseg_resize(cfg) -> T.Augmentation:
    return MMSegKeepRatioResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)


# INPUT.TEST_RESIZE -> fn(cfg) -> the test-time resize augmentation.
TEST_RESIZES: Dict[str, Callable] = {"detectron2": _detectron2_resize, "mmseg": _mmseg_resize}


def build_test_resize(cfg) -> T.Augmentation:
    """The test-time resize named by ``cfg.INPUT.TEST_RESIZE``."""
    name = cfg.INPUT.TEST_RESIZE
    if name not in TEST_RESIZES:
        raise ValueError(f"Unknown INPUT.TEST_RESIZE {name!r}; use one of {sorted(TEST_RESIZES)}")
    return TEST_RESIZES[name](cfg)
