"""
The Mask2Former head of SeMask-Mask2Former (registry name of the official code): a pixel
decoder and a masked transformer decoder. Unlike the official head it takes the backbone dict
as it is (no prior maps smuggled through the `mask` argument) and decodes no prior at inference:
the prior loss lives in the meta-architecture, shared with the FPN path.
"""

from typing import Dict

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..pixel_decoder import build_pixel_decoder
from ..transformer_decoder import build_transformer_decoder

__all__ = ["BranchMaskFormerHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class BranchMaskFormerHead(nn.Module):
    """
    Pixel decoder (per-pixel mask embeddings and multi-scale maps) followed by the transformer
    decoder reading the pixel decoder's multi-scale maps. State-dict keys: `pixel_decoder.*`,
    `predictor.*`, as the official checkpoints.
    """

    @configurable
    def __init__(
        self, *, pixel_decoder: nn.Module, predictor: nn.Module, num_classes: int, ignore_value: int
    ):
        """
        Args:
            pixel_decoder (nn.Module): returns (mask_features, coarsest map, multi-scale maps).
            predictor (nn.Module): the transformer decoder, called on (multi-scale maps,
                mask_features).
            num_classes (int): K.
            ignore_value (int): label value ignored by the losses.
        """
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.num_classes = num_classes
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        feature = cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE
        if feature != "multi_scale_pixel_decoder":
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE {feature!r} is not supported: the "
                "multi-scale masked decoder reads 'multi_scale_pixel_decoder'"
            )
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
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
        return self.predictor(multi_scale_features, mask_features)
