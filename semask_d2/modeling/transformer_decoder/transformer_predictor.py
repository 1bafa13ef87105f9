"""
MaskFormer's DETR-style transformer predictor (Cheng et al., arXiv 2107.06278; DETR, Carion et al.,
arXiv 2005.12872), the `predictor` of the SeMask-MaskFormer head: learnable query positions
decoded against one projected backbone level (res5) by post-norm DETR decoder layers, and class
and mask heads on every layer's output.

Written for semask-d2 from the papers and the official SeMask-MaskFormer
``mask_former/modeling/transformer/{transformer_predictor,transformer}.py``; no code copied.
Parameter names and shapes follow the official checkpoints (``transformer.decoder.layers.{i}.*``,
``transformer.decoder.norm``, ``query_embed``, ``input_proj``, ``class_embed``, ``mask_embed``),
so official weights load unchanged. Tensors are batch-first (B, L, C) throughout.
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable

from ..pixel_decoder.position_encoding import PositionEmbeddingSine
from .build import TRANSFORMER_DECODER_REGISTRY
from .layers import MLP, input_projection, xavier_init

__all__ = ["DETRDecoder", "DETRDecoderLayer", "DETRTransformer", "TransformerPredictor"]


class DETRDecoderLayer(nn.Module):
    """
    Post-norm DETR decoder layer: self-attention among the queries, cross-attention to the
    memory, FFN, each followed by dropout, a residual and a LayerNorm (`norm1`..`norm3`).
    Queries and keys carry their positional embeddings; values do not.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        """
        Args:
            d_model (int): channels of the queries and of the memory.
            nhead (int): attention heads.
            dim_feedforward (int): hidden channels of the FFN.
            dropout (float): dropout on the attention weights, after each sub-layer and inside
                the FFN (DETR's single rate).
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(
            d_model, nhead, dropout=dropout, batch_first=True
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            tgt (Tensor): (B, Q, C) queries.
            memory (Tensor): (B, S, C) memory.
            pos (Tensor): (B, S, C) positional embedding of the memory.
            query_pos (Tensor): (B, Q, C) positional embedding of the queries.
        Returns:
            Tensor: (B, Q, C) updated queries.
        """
        qk = tgt + query_pos
        out = self.self_attn(qk, qk, tgt, need_weights=False)[0]
        tgt = self.norm1(tgt + self.dropout1(out))
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(out))
        out = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(out))


class DETRDecoder(nn.Module):
    """
    A stack of :class:`DETRDecoderLayer` and the final LayerNorm `norm`, which is applied to
    the output of every layer (DETR's intermediate outputs) but never fed back: each layer
    reads the previous layer's un-normed output.
    """

    def __init__(self, layers: List[DETRDecoderLayer], d_model: int):
        """
        Args:
            layers (list[DETRDecoderLayer]): the layers, first to last.
            d_model (int): channels, for the final norm.
        """
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> List[torch.Tensor]:
        """
        Args: as :meth:`DETRDecoderLayer.forward`.
        Returns:
            list[Tensor]: per layer, first to last, (B, Q, C) its output after `norm`.
        """
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos)
            outputs.append(self.norm(tgt))
        return outputs


class DETRTransformer(nn.Module):
    """
    DETR's transformer without encoder layers (MaskFormer's ``ENC_LAYERS: 0``): the memory is
    the projected feature map itself, and the decoder starts from all-zero queries.
    """

    def __init__(
        self, d_model: int, nhead: int, num_layers: int, dim_feedforward: int, dropout: float
    ):
        """
        Args:
            d_model (int): channels.
            nhead (int): attention heads.
            num_layers (int): decoder layers.
            dim_feedforward (int): FFN hidden channels.
            dropout (float): DETR's dropout rate.
        """
        super().__init__()
        self.decoder = DETRDecoder(
            [DETRDecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)],
            d_model,
        )
        # DETR's init: xavier_uniform on every matrix of the transformer.
        xavier_init(self)

    def forward(
        self, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor
    ) -> List[torch.Tensor]:
        """
        Args:
            memory (Tensor): (B, S, C) flattened feature map.
            pos (Tensor): (B, S, C) its positional embedding.
            query_pos (Tensor): (B, Q, C) query positional embedding.
        Returns:
            list[Tensor]: per decoder layer, (B, Q, C) normed queries.
        """
        return self.decoder(torch.zeros_like(query_pos), memory, pos, query_pos)


@TRANSFORMER_DECODER_REGISTRY.register()
class TransformerPredictor(nn.Module):
    """
    Projects one feature map to `hidden_dim` (1x1 conv, unless it already has that many
    channels), adds sine positions computed over the whole (padded) map with no padding mask,
    and decodes `num_queries` learned query positions with :class:`DETRTransformer`. Each
    layer's normed queries give class logits (`class_embed`) and mask logits, the dot product
    of `mask_embed` (3-layer MLP) with the per-pixel mask features.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dropout: float,
        dim_feedforward: int,
        dec_layers: int,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels (int): channels of the input feature map.
            mask_classification (bool): predict class logits; False gives masks only.
            num_classes (int): K (class logits have K + 1 entries, the last one "no object").
            hidden_dim (int): channels of the queries.
            num_queries (int): Q, number of queries.
            nheads (int): attention heads.
            dropout (float): dropout of the decoder layers.
            dim_feedforward (int): FFN hidden channels.
            dec_layers (int): decoder layers (= predictions).
            mask_dim (int): channels of the per-pixel mask embeddings.
            enforce_input_project (bool): project with a 1x1 conv even when
                `in_channels == hidden_dim`.
        """
        super().__init__()
        self.mask_classification = mask_classification
        # Only the input's shape matters to the sine encoding; half the channels for y, half x.
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer = DETRTransformer(hidden_dim, nheads, dec_layers, dim_feedforward, dropout)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = input_projection(in_channels, hidden_dim, enforce_input_project)
        if mask_classification:
            self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        if mf.ENC_LAYERS != 0:
            raise ValueError(
                f"MODEL.MASK_FORMER.ENC_LAYERS {mf.ENC_LAYERS} is not supported by "
                "TransformerPredictor: set 0, as every released SeMask-MaskFormer model"
            )
        if mf.PRE_NORM:
            raise ValueError(
                "MODEL.MASK_FORMER.PRE_NORM True is not supported by TransformerPredictor: set "
                "False (post-norm), as every released SeMask-MaskFormer model"
            )
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dropout": mf.DROPOUT,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # Unlike the masked decoder, DEC_LAYERS here counts layers and predictions alike.
            "dec_layers": mf.DEC_LAYERS,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x: torch.Tensor, mask_features: torch.Tensor) -> Dict:
        """
        Args:
            x (Tensor): (B, in_channels, h, w) the input feature map (res5).
            mask_features (Tensor): (B, mask_dim, H/4, W/4) per-pixel mask embeddings.
        Returns:
            dict:
                * "pred_logits": (B, Q, K + 1) class logits of the last layer (only with mask
                  classification);
                * "pred_masks": (B, Q, H/4, W/4) mask logits of the last layer;
                * "aux_outputs" (training only): list of dec_layers - 1 dicts with the same keys,
                  one per earlier layer, first to last.
        """
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)
        query_pos = self.query_embed.weight[None].expand(x.shape[0], -1, -1)
        decoded = self.transformer(memory, pos, query_pos)
        if not self.training:
            # Inference reads the last prediction only.
            return self._predict(decoded[-1], mask_features)
        predictions = [self._predict(d, mask_features) for d in decoded]
        return {**predictions[-1], "aux_outputs": predictions[:-1]}

    def _predict(self, decoded: torch.Tensor, mask_features: torch.Tensor) -> Dict:
        """
        Args:
            decoded (Tensor): (B, Q, C) normed queries.
            mask_features (Tensor): (B, mask_dim, H, W).
        Returns:
            dict: "pred_masks" (B, Q, H, W) and, with mask classification, "pred_logits"
            (B, Q, K + 1).
        """
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        prediction = {"pred_masks": masks}
        if self.mask_classification:
            prediction["pred_logits"] = self.class_embed(decoded)
        return prediction
