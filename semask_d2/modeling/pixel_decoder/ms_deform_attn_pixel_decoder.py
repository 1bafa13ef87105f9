"""
Mask2Former's multi-scale deformable-attention pixel decoder (facebookresearch/Mask2Former
``mask2former/modeling/pixel_decoder/msdeformattn.py``), registered
under its official name. Written for semask-d2; no code copied. Parameter names equal the
official ones, so ``sem_seg_head.pixel_decoder.*`` weights of official checkpoints load as is.
"""

import logging
import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import weight_init
from torch import nn

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.logger import log_first_n

from ..resize import resize_bilinear_channels_last
from .base_pixel_decoder import TopDownLevels, fpn_config
from .build import PIXEL_DECODER_REGISTRY
from .deformable_encoder import MultiScaleDeformableTransformer
from .position_encoding import PositionEmbeddingSine

__all__ = ["MSDeformAttnPixelDecoder"]

# The transformer decoder reads three scales round-robin (1/32, 1/16, 1/8).
_NUM_MULTI_SCALE_FEATURES = 3


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(TopDownLevels, nn.Module):
    """
    Refines the coarse backbone levels with a deformable transformer encoder, then adds FPN
    levels down to `common_stride` and predicts per-pixel mask embeddings.

    1. ``input_proj.{l}``: Conv 1x1 (bias) + GroupNorm(32) per encoder level, coarse to fine.
    2. :class:`MultiScaleDeformableTransformer` with sine positions + ``level_embed``.
    3. Per finer level i (``adapter_{i}``/``layer_{i}``, 1 = finest): Conv 1x1 + norm on the
       backbone map, plus the bilinearly upsampled coarser output, then Conv 3x3 + norm + ReLU.
    4. ``mask_features``: Conv 1x1 (bias) on the finest map.

    Runs in float32 with autocast off: deformable sampling is not reliable in half precision
    (the reference op only supports float/double).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str,
        common_stride: int,
        transformer_enc_layers: int,
        transformer_nheads: int,
        transformer_n_points: int,
        transformer_dim_feedforward: int,
        transformer_dropout: float,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): shapes of every backbone feature the decoder
                reads (encoder levels and finer FPN levels); no other keys.
            transformer_in_features (list[str]): features refined by the encoder.
            conv_dim (int): channels of all internal maps (multiple of 32 for GroupNorm).
            mask_dim (int): channels of the mask features.
            norm (str): detectron2 norm of the FPN convs (`get_norm`), e.g. "GN".
            common_stride (int): stride of the mask features; one FPN level is added per
                factor 2 between it and the finest encoder stride.
            transformer_enc_layers (int): encoder depth.
            transformer_nheads (int): deformable attention heads.
            transformer_n_points (int): sampling points per head and level.
            transformer_dim_feedforward (int): FFN width of the encoder layers.
            transformer_dropout (float): dropout of the encoder layers.
        """
        super().__init__()
        missing = set(transformer_in_features) - set(input_shape)
        if missing:
            raise ValueError(f"Encoder features {sorted(missing)} are not decoder inputs")
        by_stride = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in by_stride]
        # Encoder levels from coarse to fine: the level order of input_proj and level_embed.
        enc = [(k, v) for k, v in by_stride if k in transformer_in_features][::-1]
        self.transformer_in_features = [k for k, _ in enc]

        self.input_proj = nn.ModuleList()
        for _, shape in enc:
            proj = nn.Conv2d(shape.channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(proj.weight, gain=1)
            nn.init.zeros_(proj.bias)
            self.input_proj.append(nn.Sequential(proj, nn.GroupNorm(32, conv_dim)))
        self.transformer = MultiScaleDeformableTransformer(
            d_model=conv_dim,
            n_heads=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            n_levels=len(enc),
            n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        min_stride = enc[-1][1].stride
        num_fpn_levels = int(math.log2(min_stride) - math.log2(common_stride))
        # Finest first: adapter_1/layer_1 serve the finest level, as in official checkpoints.
        self.fpn_features = self.in_features[:num_fpn_levels]
        use_bias = norm == ""
        for idx, name in enumerate(self.fpn_features, start=1):
            adapter = Conv2d(
                input_shape[name].channels,
                conv_dim,
                kernel_size=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
            )
            layer = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(adapter)
            weight_init.c2_xavier_fill(layer)
            self._add_fpn_level(idx, adapter, layer)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            **fpn_config(cfg, input_shape),
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            **_official_encoder_attention(cfg),
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features (dict[str, Tensor]): backbone maps (N, C_f, H_f, W_f) for every name in
                `in_features`; other keys are ignored. Any float dtype.

        Returns:
            tuple:
            * mask_features (Tensor): (N, mask_dim, H, W) at `common_stride`, float32.
            * Tensor: (N, conv_dim, h, w), the coarsest encoder output.
            * list[Tensor]: the first three outputs, coarse to fine (1/32, 1/16, 1/8 with the
              default features), each (N, conv_dim, h_l, w_l).
        """
        device_type = features[self.in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for name, proj in zip(self.transformer_in_features, self.input_proj):
                x = features[name].float()
                srcs.append(proj(x))
                pos.append(self.pe_layer(x))
            out = self.transformer(srcs, pos)
            for idx in range(len(self.fpn_features), 0, -1):
                # Channels-last, as the encoder outputs: the convolutions of the fine levels
                # run 1.2x (3x3) to 3x (1x1) faster on CPU than on channels-first maps.
                x = features[self.fpn_features[idx - 1]].float()
                x = x.contiguous(memory_format=torch.channels_last)
                lateral = getattr(self, f"adapter_{idx}")(x)
                # Channels-last like `lateral`: mixed layouts add slowly.
                top_down = resize_bilinear_channels_last(out[-1], lateral.shape[-2:])
                y = self._merge_top_down(idx, lateral, top_down)
                out.append(getattr(self, f"layer_{idx}")(y))
            return self.mask_features(out[-1]), out[0], out[:_NUM_MULTI_SCALE_FEATURES]

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)


# Official values of the deformable encoder that the official code does not take from the
# SEM_SEG_HEAD keys of the same meaning (facebookresearch/Mask2Former
# `mask2former/modeling/pixel_decoder/msdeformattn.py`, copied by SeMask).
_OFFICIAL_N_POINTS = 4
_OFFICIAL_DIM_FEEDFORWARD = 1024


def _official_encoder_attention(cfg) -> Dict[str, int]:
    """
    Heads, points and FFN width of the deformable encoder, read as the official code reads them:
    heads from MODEL.MASK_FORMER.NHEADS, 4 points, FFN 1024 unless our own
    DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD key is set. The official keys
    DEFORMABLE_TRANSFORMER_ENCODER_{N_HEADS,N_POINTS} are never read there; a value that differs
    from the one used draws one warning, so that every official config dump builds the official
    model (and loads its checkpoint) whatever those keys say.
    """
    head = cfg.MODEL.SEM_SEG_HEAD
    ffn = head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD
    used = {
        "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
        "transformer_n_points": _OFFICIAL_N_POINTS,
        "transformer_dim_feedforward": _OFFICIAL_DIM_FEEDFORWARD if ffn is None else ffn,
    }
    ignored = {
        "DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            used["transformer_nheads"],
            "MODEL.MASK_FORMER.NHEADS",
        ),
        "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": (
            head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            _OFFICIAL_N_POINTS,
            "the official value",
        ),
    }
    for key, (value, actual, source) in ignored.items():
        if value != actual:
            log_first_n(
                logging.WARNING,
                f"MODEL.SEM_SEG_HEAD.{key} = {value} is not read (as in the official code): "
                f"MSDeformAttnPixelDecoder uses {actual}, {source}.",
                n=1,
                key="message",
            )
    return used
