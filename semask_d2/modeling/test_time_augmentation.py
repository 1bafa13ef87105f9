"""
Multi-scale and flip test-time augmentation for semantic segmentation.

Each image is resized to every short side of TEST.AUG.MIN_SIZES, and also flipped when
TEST.AUG.FLIP, by the mapper INPUT.TEST_RESIZE names: detectron2's ``DatasetMapperTTA`` (long side
capped at TEST.AUG.MAX_SIZE) or mmseg's multi-scale flip (long side MAX_SIZE_TEST x the same
ratio, cv2, from the original file). The per-view class scores are brought back to the original
height/width, un-flipped, turned into probabilities and averaged.
"""

import copy
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detectron2.config import configurable
from detectron2.data.transforms import HFlipTransform
from detectron2.modeling import DatasetMapperTTA

from ..data.dataset_mappers.mmseg_tta_dataset_mapper import MMSegMultiScaleFlipMapper

__all__ = ["SemanticSegmentorWithTTA", "TTA_MAPPERS"]

# INPUT.TEST_RESIZE -> the mapper from a test record to its views: detectron2's (re-resizes the
# test-resized image) or mmseg's (views resized from the original file).
TTA_MAPPERS = {"detectron2": DatasetMapperTTA, "mmseg": MMSegMultiScaleFlipMapper}


class SemanticSegmentorWithTTA(nn.Module):
    """
    Wraps any model that maps a list of detectron2 input dicts to ``[{"sem_seg": (K, H, W)}]``
    (SemanticSegmentor, SeMask, MaskFormer). Build it as ``SemanticSegmentorWithTTA(cfg, model)``
    or from explicit arguments.
    """

    @configurable
    def __init__(
        self, model: nn.Module, *, tta_mapper: Callable[[Dict], List[Dict]], softmax: bool
    ):
        """
        Args:
            model (nn.Module): the segmentation model (a DDP wrapper is removed).
            tta_mapper (callable): maps an input dict to its augmented copies, each with a
                "transforms" TransformList, like ``DatasetMapperTTA``.
            softmax (bool): apply softmax over classes to each view's scores before averaging;
                True for models that return logits, False for ones that return probabilities.
        """
        super().__init__()
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.model = model
        self.tta_mapper = tta_mapper
        self.softmax = softmax

    @classmethod
    def from_config(cls, cfg, model):
        return {
            "model": model,
            "tta_mapper": TTA_MAPPERS[cfg.INPUT.TEST_RESIZE](cfg),
            "softmax": cfg.TEST.AUG.SOFTMAX,
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """
        Args:
            batched_inputs (list[dict]): model inputs; each has "image" (C, H, W) and optionally
                "height"/"width", the output size (default: the image size).

        Returns:
            list[dict]: per input, "sem_seg": (K, height, width) averaged class probabilities.
        """
        return [{"sem_seg": self._inference_one(x)} for x in batched_inputs]

    def _inference_one(self, inputs: Dict) -> torch.Tensor:
        inputs = copy.copy(inputs)
        height = inputs.setdefault("height", inputs["image"].shape[-2])
        width = inputs.setdefault("width", inputs["image"].shape[-1])
        total, count = None, 0
        for view in self.tta_mapper(inputs):
            flipped = any(isinstance(t, HFlipTransform) for t in view.pop("transforms").transforms)
            with torch.no_grad():
                scores = self.model([view])[0]["sem_seg"]
            scores = self._to_original_frame(scores, height, width, flipped)
            total = scores if total is None else total + scores
            count += 1
        return total / count

    def _to_original_frame(self, scores: torch.Tensor, height: int, width: int, flipped: bool):
        # SemanticSegmentor already resizes to (height, width); other models may not.
        if scores.shape[-2:] != (height, width):
            scores = F.interpolate(
                scores[None], size=(height, width), mode="bilinear", align_corners=False
            )[0]
        if self.softmax:
            scores = scores.softmax(dim=0)
        # Resizing commutes with a horizontal flip, so un-flipping at the output size is exact.
        return scores.flip(dims=[-1]) if flipped else scores
