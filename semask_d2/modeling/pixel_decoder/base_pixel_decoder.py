"""
MaskFormer's FPN pixel decoder (Cheng et al., arXiv 2107.06278; official SeMask-MaskFormer
``mask_former/modeling/heads/pixel_decoder.py``, ``BasePixelDecoder``), registered under its
official name. Written for semask-d2; no code copied. Parameter names equal the official ones, so
``sem_seg_head.pixel_decoder.*`` weights of official checkpoints load as is.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from .build import PIXEL_DECODER_REGISTRY

__all__ = ["BasePixelDecoder", "TopDownLevels", "fpn_config"]

# The multi-scale maps handed on are the first (coarsest) three: strides 32, 16, 8 for res2..res5.
_NUM_MULTI_SCALE_FEATURES = 3


def fpn_config(cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
    """
    The arguments every FPN pixel decoder reads from MODEL.SEM_SEG_HEAD: `input_shape` (the
    IN_FEATURES among the backbone outputs), `conv_dim`, `mask_dim` and `norm`.
    """
    head = cfg.MODEL.SEM_SEG_HEAD
    return {
        # Other backbone outputs (e.g. SeMask's res*_prior maps) are not decoder inputs.
        "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
        "conv_dim": head.CONVS_DIM,
        "mask_dim": head.MASK_DIM,
        "norm": head.NORM,
    }


def _output_conv(in_channels: int, conv_dim: int, norm: str) -> Conv2d:
    """``layer_k``: Conv 3x3 (no bias with a norm) + norm + ReLU, c2 xavier fill."""
    conv = Conv2d(
        in_channels,
        conv_dim,
        kernel_size=3,
        padding=1,
        bias=norm == "",
        norm=get_norm(norm, conv_dim),
        activation=F.relu,
    )
    weight_init.c2_xavier_fill(conv)
    return conv


class TopDownLevels:
    """
    The level hooks of an FPN pixel decoder (:class:`BasePixelDecoder`,
    ``MSDeformAttnPixelDecoder``): each finer level k registers ``adapter_k`` and ``layer_k``, and
    ``layer_k`` reads the sum of the lateral map and the upsampled coarser output. FaPN's
    ``FeatureAlignedMerges`` overrides both.
    """

    def _add_fpn_level(self, idx: int, adapter: nn.Module, layer: nn.Module) -> None:
        """Register the finer level `idx` (state-dict order = registration order)."""
        self.add_module(f"adapter_{idx}", adapter)
        self.add_module(f"layer_{idx}", layer)

    def _merge_top_down(self, idx: int, lateral: torch.Tensor, top_down: torch.Tensor):
        """
        The input of ``layer_{idx}``.

        Args:
            lateral (Tensor): (N, C, H, W), ``adapter_{idx}`` of the backbone map.
            top_down (Tensor): (N, C, H, W), the coarser output upsampled to (H, W).
        """
        return lateral + top_down


@PIXEL_DECODER_REGISTRY.register()
class BasePixelDecoder(TopDownLevels, nn.Module):
    """
    A top-down FPN over the backbone levels, finest = level 1:

    * coarsest level L: ``layer_L`` = Conv 3x3 + norm + ReLU straight on the backbone map (no
      adapter);
    * every finer level k: ``adapter_k`` = Conv 1x1 + norm on the backbone map, plus the coarser
      output upsampled (nearest) to its size, then ``layer_k`` = Conv 3x3 + norm + ReLU;
    * ``mask_features``: Conv 3x3 (bias) on the finest output.

    The convolutions have no bias when a norm is used (GroupNorm(32) in the official configs).
    Subclasses change how a finer level merges the coarser output and what it registers through
    the :class:`TopDownLevels` hooks.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        conv_dim: int,
        mask_dim: int,
        norm: str,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): shapes of the backbone features the decoder
                reads; no other keys.
            conv_dim (int): channels of the FPN maps (multiple of 32 for GroupNorm).
            mask_dim (int): channels of the mask features.
            norm (str): detectron2 norm of the FPN convs (`get_norm`), e.g. "GN"; "" for none.
        """
        super().__init__()
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]
        for idx, (_, shape) in enumerate(by_stride, start=1):
            if idx == len(by_stride):
                # The coarsest level has no lateral map to merge with: no adapter.
                self.add_module(f"layer_{idx}", _output_conv(shape.channels, conv_dim, norm))
                continue
            adapter = Conv2d(
                shape.channels,
                conv_dim,
                kernel_size=1,
                bias=norm == "",
                norm=get_norm(norm, conv_dim),
            )
            weight_init.c2_xavier_fill(adapter)
            self._add_fpn_level(idx, adapter, _output_conv(conv_dim, conv_dim, norm))
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        # TRANSFORMER_ENC_LAYERS is not read, as in the official code: this decoder has none.
        return fpn_config(cfg, input_shape)

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features (dict[str, Tensor]): backbone maps (N, C_f, H_f, W_f) for every name in
                `in_features`; other keys are ignored.
        Returns:
            tuple:
            * mask_features (Tensor): (N, mask_dim, H_1, W_1) at the finest input stride.
            * None: there is no transformer encoder.
            * list[Tensor]: the first three FPN outputs, coarse to fine (strides 32, 16, 8 with
              res2..res5), each (N, conv_dim, h_l, w_l).
        """
        num_levels = len(self.in_features)
        y = getattr(self, f"layer_{num_levels}")(features[self.in_features[-1]])
        outputs = [y]
        for idx in range(num_levels - 1, 0, -1):
            lateral = getattr(self, f"adapter_{idx}")(features[self.in_features[idx - 1]])
            top_down = F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = getattr(self, f"layer_{idx}")(self._merge_top_down(idx, lateral, top_down))
            outputs.append(y)
        return self.mask_features(y), None, outputs[:_NUM_MULTI_SCALE_FEATURES]

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
