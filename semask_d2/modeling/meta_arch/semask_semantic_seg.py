"""
SeMask on detectron2's :class:`SemanticSegmentor`: the head's loss plus the semantic prior loss
``loss_cate`` on the backbone's ``resN_prior`` maps (SeMask, arXiv 2112.12782; official SeMask-FPN
``mmseg/models/decode_heads/branch_fpn_head.py``). With :class:`SeMaskFPNHead`
and ``MODEL.SEMASK.PRIOR_CONVENTION: mmseg`` this is the mmseg SeMask-FPN.
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.structures import ImageList

from ..semantic_prior import SemanticPriorLoss

__all__ = ["SeMaskSemanticSegmentor"]


@META_ARCH_REGISTRY.register()
class SeMaskSemanticSegmentor(SemanticSegmentor):
    """
    Training returns the head's losses (``loss_sem_seg`` for :class:`SeMaskFPNHead`) and
    ``loss_cate``, both computed against the label batch padded like the images (to the
    backbone's size divisibility, with the head's ``ignore_value``). Inference is
    :class:`SemanticSegmentor`'s: the prior maps are never decoded.

    Every backbone output must be consumed by the head or the prior loss, so that every
    parameter is in the loss graph and DDP runs without ``find_unused_parameters``.
    """

    @configurable
    def __init__(self, *, prior_loss: Optional[nn.Module], **kwargs):
        """
        Args:
            prior_loss (nn.Module or None): maps (prior dict, (B, H, W) labels) to
                {"loss_cate": Tensor} in training, e.g. :class:`SemanticPriorLoss`; None for a
                backbone without prior maps (``MODEL.SWIN.NUM_SEM_BLOCKS: 0``).
            kwargs: the arguments of :class:`SemanticSegmentor` (backbone, sem_seg_head,
                pixel_mean, pixel_std).
        """
        super().__init__(**kwargs)
        self.prior_loss = prior_loss
        consumed = set(self.sem_seg_head.in_features)
        if prior_loss is not None:
            consumed |= set(prior_loss.in_features)
        unused = sorted(set(self.backbone.output_shape()) - consumed)
        if unused:
            raise ValueError(
                f"Backbone outputs {unused} are not used by the head or the prior loss: their "
                "parameters would get no gradient (DDP fails). Make MODEL.SWIN.OUT_FEATURES "
                "match MODEL.SEM_SEG_HEAD.IN_FEATURES."
            )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        has_priors = any(name.endswith("_prior") for name in shapes)
        ret["prior_loss"] = SemanticPriorLoss(cfg, shapes) if has_priors else None
        return ret

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """
        Args:
            batched_inputs (list[dict]): as :meth:`SemanticSegmentor.forward`: "image" (C, H, W),
                "sem_seg" (H, W) labels in training, optional "height"/"width" in inference.
        Returns:
            dict[str, Tensor] in training: ``loss_sem_seg`` and, with prior maps, ``loss_cate``.
            list[dict] in inference: {"sem_seg": (K, height, width) logits} per image.
        """
        if not self.training:
            # The head reads only its in_features: the prior maps are never decoded.
            return super().forward(batched_inputs)
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError("SeMaskSemanticSegmentor needs 'sem_seg' labels in training")
        # Images and labels are padded as SemanticSegmentor.forward pads them.
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            self.sem_seg_head.ignore_value,
            self.backbone.padding_constraints,
        ).tensor
        features = self.backbone(images.tensor)
        _, losses = self.sem_seg_head(features, targets)
        if self.prior_loss is not None:
            losses.update(self.prior_loss(features, targets))
        return losses
