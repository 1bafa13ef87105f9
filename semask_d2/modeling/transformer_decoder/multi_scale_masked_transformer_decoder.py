"""
The multi-scale masked-attention transformer decoder of Mask2Former (Cheng et al., arXiv
2112.01527), the `predictor` of the SeMask-Mask2Former head.

Written for semask-d2 from facebookresearch/Mask2Former
``mask2former/modeling/transformer_decoder/mask2former_transformer_decoder.py``; parameter names and
shapes follow the official checkpoints, so official weights load unchanged. Queries are batch-first
(B, Q, C) throughout.
"""

import logging
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from ..linear import linear, uses_onednn
from ..pixel_decoder.position_encoding import PositionEmbeddingSine
from .build import TRANSFORMER_DECODER_REGISTRY
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer, input_projection

__all__ = ["MultiScaleMaskedTransformerDecoder"]

logger = logging.getLogger(__name__)


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """
    Learnable queries refined by `dec_layers` layers (masked cross-attention -> self-attention
    -> FFN), visiting the feature levels round robin (coarse to fine). Shared heads predict class
    and mask logits before the first layer and after every layer; each prediction's masks,
    thresholded at sigmoid 0.5 on the next layer's level, restrict that layer's cross-attention.
    """

    # Version 2 renamed `static_query` to `query_feat`.
    _version = 2
    # The official decoder always reads three levels (1/32, 1/16, 1/8).
    num_feature_levels = 3

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        mask_classification: bool = True,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels (int): channels of the multi-scale input features.
            mask_classification (bool): predict class logits; False gives masks only.
            num_classes (int): K, number of classes (class logits have K + 1 entries, the last
                one "no object").
            hidden_dim (int): channels of the queries.
            num_queries (int): Q, number of queries.
            nheads (int): attention heads.
            dim_feedforward (int): hidden channels of the FFN layers.
            dec_layers (int): number of decoder layers (one fewer than the predictions).
            pre_norm (bool): pre-norm instead of post-norm layers.
            mask_dim (int): channels of the per-pixel mask embeddings.
            enforce_input_project (bool): project the inputs with a 1x1 conv even when
                `in_channels == hidden_dim`.
        """
        super().__init__()
        self.mask_classification = mask_classification
        self.num_heads = nheads
        self.num_layers = dec_layers
        # Only the input's shape matters to the sine encoding; half the channels for y, half x.
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList(
            input_projection(in_channels, hidden_dim, enforce_input_project)
            for _ in range(self.num_feature_levels)
        )

        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        # Official off-by-one: DEC_LAYERS counts the predictions, one more than the layers.
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(
        self, x: List[torch.Tensor], mask_features: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (list[Tensor]): `num_feature_levels` maps (B, in_channels, H_l, W_l), coarse to
                fine (1/32, 1/16, 1/8).
            mask_features (Tensor): (B, mask_dim, H/4, W/4) per-pixel mask embeddings.
        Returns:
            dict:
                * "pred_logits": (B, Q, K + 1) class logits of the last prediction (only with
                  mask classification);
                * "pred_masks": (B, Q, H/4, W/4) mask logits of the last prediction;
                * "aux_outputs" (training only): list of `dec_layers` dicts with the same keys,
                  one per earlier prediction, first to last.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"Expected {self.num_feature_levels} feature maps, got {len(x)}")
        values, keys, sizes = self._memory(x)
        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(batch, -1, -1)
        # In inference the earlier predictions only serve as attention masks, so their masks
        # are predicted directly at the size of the level they mask: bilinear resizing is
        # linear, so resizing the mask features first gives the same logits up to rounding,
        # without a full-resolution einsum and resize per layer.
        level_features = None if self.training else self._resize_per_level(mask_features, sizes)

        predictions, attn_mask = [], None
        for i in range(self.num_layers + 1):
            if i > 0:
                level = (i - 1) % self.num_feature_levels
                output = self.transformer_cross_attention_layers[i - 1](
                    output, keys[level], values[level], query_pos, attn_mask
                )
                output = self.transformer_self_attention_layers[i - 1](output, query_pos)
                output = self.transformer_ffn_layers[i - 1](output)
            # Prediction i masks layer i, which reads this level; the last one masks nothing.
            level = i % self.num_feature_levels
            is_last = i == self.num_layers
            if self.training or is_last:
                predictions.append(self._predict(output, mask_features))
                masks = predictions[-1]["pred_masks"]
            else:
                masks = self._mask_logits(self.decoder_norm(output), level_features[level])
            attn_mask = None if is_last else self._attention_mask(masks, sizes[level])

        out = dict(predictions[-1])
        if self.training:
            out["aux_outputs"] = predictions[:-1]
        return out

    @staticmethod
    def _resize_per_level(
        mask_features: torch.Tensor, sizes: List[Tuple[int, int]]
    ) -> List[torch.Tensor]:
        """Returns `mask_features` bilinearly resized to each (h, w) of `sizes`."""
        # The CPU kernel resizes many-channel maps channels-last, converting each input: convert
        # once (one copy instead of one per level; a 256-channel resize then takes ~1 ms).
        features = mask_features.contiguous(memory_format=torch.channels_last)
        return [
            F.interpolate(features, size=size, mode="bilinear", align_corners=False)
            for size in sizes
        ]

    def _memory(
        self, x: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[Tuple[int, int]]]:
        """
        Returns:
            values (list[Tensor]): (B, H_l * W_l, C) projected features plus their level embed.
            keys (list[Tensor]): values plus the sine positional encoding.
            sizes (list[tuple[int, int]]): (H_l, W_l) per level.
        """
        values, keys, sizes = [], [], []
        for level, feature in enumerate(x):
            # Sizes as the shape holds them: ints, or symbolic sizes when traced for export.
            sizes.append((feature.shape[-2], feature.shape[-1]))
            pos = self.pe_layer(feature).flatten(2).transpose(1, 2)
            value = self.input_proj[level](feature).flatten(2).transpose(1, 2)
            value = value + self.level_embed.weight[level]
            values.append(value)
            keys.append(value + pos)
        return values, keys, sizes

    def _mask_logits(self, decoded: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) normed queries, (B, mask_dim, H, W) features -> (B, Q, H, W) mask logits."""
        embed = self.mask_embed(decoded)
        channels_last = mask_features.is_contiguous(memory_format=torch.channels_last)
        if channels_last and uses_onednn(embed, mask_features, None):
            # The pixels (a view of channels-last features) as the weight of a linear layer:
            # embed @ pixels^T on oneDNN, -5 ms against einsum's batched product at 512x512.
            b, c, h, w = mask_features.shape
            pixels = mask_features.permute(0, 2, 3, 1).reshape(b, h * w, c)
            return torch.stack([linear(e, p) for e, p in zip(embed, pixels)]).view(b, -1, h, w)
        return torch.einsum("bqc,bchw->bqhw", embed, mask_features)

    def _predict(
        self, output: torch.Tensor, mask_features: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            output (Tensor): (B, Q, C) queries.
            mask_features (Tensor): (B, mask_dim, H, W).
        Returns:
            dict: "pred_masks" (B, Q, H, W) and, with mask classification, "pred_logits"
            (B, Q, K + 1).
        """
        decoded = self.decoder_norm(output)
        prediction = {"pred_masks": self._mask_logits(decoded, mask_features)}
        if self.mask_classification:
            prediction["pred_logits"] = self.class_embed(decoded)
        return prediction

    @torch.no_grad()
    def _attention_mask(self, masks: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """
        Args:
            masks (Tensor): (B, Q, H, W) mask logits.
            size (tuple[int, int]): (h, w) of the memory level.
        Returns:
            Tensor: (B * nheads, Q, h * w) bool, True where sigmoid(mask) < 0.5, batch-major
            over heads as nn.MultiheadAttention expects. Rows that would block every key are
            cleared instead, so that the softmax stays finite (official behaviour).
        """
        if tuple(masks.shape[-2:]) != tuple(size):
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        blocked = masks.flatten(2).sigmoid() < 0.5
        blocked &= ~blocked.all(dim=-1, keepdim=True)
        # Heads share the mask: a broadcast view, which costs no copy for one image.
        batch, queries, keys = blocked.shape
        blocked = blocked[:, None].expand(batch, self.num_heads, queries, keys)
        return blocked.reshape(batch * self.num_heads, queries, keys)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            old, new = prefix + "static_query.weight", prefix + "query_feat.weight"
            if old in state_dict:
                state_dict[new] = state_dict.pop(old)
                logger.warning(f"Renamed {old} to {new} (checkpoint of an older decoder version)")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
