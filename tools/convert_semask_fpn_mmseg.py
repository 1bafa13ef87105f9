#!/usr/bin/env python
"""
Convert a released mmseg SeMask-FPN checkpoint into Detectron2 weights for our SeMask-FPN
(``SemanticSegmentor`` + ``D2SeMaskSwinTransformer`` + ``SeMaskFPNHead``).

Source: Picsart-AI-Research/SeMask-Segmentation ``SeMask-FPN/`` (mmsegmentation v0.11), an mmcv
checkpoint ``{"meta", "state_dict"[, "optimizer"]}`` whose state dict holds ``backbone.*`` and
``decode_head.*`` only (no neck, no auxiliary head); ``meta`` and ``optimizer`` are ignored.

Key map (explicit, every source key used, the result loads strictly):

* ``backbone.*`` keep their names: the mmseg SeMask Swin has our backbone's names and shapes;
  ``attn.relative_position_index`` must be the standard Swin index.
* ``decode_head.scale_heads.{i}.{j}.conv.weight`` -> ``sem_seg_head.res{i+2}.{j}.weight`` and
  ``decode_head.scale_heads.{i}.{j}.bn.*`` -> ``sem_seg_head.res{i+2}.{j}.norm.*``, j = 0, 2, 4
  the conv positions (odd positions are parameter-free upsamplings in both models);
* ``decode_head.conv_seg.*`` -> ``sem_seg_head.predictor.*``.

The architecture and the class counts come from the tensor shapes: the prior classes from
``mlp_cls_q`` and the head classes from ``conv_seg``. They differ in the committed COCO-Stuff-10k
configs (150 and 171); the tool then prints the config override our model needs. The window of
the semantic layers and the windowed/global rule have no parameters: they come from the config.

Usage:
    python tools/convert_semask_fpn_mmseg.py semask_tiny_fpn_ade20k.pth semask_fpn_T_ade20k.pkl
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Tuple

import torch

# The Swin part is the ImageNet converter's (same folder): architecture, shapes, error, writer.
from convert_swin_imagenet import ConversionError
from convert_swin_imagenet import infer_architecture as infer_swin_architecture
from convert_swin_imagenet import save_weights, target_shapes

from semask_d2.modeling.backbone.swin_blocks import relative_position_index

AUTHOR = "semask_d2.tools.convert_semask_fpn_mmseg"
# BranchFPNHead ``channels`` in every SeMask-FPN config; our MODEL.SEM_SEG_HEAD.CONVS_DIM.
CONV_DIMS = 256
# Convolutions per level (strides 4, 8, 16, 32): max(1, log2(stride / 4)).
CONVS_PER_LEVEL = (1, 1, 2, 3)
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BUFFER_RE = re.compile(
    r".*(relative_position_index|running_mean|running_var|num_batches_tracked)$"
)
_PRIOR_KEY = "backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight"


def _shape(state_dict: Dict[str, torch.Tensor], key: str) -> Tuple[int, ...]:
    if key not in state_dict:
        raise ConversionError(f"missing key {key} needed to infer the architecture")
    return tuple(state_dict[key].shape)


def infer_architecture(state_dict: Dict[str, torch.Tensor]) -> dict:
    """
    Returns:
        dict: ``backbone`` (the Swin hyper-parameters, keyword arguments of our backbone),
        ``num_prior_classes`` (rows of ``mlp_cls_q``) and ``num_classes`` (``conv_seg``).
    """
    prefix = "backbone."
    backbone = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    swin = infer_swin_architecture(backbone)
    if len(swin["depths"]) != 4:
        raise ConversionError(f"the backbone has {len(swin['depths'])} stages, not 4")
    return dict(
        backbone=swin,
        num_prior_classes=_shape(state_dict, _PRIOR_KEY)[0],
        num_classes=_shape(state_dict, "decode_head.conv_seg.weight")[0],
    )


def head_key_map(arch: dict) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """
    Returns:
        dict[str, (str, tuple)]: ``decode_head.*`` key -> (``sem_seg_head.*`` key, shape).
    """
    key_map = {
        "decode_head.conv_seg.weight": (
            "sem_seg_head.predictor.weight",
            (arch["num_classes"], CONV_DIMS, 1, 1),
        ),
        "decode_head.conv_seg.bias": ("sem_seg_head.predictor.bias", (arch["num_classes"],)),
    }
    for i, num_convs in enumerate(CONVS_PER_LEVEL):
        for n in range(num_convs):
            src, dst = f"decode_head.scale_heads.{i}.{2 * n}", f"sem_seg_head.res{i + 2}.{2 * n}"
            in_channels = arch["backbone"]["embed_dim"] * 2**i if n == 0 else CONV_DIMS
            key_map[f"{src}.conv.weight"] = (f"{dst}.weight", (CONV_DIMS, in_channels, 3, 3))
            for p in _BN_PARAMS:
                shape = () if p == "num_batches_tracked" else (CONV_DIMS,)
                key_map[f"{src}.bn.{p}"] = (f"{dst}.norm.{p}", shape)
    return key_map


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """
    Args:
        state_dict (dict[str, Tensor]): the ``state_dict`` of an mmseg SeMask-FPN checkpoint.
    Returns:
        dict[str, Tensor]: ``backbone.*`` and ``sem_seg_head.*`` weights of our SeMask-FPN.
        dict: the inferred architecture (see :func:`infer_architecture`).
    """
    arch = infer_architecture(state_dict)
    backbone = target_shapes(arch["backbone"], num_classes=arch["num_prior_classes"])
    key_map = {k: (k, shape) for k, shape in backbone.items()}
    key_map.update(head_key_map(arch))
    extra = sorted(k for k in state_dict if k not in key_map)
    missing = sorted(k for k in key_map if k not in state_dict)
    wrong = sorted(
        f"{k} {list(state_dict[k].shape)} (expected {list(shape)})"
        for k, (_, shape) in key_map.items()
        if k in state_dict and tuple(state_dict[k].shape) != shape
    )
    if extra or missing or wrong:
        problems = [(extra, "unexpected"), (missing, "missing"), (wrong, "wrong shape")]
        raise ConversionError(
            f"not the SeMask-FPN of {_describe(arch)}: "
            + "; ".join(f"{len(keys)} {what}: {keys}" for keys, what in problems if keys)
        )
    index = relative_position_index(arch["backbone"]["window_size"])
    for key in state_dict:
        if key.endswith("relative_position_index") and not torch.equal(state_dict[key], index):
            raise ConversionError(f"{key} differs from the standard Swin index")
    return {key_map[k][0]: v for k, v in state_dict.items()}, arch


def config_overrides(arch: dict) -> List[str]:
    """Config overrides our model needs for this checkpoint, beyond the matching config."""
    if arch["num_prior_classes"] == arch["num_classes"]:
        return []
    return [f"MODEL.SWIN.NUM_PRIOR_CLASSES {arch['num_prior_classes']}"]


def _describe(arch: dict) -> str:
    swin = arch["backbone"]
    return (
        f"embed_dim {swin['embed_dim']}, depths {swin['depths']}, heads {swin['num_heads']}, "
        f"window {swin['window_size']}, {arch['num_prior_classes']} prior classes, "
        f"{arch['num_classes']} classes"
    )


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The ``state_dict`` of an mmcv checkpoint, read with ``torch.load(weights_only=True)``."""
    if not os.path.isfile(path):
        raise ConversionError(f"input checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for files that are not checkpoints
        reason = (str(e).strip().splitlines() or [""])[0]
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint: {reason}")
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConversionError(
            f"{path} is not an mmseg checkpoint: no 'state_dict' of tensors (top-level keys: "
            f"{sorted(obj) if isinstance(obj, dict) else type(obj).__name__})"
        )
    return sd


def count_parameters(new_sd: Dict[str, torch.Tensor]) -> int:
    """Learnable parameters: every tensor but the buffers (position index, BN statistics)."""
    return sum(v.numel() for k, v in new_sd.items() if not _BUFFER_RE.match(k))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("input", help="mmseg SeMask-FPN checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 weights to write (.pkl or .pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    try:
        if os.path.exists(args.output) and not args.overwrite:
            raise ConversionError(f"{args.output} exists; pass --overwrite to replace it")
        new_sd, arch = convert_state_dict(load_state_dict(args.input))
        save_weights(new_sd, args.output, author=AUTHOR)
    except (ConversionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"SeMask-FPN: {_describe(arch)}")
    print(f"Wrote {len(new_sd)} tensors ({count_parameters(new_sd):,} parameters) to {args.output}")
    overrides = config_overrides(arch)
    print("Config overrides: " + (" ".join(overrides) if overrides else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
