"""
The mask-classification head of SeMask-MaskFormer, SeMask-Mask2Former and SeMask-FaPN (registry
name of the official code): a pixel decoder and a transformer decoder (the `predictor`), chosen
by the head family (semask_d2/modeling/head_family.py). Unlike the official head it takes the
backbone dict as it is (no prior maps smuggled through the `mask` argument) and decodes no prior
at inference: the prior loss lives in the meta-architecture, shared with the FPN path.
"""

from typing import Dict

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..head_family import MULTI_SCALE_PIXEL_DECODER, head_family
from ..pixel_decoder import build_pixel_decoder
from ..transformer_decoder import TRANSFORMER_DECODER_REGISTRY

__all__ = ["BranchMaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class BranchMaskFormerHead(nn.Module):
    """
    Pixel decoder (per-pixel mask embeddings and multi-scale maps) followed by the transformer
    decoder, which reads either the pixel decoder's multi-scale maps (Mask2Former, FaPN) or one
    backbone feature (MaskFormer: res5). State-dict keys: `pixel_decoder.*`, `predictor.*`, as
    the official checkpoints.
    """

    @configurable
    def __init__(
        self,
        *,
        pixel_decoder: nn.Module,
        predictor: nn.Module,
        transformer_in_feature: str,
        num_classes: int,
        ignore_value: int,
    ):
        """
        Args:
            pixel_decoder (nn.Module): returns (mask_features, coarsest map, multi-scale maps).
            predictor (nn.Module): the transformer decoder, called on (its input,
                mask_features).
            transformer_in_feature (str): the predictor's input: "multi_scale_pixel_decoder"
                (the pixel decoder's multi-scale maps) or a backbone feature name (e.g. "res5").
            num_classes (int): K.
            ignore_value (int): label value ignored by the losses.
        """
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        family = head_family(cfg)
        head = cfg.MODEL.SEM_SEG_HEAD
        feature = family.transformer_in_feature
        if feature == MULTI_SCALE_PIXEL_DECODER:
            in_channels = head.CONVS_DIM
        elif feature in input_shape:
            in_channels = input_shape[feature].channels
        else:
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE {feature!r} is not a backbone output "
                f"({sorted(input_shape)}): add it to the backbone's OUT_FEATURES"
            )
        predictor = TRANSFORMER_DECODER_REGISTRY.get(family.predictor)
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": predictor(cfg, in_channels, mask_classification=True),
            "transformer_in_feature": feature,
            "num_classes": head.NUM_CLASSES,
            "ignore_value": head.IGNORE_VALUE,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        """
        Args:
            features (dict[str, Tensor]): backbone outputs; keys other than the pixel decoder's
                input features (e.g. prior maps) are ignored.
        Returns:
            dict: "pred_logits" (B, Q, K + 1), "pred_masks" (B, Q, H/4, W/4), "aux_outputs".
        """
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        if self.transformer_in_feature == MULTI_SCALE_PIXEL_DECODER:
            return self.predictor(multi_scale_features, mask_features)
        return self.predictor(features[self.transformer_in_feature], mask_features)
