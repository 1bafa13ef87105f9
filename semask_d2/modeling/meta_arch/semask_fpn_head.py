"""
The Semantic-FPN decode head of the mmseg SeMask-FPN, as a subclass of detectron2's
:class:`SemSegFPNHead` (official SeMask-FPN ``mmseg/models/decode_heads/branch_fpn_head.py``,
Picsart-AI-Research/SeMask-Segmentation). Written for semask-d2; no code copied from mmseg or
SeMask.
"""

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

from ..ohem import OHEMPixelSelector
from ..semantic_prior import build_prior_loss

__all__ = ["SeMaskFPNHead", "LOSS_AVERAGINGS", "LOGITS_RESIZES"]


def _mean_over_labelled(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int):
    # detectron2 (PyTorch's reduction="mean"): NaN when no pixel is labelled.
    return F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value)


def _mean_over_all(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int):
    # mmseg v0.11 CrossEntropyLoss: ignored pixels add 0 but count in the B*H*W denominator.
    total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=ignore_value)
    return total / targets.numel()


# MODEL.SEM_SEG_HEAD.LOSS_AVERAGING -> fn((B, K, H, W) logits, (B, H, W) labels, ignore_value)
# -> scalar cross-entropy.
LOSS_AVERAGINGS = {"detectron2": _mean_over_labelled, "mmseg": _mean_over_all}


def _resize_by_stride(logits: torch.Tensor, size: Tuple[int, int], stride: int) -> torch.Tensor:
    # detectron2 SemSegFPNHead: x stride; the meta-architecture crops the padding away.
    return F.interpolate(logits, scale_factor=stride, mode="bilinear", align_corners=False)


def _resize_to_size(logits: torch.Tensor, size: Tuple[int, int], stride: int) -> torch.Tensor:
    # mmseg EncoderDecoder.encode_decode (inference) and decode-head losses (training): a real
    # rescale when the size is not a multiple of the stride.
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# MODEL.SEM_SEG_HEAD.LOGITS_RESIZE -> fn((B, K, h, w) logits, (H, W) input or label size,
# common stride) -> logits at the image resolution.
LOGITS_RESIZES = {"stride": _resize_by_stride, "input": _resize_to_size}


@SEM_SEG_HEADS_REGISTRY.register()
class SeMaskFPNHead(SemSegFPNHead):
    """
    :class:`SemSegFPNHead` plus a ``Dropout2d`` before the 1x1 classifier, fed by the backbone
    features directly (the mmseg SeMask-FPN has no FPN neck).

    Per input level of stride s: max(1, log2(s / common_stride)) blocks of [3x3 conv to
    ``conv_dims`` channels (no bias when normalized), norm, ReLU, x2 bilinear upsample
    (align_corners=False) unless s == common_stride]; the levels are summed, dropped out and
    classified; logits are upsampled x common_stride (align_corners=False) or, as mmseg, resized
    to the network input size (``logits_resize``). The loss
    ``loss_sem_seg`` is a cross-entropy on the upsampled logits times ``loss_weight``, averaged
    over labelled pixels (:class:`SemSegFPNHead`'s) or, as mmseg, over all pixels, optionally on
    the pixels kept by mmseg's OHEM only (:class:`OHEMPixelSelector`); plus the prior loss
    ``loss_cate`` on the backbone's prior maps in training, so that detectron2's
    :class:`SemanticSegmentor` trains SeMask-FPN as it is.

    Key map from a released mmseg SeMask-FPN checkpoint (``decode_head`` = ``BranchFPNHead``,
    channels 256, i = level 0..3 for res2..res5, j = 0, 2, 4 the conv positions, Upsample
    modules taking the odd positions in both layouts):

    * ``decode_head.scale_heads.{i}.{j}.conv.weight`` -> ``sem_seg_head.res{i+2}.{j}.weight``
    * ``decode_head.scale_heads.{i}.{j}.bn.*`` -> ``sem_seg_head.res{i+2}.{j}.norm.*``
      (weight, bias, running_mean, running_var, num_batches_tracked; NORM "BN" or "SyncBN")
    * ``decode_head.conv_seg.{weight,bias}`` -> ``sem_seg_head.predictor.{weight,bias}``
    * ``BranchFPNHead.cls_scale_heads`` has no parameters: the prior decoding is
      :class:`SemanticPriorLoss`, run by this head in training.

    Differences from mmseg: fresh convs use detectron2's MSRA fill and the classifier too
    (mmseg: normal std 0.01).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        dropout: float = 0.1,
        prior_loss: Optional[nn.Module] = None,
        ohem: Optional[OHEMPixelSelector] = None,
        loss_averaging: str = "detectron2",
        logits_resize: str = "stride",
        **kwargs,
    ):
        """
        Args:
            input_shape (dict[str, ShapeSpec]): the features to read, e.g. res2..res5.
            dropout (float): Dropout2d probability before the classifier (mmseg 0.1).
            prior_loss (nn.Module or None): maps (backbone outputs, (B, H, W) labels) to
                {"loss_cate": Tensor} in training, e.g. :class:`SemanticPriorLoss`; None for a
                backbone without prior maps (``MODEL.SWIN.NUM_SEM_BLOCKS: 0``).
            ohem (OHEMPixelSelector or None): hard-pixel selection for ``loss_sem_seg`` (mmseg
                OHEMPixelSampler); None uses every labelled pixel.
            loss_averaging (str): a key of :data:`LOSS_AVERAGINGS`: "detectron2" (mean over
                the labelled, or kept, pixels) or "mmseg" (mean over all B*H*W pixels).
            logits_resize (str): a key of :data:`LOGITS_RESIZES`: "stride" (x common_stride)
                or "input" (mmseg: to the input size the backbone reports in
                :class:`FeatureDict`, to the label size in training).
            kwargs: the arguments of :class:`SemSegFPNHead` (num_classes, conv_dims,
                common_stride, loss_weight, norm, ignore_value).
        """
        super().__init__(input_shape, **kwargs)
        if loss_averaging not in LOSS_AVERAGINGS:
            raise ValueError(
                f"Unknown MODEL.SEM_SEG_HEAD.LOSS_AVERAGING {loss_averaging!r}; use one of "
                f"{sorted(LOSS_AVERAGINGS)}"
            )
        if logits_resize not in LOGITS_RESIZES:
            raise ValueError(
                f"Unknown MODEL.SEM_SEG_HEAD.LOGITS_RESIZE {logits_resize!r}; use one of "
                f"{sorted(LOGITS_RESIZES)}"
            )
        self.dropout = nn.Dropout2d(dropout)
        self.prior_loss = prior_loss
        self.ohem = ohem
        self.loss_averaging = loss_averaging
        self.logits_resize = logits_resize

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        ret["dropout"] = cfg.MODEL.SEM_SEG_HEAD.DROPOUT
        ret["prior_loss"] = build_prior_loss(cfg, input_shape)
        head = cfg.MODEL.SEM_SEG_HEAD
        if head.OHEM_ENABLED:
            ret["ohem"] = OHEMPixelSelector(
                head.OHEM_MIN_KEPT, head.OHEM_THRESH, ignore_value=head.IGNORE_VALUE
            )
        ret["loss_averaging"] = head.LOSS_AVERAGING
        ret["logits_resize"] = head.LOGITS_RESIZE
        # The head is the only consumer of the backbone under SemanticSegmentor: an output it
        # ignores leaves parameters without gradient, and DDP fails.
        consumed = set(ret["input_shape"])
        if ret["prior_loss"] is not None:
            consumed |= set(ret["prior_loss"].in_features)
        unused = sorted(set(input_shape) - consumed)
        if unused:
            raise ValueError(
                f"Backbone outputs {unused} are not used by SeMaskFPNHead or the prior loss: "
                "their parameters would get no gradient (DDP fails). Make "
                "MODEL.SWIN.OUT_FEATURES match MODEL.SEM_SEG_HEAD.IN_FEATURES."
            )
        return ret

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """
        Args:
            features (dict[str, Tensor]): backbone outputs, prior maps included.
            targets (Tensor or None): (B, H, W) labels padded like the images, `ignore_value`
                where unlabelled; required in training.
        Returns:
            In training (None, {"loss_sem_seg", "loss_cate"}) (no ``loss_cate`` without prior
            maps); in inference ((B, K, H, W) logits, {}): the prior maps are never decoded.
            H, W: the padded input for "stride", the input size for "input".
        """
        if self.training and targets is None:
            raise ValueError(
                "SeMaskFPNHead needs 'sem_seg' labels in training: use a dataset with sem_seg "
                "files and a mapper that emits them (INPUT.DATASET_MAPPER_NAME)"
            )
        logits = self.layers(features)
        if not self.training:
            return self._resize(logits, self._input_size(features)), {}
        losses = self.losses(logits, targets)
        if self.prior_loss is not None:
            losses.update(self.prior_loss(features, targets))
        return None, losses

    def _resize(self, logits: torch.Tensor, size: Optional[Tuple[int, int]]) -> torch.Tensor:
        return LOGITS_RESIZES[self.logits_resize](logits, size, self.common_stride)

    def _input_size(self, features: Dict[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
        size = getattr(features, "input_size", None)
        if size is None and self.logits_resize == "input":
            raise ValueError(
                "MODEL.SEM_SEG_HEAD.LOGITS_RESIZE 'input' needs a backbone that reports its "
                "input size (D2SeMaskSwinTransformer); use 'stride' with this backbone"
            )
        return size

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions (Tensor): (B, K, H/common_stride, W/common_stride) logits.
            targets (Tensor): (B, H, W) labels, `ignore_value` where unlabelled.
        Returns:
            dict[str, Tensor]: {"loss_sem_seg": scalar}.
        """
        predictions = predictions.float()  # cross-entropy in fp32 under AMP too
        predictions = self._resize(predictions, tuple(targets.shape[-2:]))
        if self.ohem is not None:
            targets = self.ohem(predictions, targets)
        loss = LOSS_AVERAGINGS[self.loss_averaging](predictions, targets, self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features (dict[str, Tensor]): at least ``in_features``; other keys (prior maps) are
                ignored.
        Returns:
            Tensor: (B, num_classes, H/common_stride, W/common_stride) logits.
        """
        x = None
        for name, head in zip(self.in_features, self.scale_heads):
            y = head(features[name])
            if x is None:
                x = y
                continue
            # mmseg resizes every level to the finest one. On inputs padded to the backbone's
            # size divisibility (32) the sizes already match and the resize is an exact copy;
            # no branch on the size, so that export keeps H and W dynamic.
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + y
        return self.predictor(self.dropout(x))
