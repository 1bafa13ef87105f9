"""
FaPN's feature alignment (Huang et al., "FaPN: Feature-aligned Pyramid Network for Dense Image
Prediction", ICCV 2021) as used by the official SeMask-FaPN and SeMask-MSFaPN pixel decoders
(official SeMask ``SeMask-FAPN/SeMask-Mask2Former/mask2former/modeling/pixel_decoder/``).
Written for semask-d2; no code copied. Parameter names equal the official ones.

The official code takes its modulated deformable convolution from DCNv2, a CUDA extension that no
longer builds. DCNv2 lays out offsets and masks exactly as ``torchvision.ops.deform_conv2d``
does (per deformable group g and kernel point k = 3 i + j: offset channels 2 (9 g + k) = dy and
2 (9 g + k) + 1 = dx, mask channel 9 g + k), so the torchvision op is used as it is, with no
reordering.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn
from torchvision.ops import deform_conv2d

from detectron2.layers import Conv2d

__all__ = ["FeatureAlign", "FeatureAlignedMerges", "ModulatedDeformConv", "modulated_deform_conv2d"]

# Deformable groups of every official FeatureAlign (hard-coded in the official code).
_OFFICIAL_DEFORMABLE_GROUPS = 8


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    padding: int,
) -> torch.Tensor:
    """
    Modulated deformable convolution (DCNv2), stride 1, dilation 1, in at least float32: half
    precision inputs are cast to float32 and autocast is off inside, as the official DCNv2 op
    (float and double only) requires; float64 stays float64.

    Args:
        x (Tensor): (N, C_in, H, W) input.
        offset (Tensor): (N, 2 * G * kh * kw, H', W'): for group g and kernel point k (row-major
            over the kernel), channel 2 (g kh kw + k) is dy and the next one dx, in pixels.
        mask (Tensor): (N, G * kh * kw, H', W') modulation of each sampled value, channel
            g kh kw + k.
        weight (Tensor): (C_out, C_in, kh, kw).
        bias (Tensor or None): (C_out,).
        padding (int): zero padding of both sides; samples outside the image read 0.

    Returns:
        Tensor: (N, C_out, H', W'), float32 (float64 for float64 inputs).
    """
    dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return deform_conv2d(
            x.to(dtype),
            offset.to(dtype),
            weight.to(dtype),
            None if bias is None else bias.to(dtype),
            padding=(padding, padding),
            mask=mask.to(dtype),
        )


class ModulatedDeformConv(nn.Module):
    """
    DCNv2 convolution whose offsets and mask come from a separate guide map (official DCNv2
    ``DCN`` with ``extra_offset_mask=True``): ``conv_offset_mask`` predicts 3 G kh kw channels
    from the guide, the first 2 G kh kw are the offsets, the sigmoid of the last G kh kw the mask.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        deformable_groups: int = _OFFICIAL_DEFORMABLE_GROUPS,
    ):
        """
        Args:
            in_channels (int): channels of the input and of the guide map.
            out_channels (int): output channels.
            kernel_size (int): odd kernel side; padding keeps the spatial size.
            deformable_groups (int): groups of input channels sharing offsets and mask; must
                divide `in_channels`.
        """
        super().__init__()
        if in_channels % deformable_groups:
            raise ValueError(
                f"{in_channels} input channels are not divisible by {deformable_groups} "
                "deformable groups; use a multiple of it (FaPN pixel decoders: "
                "MODEL.SEM_SEG_HEAD.CONVS_DIM)"
            )
        self.padding = kernel_size // 2
        self.num_offsets = 2 * deformable_groups * kernel_size**2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.conv_offset_mask = nn.Conv2d(
            in_channels,
            3 * deformable_groups * kernel_size**2,
            kernel_size=kernel_size,
            padding=self.padding,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCNv2's init: weight U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias 0; zero offsets and
        a 0.5 mask at start (``conv_offset_mask`` all zero)."""
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (N, C_in, H, W) map to sample.
            guide (Tensor): (N, C_in, H, W) map the offsets and mask are predicted from.

        Returns:
            Tensor: (N, C_out, H, W), float32 (float64 for float64 inputs).
        """
        offset_mask = self.conv_offset_mask(guide)
        # Official quirk: DCNv2 chunks into (o1, o2, mask) and concatenates o1, o2, commenting
        # them as "x, y"; they are simply the first two thirds, interleaved (dy, dx) per point.
        offset = offset_mask[:, : self.num_offsets]
        mask = torch.sigmoid(offset_mask[:, self.num_offsets :])
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.padding)


class FeatureAlign(nn.Module):
    """
    Aligns an upsampled top-down map to its lateral map with a deformable convolution whose
    offsets are learned from both (official ``FeatureAlign_V2``; its ``FeatureSelectionModule``
    is never used by SeMask and has no parameters here):

        offset = offset(cat([feat_l, 2 * feat_s]))        # 1x1 conv (no bias) + norm
        out    = relu(dcpack_L2(feat_s, offset)) + feat_l
    """

    def __init__(self, channels: int, norm: Optional[nn.Module]):
        """
        Args:
            channels (int): channels C of both maps; a multiple of 8 (deformable groups).
            norm (nn.Module or None): the norm of the ``offset`` conv. The official decoders pass
                the norm module of the following ``layer_k`` conv: one module shared by both,
                so the two state-dict keys hold the same tensors.
        """
        super().__init__()
        self.offset = Conv2d(2 * channels, channels, kernel_size=1, bias=False, norm=norm)
        weight_init.c2_xavier_fill(self.offset)
        self.dcpack_L2 = ModulatedDeformConv(channels, channels, kernel_size=3)

    def forward(self, feat_l: torch.Tensor, feat_s: torch.Tensor) -> torch.Tensor:
        """
        Args:
            feat_l (Tensor): (N, C, H, W) lateral map.
            feat_s (Tensor): (N, C, H, W) top-down map, already at the lateral size (the official
                bilinear resize for other sizes never runs in SeMask's decoders).

        Returns:
            Tensor: (N, C, H, W), the aligned top-down map plus the lateral map.
        """
        if feat_l.shape[-2:] != feat_s.shape[-2:]:
            raise ValueError(
                f"FeatureAlign needs maps of one size; got {tuple(feat_l.shape[-2:])} and "
                f"{tuple(feat_s.shape[-2:])}: upsample the top-down map first"
            )
        # Official quirk: the top-down map enters the offset conv doubled.
        offset = self.offset(torch.cat([feat_l, 2 * feat_s], dim=1))
        return F.relu(self.dcpack_L2(feat_s, offset)) + feat_l


class FeatureAlignedMerges:
    """
    Mixin that overrides the level hooks of an FPN pixel decoder (``TopDownLevels``): each finer
    level k merges through FaPN's alignment,

        lat = adapter_k(x_k)
        y = layer_k(align_k(lat, lat + upsampled coarser output))

    with ``align_k.*`` registered between ``adapter_k.*`` and ``layer_k.*``. Official quirk kept:
    ``align_k.offset.norm`` and ``layer_k.norm`` are one module (two state-dict keys, parameters
    counted once).
    """

    def _add_fpn_level(self, idx: int, adapter: nn.Module, layer: nn.Module) -> None:
        self.add_module(f"adapter_{idx}", adapter)
        self.add_module(f"align_{idx}", FeatureAlign(layer.out_channels, norm=layer.norm))
        self.add_module(f"layer_{idx}", layer)

    def _merge_top_down(self, idx: int, lateral: torch.Tensor, top_down: torch.Tensor):
        return getattr(self, f"align_{idx}")(lateral, lateral + top_down)
