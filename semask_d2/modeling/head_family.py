"""
Which SeMask head family a config describes: the one dispatch rule of semask-d2.

The released SeMask-MaskFormer, SeMask-Mask2Former and SeMask-FaPN/MSFaPN models
(Picsart-AI-Research/SeMask-Segmentation, folders ``SeMask-MaskFormer``, ``SeMask-Mask2Former``
and ``SeMask-FAPN``) all name the meta-architecture ``SeMaskMaskFormer`` and the head
``BranchMaskFormerHead``, and none of their configs states which semantic layers attend
globally: each official code base hard-codes its own rule. Three keys tell the families apart:

================  ==========================  ============================  ===================
family            TRANSFORMER_IN_FEATURE      PIXEL_DECODER_NAME            stages (K classes)
================  ==========================  ============================  ===================
MaskFormer        res5                        BasePixelDecoder              W,W,W,G for every K
Mask2Former       multi_scale_pixel_decoder   MSDeformAttnPixelDecoder      W,W,W,G if K = 150,
                                                                            else W,W,W,W
FaPN              multi_scale_pixel_decoder   PixelFANDecoder               W,W,G,G for every K
MSFaPN            multi_scale_pixel_decoder   MSDeformAttnPixelFANDecoder   W,W,G,G for every K
================  ==========================  ============================  ===================

(``TRANSFORMER_IN_FEATURE`` is under ``MODEL.MASK_FORMER``, ``PIXEL_DECODER_NAME`` under
``MODEL.SEM_SEG_HEAD``; W = windowed, G = global semantic attention.) The family then fixes the
predictor (MaskFormer: the DETR-style ``TransformerPredictor`` on res5; the others: the
``MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`` decoder, ``MultiScaleMaskedTransformerDecoder``),
the criterion (MaskFormer: focal + dice at full resolution; the others: point-sampled BCE +
dice) and, unless ``MODEL.SWIN.SEM_WINDOWED`` lists one flag per stage, the stage rule.

MaskFormer dumps have no ``TRANSFORMER_DECODER_NAME`` key, so they arrive with its default,
``MultiScaleMaskedTransformerDecoder``; that value therefore also selects MaskFormer when the
other two keys do. Every other key a MaskFormer dump omits already defaults to MaskFormer's value
in :func:`semask_d2.add_semask_config` (e.g. class weight 1; the point-sampling keys are not
read). Our own configs state all three keys and ``SEM_WINDOWED``.

The rule is data: :data:`HEAD_FAMILIES`. A new family (or pixel decoder) is one more row.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple, Type

from torch import nn

from .criterion import SetCriterion
from .mask_former_criterion import MaskFormerSetCriterion

__all__ = [
    "HEAD_FAMILIES",
    "MULTI_SCALE_PIXEL_DECODER",
    "HeadFamily",
    "StageRule",
    "find_head_family",
    "head_family",
    "sem_windowed_from_config",
]

# The head whose configs the families describe; other heads (SeMask-FPN) keep the backbone's
# own default rule.
MASK_CLASSIFICATION_HEAD = "BranchMaskFormerHead"


@dataclass(frozen=True)
class StageRule:
    """
    Which stages get global semantic attention: the last `global_stages` ones, and (when
    `only_with_num_classes` is set) only for that number of classes, all stages windowed
    otherwise.
    """

    global_stages: int
    only_with_num_classes: Optional[int] = None

    def windowed(self, num_classes: int, num_stages: int) -> List[bool]:
        """
        Args:
            num_classes (int): K, classes of the backbone's prior maps.
            num_stages (int): backbone stages.
        Returns:
            list[bool]: per stage, True for windowed and False for global semantic attention.
        """
        applies = self.only_with_num_classes in (None, num_classes)
        num_global = min(self.global_stages, num_stages) if applies else 0
        return [True] * (num_stages - num_global) + [False] * num_global


@dataclass(frozen=True)
class HeadFamily:
    """
    One row of the rule: the key values that select the family, and what follows from them.

    Attributes:
        name (str): family name, for messages.
        transformer_in_feature (str): MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE.
        pixel_decoder (str): MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME.
        transformer_decoders (tuple[str]): accepted MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
            values.
        predictor (str): registry name of the transformer decoder the head builds.
        criterion (type): the set criterion class, built from the config.
        stage_rule (StageRule): windowed/global semantic attention per stage.
    """

    name: str
    transformer_in_feature: str
    pixel_decoder: str
    transformer_decoders: Tuple[str, ...]
    predictor: str
    criterion: Type[nn.Module]
    stage_rule: StageRule

    def matches(self, in_feature: str, pixel_decoder: str, transformer_decoder: str) -> bool:
        return (
            in_feature == self.transformer_in_feature
            and pixel_decoder == self.pixel_decoder
            and transformer_decoder in self.transformer_decoders
        )


_MASKED_DECODER = "MultiScaleMaskedTransformerDecoder"
# The predictor reads the pixel decoder's multi-scale maps instead of a backbone feature.
MULTI_SCALE_PIXEL_DECODER = "multi_scale_pixel_decoder"


def _masked_decoder_family(name: str, pixel_decoder: str, stage_rule: StageRule) -> HeadFamily:
    """A family on Mask2Former's head: the masked decoder on the pixel decoder's multi-scale
    maps, trained with the point-sampled :class:`SetCriterion`."""
    return HeadFamily(
        name=name,
        transformer_in_feature=MULTI_SCALE_PIXEL_DECODER,
        pixel_decoder=pixel_decoder,
        transformer_decoders=(_MASKED_DECODER,),
        predictor=_MASKED_DECODER,
        criterion=SetCriterion,
        stage_rule=stage_rule,
    )


HEAD_FAMILIES: Tuple[HeadFamily, ...] = (
    HeadFamily(
        name="MaskFormer",
        transformer_in_feature="res5",
        pixel_decoder="BasePixelDecoder",
        # The masked decoder's name is the default a MaskFormer dump (which lacks the key) gets.
        transformer_decoders=("TransformerPredictor", _MASKED_DECODER),
        predictor="TransformerPredictor",
        criterion=MaskFormerSetCriterion,
        stage_rule=StageRule(global_stages=1),
    ),
    _masked_decoder_family(
        "Mask2Former",
        "MSDeformAttnPixelDecoder",
        StageRule(global_stages=1, only_with_num_classes=150),
    ),
    _masked_decoder_family("FaPN", "PixelFANDecoder", StageRule(global_stages=2)),
    _masked_decoder_family("MSFaPN", "MSDeformAttnPixelFANDecoder", StageRule(global_stages=2)),
)


def _selecting_keys(cfg) -> Tuple[str, str, str]:
    mf = cfg.MODEL.MASK_FORMER
    return (
        mf.TRANSFORMER_IN_FEATURE,
        cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME,
        mf.TRANSFORMER_DECODER_NAME,
    )


def find_head_family(cfg) -> Optional[HeadFamily]:
    """The family of `cfg` (a config with the semask-d2 keys), or None when no row matches."""
    keys = _selecting_keys(cfg)
    for family in HEAD_FAMILIES:
        if family.matches(*keys):
            return family
    return None


def head_family(cfg) -> HeadFamily:
    """
    The family of `cfg`.

    Raises:
        ValueError: (one line) no family has these three key values; names the keys and the
            known combinations.
    """
    family = find_head_family(cfg)
    if family is None:
        in_feature, pixel_decoder, transformer_decoder = _selecting_keys(cfg)
        known = "; ".join(
            f"{f.name}: {f.transformer_in_feature} + {f.pixel_decoder} + "
            f"{' or '.join(f.transformer_decoders)}"
            for f in HEAD_FAMILIES
        )
        raise ValueError(
            f"No SeMask head family has MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE "
            f"{in_feature!r}, MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME {pixel_decoder!r} and "
            f"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME {transformer_decoder!r}; set one of "
            f"(in feature + pixel decoder + transformer decoder) {known}"
        )
    return family


def sem_windowed_from_config(cfg, num_classes: int) -> Optional[List[bool]]:
    """
    The per-stage windowed flags of the SeMask backbone of `cfg`.

    Args:
        cfg (CfgNode): a config with the semask-d2 keys.
        num_classes (int): K, classes of the backbone's prior maps.
    Returns:
        list[bool] or None: MODEL.SWIN.SEM_WINDOWED when it is not empty (it always wins); else
        the family's stage rule for models with the ``BranchMaskFormerHead``; else None (the
        backbone's own default).
    """
    stated = cfg.MODEL.SWIN.SEM_WINDOWED
    if len(stated) > 0:
        return list(stated)
    if cfg.MODEL.SEM_SEG_HEAD.NAME != MASK_CLASSIFICATION_HEAD:
        return None
    rule = head_family(cfg).stage_rule
    return rule.windowed(num_classes, len(cfg.MODEL.SWIN.DEPTHS))
