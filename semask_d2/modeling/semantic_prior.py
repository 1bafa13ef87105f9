"""
The SeMask semantic prior: a parameter-free decoder that sums the per-stage prior logits at the
finest stride, and the cross-entropy prior loss `loss_cate` on it (SeMask, arXiv 2112.12782;
``SemanticHead`` and ``SeMaskSetCriterion`` of the official SeMask-Mask2Former;
``branch_fpn_head.py`` of the official SeMask-FPN). Shared by every SeMask meta-architecture.
"""

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from .upsampled_cross_entropy import upsampled_cross_entropy_sum

__all__ = [
    "SemanticPriorLoss",
    "PRIOR_CONVENTIONS",
    "build_prior_loss",
    "is_prior_feature",
    "prior_feature_name",
    "prior_features",
    "stage_of_prior",
]

# "detectron2": official SeMask-Mask2Former; "mmseg": official SeMask-FPN.
PRIOR_CONVENTIONS = ("detectron2", "mmseg")
# How loss_cate is averaged: "detectron2", over the labelled pixels (0 when there are none);
# "mmseg", over all B*H*W label pixels, ignored ones included (mmseg v0.11 CrossEntropyLoss).
PRIOR_LOSS_AVERAGINGS = ("detectron2", "mmseg")

# A backbone's prior map of stage "res2" is the output "res2_prior".
_PRIOR_SUFFIX = "_prior"


def prior_feature_name(stage: str) -> str:
    """The output key of the prior map of `stage` (e.g. "res2" -> "res2_prior")."""
    return stage + _PRIOR_SUFFIX


def is_prior_feature(name: str) -> bool:
    """Whether the backbone output `name` is a prior map."""
    return name.endswith(_PRIOR_SUFFIX)


def stage_of_prior(name: str) -> str:
    """The stage of the prior map `name` (e.g. "res2_prior" -> "res2")."""
    if not is_prior_feature(name):
        raise ValueError(f"{name!r} is not a prior-map key (expected '<stage>{_PRIOR_SUFFIX}')")
    return name[: -len(_PRIOR_SUFFIX)]


def prior_features(input_shape: Dict[str, ShapeSpec]) -> Dict[str, ShapeSpec]:
    """The prior maps among backbone outputs, finest stride first."""
    priors = {k: v for k, v in input_shape.items() if is_prior_feature(k)}
    return dict(sorted(priors.items(), key=lambda kv: kv[1].stride))


def build_prior_loss(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional["SemanticPriorLoss"]:
    """
    The prior loss of a model whose backbone outputs `input_shape`, or None when the backbone
    returns no prior maps (``MODEL.SWIN.NUM_SEM_BLOCKS: 0``).
    """
    if not prior_features(input_shape):
        return None
    return SemanticPriorLoss(cfg, input_shape)


class SemanticPriorLoss(nn.Module):
    """
    Decodes the backbone's prior maps and computes ``loss_cate``.

    Decoding: each prior of stride s is upsampled by log2(s / s0) successive x2 bilinear steps
    (s0 the finest stride), resized to the finest map if sizes still differ, and summed. Then:
    "detectron2" upsamples by s0 (align_corners=True) to the padded input size; "mmseg"
    resizes (align_corners=False) to the label size.
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: Sequence[str],
        in_strides: Sequence[int],
        ignore_value: int = 255,
        loss_weight: float = 0.4,
        convention: str = "detectron2",
        averaging: str = "detectron2",
    ):
        """
        Args:
            in_features (list[str]): prior-map keys of the backbone output, e.g. res2_prior.
            in_strides (list[int]): their strides, in the same order.
            ignore_value (int): label value excluded from the loss.
            loss_weight (float): factor of `loss_cate`.
            convention (str): "detectron2" or "mmseg" (see class docstring).
            averaging (str): one of :data:`PRIOR_LOSS_AVERAGINGS`.
        """
        super().__init__()
        if convention not in PRIOR_CONVENTIONS:
            raise ValueError(
                f"Unknown prior convention {convention!r}; expected one of {PRIOR_CONVENTIONS}"
            )
        if averaging not in PRIOR_LOSS_AVERAGINGS:
            raise ValueError(
                f"Unknown MODEL.SEMASK.PRIOR_LOSS_AVERAGING {averaging!r}; expected one of "
                f"{PRIOR_LOSS_AVERAGINGS}"
            )
        if not in_features or len(in_features) != len(in_strides):
            raise ValueError(
                f"Need one stride per prior feature, got {in_features} and {in_strides}"
            )
        order = sorted(range(len(in_strides)), key=lambda i: in_strides[i])
        self.in_features = [in_features[i] for i in order]
        self.base_stride = in_strides[order[0]]
        self.num_upsamples = [
            int(round(math.log2(in_strides[i] / self.base_stride))) for i in order
        ]
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.align_corners = convention == "detectron2"
        self.convention = convention
        self.averaging = averaging

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        priors = prior_features(input_shape)
        weight = cfg.MODEL.SEMASK.PRIOR_LOSS_WEIGHT
        return {
            "in_features": list(priors),
            "in_strides": [s.stride for s in priors.values()],
            # The official code ignores 255, whatever IGNORE_VALUE says; we honour the key.
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "loss_weight": cfg.MODEL.MASK_FORMER.CATE_WEIGHT if weight is None else weight,
            "convention": cfg.MODEL.SEMASK.PRIOR_CONVENTION,
            "averaging": cfg.MODEL.SEMASK.PRIOR_LOSS_AVERAGING,
        }

    def _resize(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def decode(
        self, priors: Dict[str, torch.Tensor], label_size: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor:
        """
        Args:
            priors (dict[str, Tensor]): (B, K, H/s, W/s) logits, at least `in_features`.
            label_size (tuple[int, int] or None): (H, W) of the labels; required by "mmseg".
        Returns:
            Tensor: (B, K, H', W') logits: the padded input size (s0 * finest map) for
            "detectron2", `label_size` for "mmseg".
        """
        total = self.decode_finest(priors)
        return self._resize(total, self._decoded_size(total, label_size))

    def _decoded_size(
        self, total: torch.Tensor, label_size: Optional[Tuple[int, int]]
    ) -> Tuple[int, int]:
        if self.convention == "detectron2":
            return (total.shape[-2] * self.base_stride, total.shape[-1] * self.base_stride)
        if label_size is None:
            raise ValueError("The mmseg prior convention resizes to the labels: pass label_size")
        return label_size

    def decode_finest(self, priors: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            priors (dict[str, Tensor]): (B, K, H/s, W/s) logits, at least `in_features`.
        Returns:
            Tensor: (B, K, H/s0, W/s0) sum of the prior maps at the finest stride s0.
        """
        # Contiguous: the backbone hands out channels-last views, and the CPU bilinear kernel
        # is several times faster on contiguous maps.
        base = priors[self.in_features[0]].contiguous()
        size = tuple(base.shape[-2:])
        total = base
        for name, steps in zip(self.in_features[1:], self.num_upsamples[1:]):
            x = priors[name].contiguous()
            for _ in range(steps):
                x = F.interpolate(
                    x, scale_factor=2.0, mode="bilinear", align_corners=self.align_corners
                )
            total = total + self._resize(x, size)
        return total

    def forward(
        self, priors: Dict[str, torch.Tensor], targets: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            priors (dict[str, Tensor]): backbone prior maps.
            targets (Tensor): (B, H, W) integer labels, `ignore_value` where unlabelled.
        Returns:
            dict[str, Tensor]: {"loss_cate": weighted loss} in training; {} in eval, where the
            decoder does not run at all.
        """
        if not self.training:
            return {}
        total = self.decode_finest(priors).float()
        targets = self._match_labels(targets, self._decoded_size(total, tuple(targets.shape[-2:])))
        # The cross-entropy of `decode`'s upsampled logits, without holding them.
        loss = upsampled_cross_entropy_sum(
            total,
            targets,
            align_corners=self.align_corners,
            ignore_value=self.ignore_value,
        )
        if self.averaging == "mmseg":
            count = targets.numel()
        else:
            # Mean over labelled pixels; 0 (not NaN) when every pixel is ignored.
            count = (targets != self.ignore_value).sum().clamp(min=1)
        return {"loss_cate": self.loss_weight * loss / count}

    def _match_labels(self, targets: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        h, w = targets.shape[-2:]
        if (h, w) == size:
            return targets
        if h > size[0] or w > size[1]:
            raise ValueError(
                f"Labels of size {(h, w)} are larger than the decoded prior map {size}; pass the "
                "labels of the images given to the backbone (padded to the same size)"
            )
        return F.pad(targets, (0, size[1] - w, 0, size[0] - h), value=self.ignore_value)
