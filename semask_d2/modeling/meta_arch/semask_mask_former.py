"""
SeMask-MaskFormer / SeMask-Mask2Former / SeMask-FaPN (registry name of the official code): SeMask
Swin backbone, mask-classification head, the head family's set criterion
(semask_d2/modeling/head_family.py) and the shared semantic prior loss (official detectron2
convention). Semantic, panoptic and instance inference as Mask2Former
(``mask2former/maskformer_model.py``); MaskFormer's semantic inference is the same.
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from detectron2.utils.memory import retry_if_cuda_oom

from ..head_family import head_family
from ..mask_former_inference import instance_inference, panoptic_inference, semantic_inference
from ..semantic_prior import build_prior_loss

__all__ = ["SeMaskMaskFormer"]


@META_ARCH_REGISTRY.register()
class SeMaskMaskFormer(nn.Module):
    """
    Training: the criterion's losses weighted by its `weight_dict` (`loss_ce`, `loss_mask`,
    `loss_dice` and their `_i` auxiliary copies) plus `loss_cate` from the prior maps against
    the `sem_seg` labels padded like the images. Inference: per image, `sem_seg`,
    `panoptic_seg` and/or `instances` at the requested height/width; the prior maps are unused.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        prior_loss: Optional[nn.Module],
        size_divisibility: int,
        pixel_mean: List[float],
        pixel_std: List[float],
        object_mask_threshold: float,
        overlap_threshold: float,
        thing_ids: List[int],
        semantic_on: bool = True,
        panoptic_on: bool = False,
        instance_on: bool = False,
        sem_seg_postprocess_before_inference: bool = False,
        test_topk_per_image: int = 100,
    ):
        """
        Args:
            backbone, sem_seg_head, criterion: the three parts (state-dict prefixes `backbone`,
                `sem_seg_head`, `criterion` as the official checkpoints).
            prior_loss (nn.Module or None): :class:`SemanticPriorLoss`; None without prior maps.
            size_divisibility (int): pad images to a multiple of this; <= 0 takes the
                backbone's.
            pixel_mean, pixel_std (list[float]): input normalisation (RGB, 0-255 scale).
            object_mask_threshold, overlap_threshold (float): panoptic inference thresholds.
            thing_ids (list[int]): contiguous ids of thing classes (panoptic and instance).
            semantic_on, panoptic_on, instance_on (bool): which outputs inference returns.
            sem_seg_postprocess_before_inference (bool): resize the mask logits to the output
                size before semantic inference (always done for panoptic and instance).
            test_topk_per_image (int): instances kept per image.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.prior_loss = prior_loss
        self.size_divisibility = (
            size_divisibility if size_divisibility > 0 else backbone.size_divisibility
        )
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.object_mask_threshold = object_mask_threshold
        self.overlap_threshold = overlap_threshold
        self.thing_ids = thing_ids
        self.semantic_on = semantic_on
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.sem_seg_postprocess_before_inference = (
            sem_seg_postprocess_before_inference or panoptic_on or instance_on
        )
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        mf = cfg.MODEL.MASK_FORMER
        thing_ids = []
        # As the official code: thing classes from the first training set, also at test time.
        if cfg.DATASETS.TRAIN:
            meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
            thing_ids = list(getattr(meta, "thing_dataset_id_to_contiguous_id", {}).values())
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, shapes),
            "criterion": head_family(cfg).criterion(cfg),
            "prior_loss": build_prior_loss(cfg, shapes),
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "object_mask_threshold": mf.TEST.OBJECT_MASK_THRESHOLD,
            "overlap_threshold": mf.TEST.OVERLAP_THRESHOLD,
            "thing_ids": thing_ids,
            "semantic_on": mf.TEST.SEMANTIC_ON,
            "panoptic_on": mf.TEST.PANOPTIC_ON,
            "instance_on": mf.TEST.INSTANCE_ON,
            "sem_seg_postprocess_before_inference": mf.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs (list[dict]): per image "image" (C, H, W) in 0-255; in training
                "instances" (gt_classes, gt_masks) and "sem_seg" (H, W); in inference optional
                "height", "width" of the output.
        Returns:
            dict[str, Tensor] of losses in training; in inference a list of dicts with
            "sem_seg" (K, height, width), "panoptic_seg" and/or "instances".
        """
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.size_divisibility)
        features = self.backbone(images.tensor)
        outputs = self.sem_seg_head(features)
        if self.training:
            return self._losses(outputs, features, batched_inputs, images)
        return self._inference(outputs, batched_inputs, images)

    def _losses(
        self, outputs, features, batched_inputs, images: ImageList
    ) -> Dict[str, torch.Tensor]:
        if "instances" not in batched_inputs[0]:
            raise ValueError(
                "SeMaskMaskFormer needs 'instances' in training: use a semantic mapper"
            )
        pad_h, pad_w = images.tensor.shape[-2:]
        targets = []
        for x in batched_inputs:
            masks = x["instances"].gt_masks
            masks = getattr(masks, "tensor", masks).to(self.device)
            padded = masks.new_zeros((masks.shape[0], pad_h, pad_w))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": x["instances"].gt_classes.to(self.device), "masks": padded})
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        losses = {k: v * weights[k] for k, v in losses.items() if k in weights}
        if self.prior_loss is not None:
            # Labels padded to the batch size (the official code does not re-pad them).
            seg_maps = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.size_divisibility,
                pad_value=self.prior_loss.ignore_value,
            ).tensor
            losses.update(self.prior_loss(features, seg_maps))
        return losses

    def _inference(self, outputs, batched_inputs, images: ImageList) -> List[Dict]:
        mask_pred = F.interpolate(
            outputs["pred_masks"],
            size=images.tensor.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        results = []
        for mask_cls_i, mask_pred_i, x, image_size in zip(
            outputs["pred_logits"], mask_pred, batched_inputs, images.image_sizes
        ):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            result = {}
            # Crop the padding first: semantic inference is per pixel, so cropping before it
            # gives the same scores without computing them on the padding.
            mask_pred_i = mask_pred_i[:, : image_size[0], : image_size[1]]
            if self.sem_seg_postprocess_before_inference:
                mask_pred_i = retry_if_cuda_oom(_resize)(mask_pred_i, height, width)
            if self.semantic_on:
                sem_seg = retry_if_cuda_oom(semantic_inference)(mask_cls_i, mask_pred_i)
                if not self.sem_seg_postprocess_before_inference:
                    sem_seg = retry_if_cuda_oom(_resize)(sem_seg, height, width)
                result["sem_seg"] = sem_seg
            if self.panoptic_on:
                result["panoptic_seg"] = retry_if_cuda_oom(panoptic_inference)(
                    mask_cls_i,
                    mask_pred_i,
                    object_mask_threshold=self.object_mask_threshold,
                    overlap_threshold=self.overlap_threshold,
                    thing_ids=self.thing_ids,
                )
            if self.instance_on:
                result["instances"] = retry_if_cuda_oom(instance_inference)(
                    mask_cls_i,
                    mask_pred_i,
                    topk=self.test_topk_per_image,
                    thing_ids=self.thing_ids if self.panoptic_on else None,
                )
            results.append(result)
        return results


def _resize(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """
    detectron2's `sem_seg_postprocess` for maps already cropped to the image size: it always
    resizes, but a bilinear resize to the same size is the identity, so that case is skipped.

    Args:
        maps (Tensor): (C, h, w).
        height, width (int): output size.
    Returns:
        Tensor: (C, height, width).
    """
    if tuple(maps.shape[-2:]) == (height, width):
        return maps
    return sem_seg_postprocess(maps, maps.shape[-2:], height, width)
