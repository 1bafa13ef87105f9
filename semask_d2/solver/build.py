"""
Optimizer of the SeMask recipes (official SeMask configs and ``train_net.py``,
Picsart-AI-Research/SeMask-Segmentation), built from detectron2's helpers.

Parameter groups come from :func:`detectron2.solver.get_default_optimizer_params`: the backbone
(module path prefix ``backbone.``, semantic layers included) trains at BASE_LR x
SOLVER.BACKBONE_MULTIPLIER; normalisation layers, ``relative_position_bias_table``,
``absolute_pos_embed`` and ``nn.Embedding`` weights take no weight decay, as in the official code.
SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" clips one L2 norm over all parameters (official
recipe); "value" and "norm" keep detectron2's per-parameter clipping.
"""

import functools
from typing import Any, Dict, List, Type

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import (
    _generate_optimizer_class_with_gradient_clipping,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)

__all__ = ["build_optimizer", "get_semask_optimizer_params"]

# Swin parameter names (local to their module) that take no weight decay, as in official SeMask.
NO_DECAY_PARAM_NAMES = ("relative_position_bias_table", "absolute_pos_embed")
# Module path prefix of the parameters scaled by SOLVER.BACKBONE_MULTIPLIER. A prefix, not a
# substring (official code), so a head module whose name contains "backbone" is not scaled.
BACKBONE_PREFIX = "backbone."


def get_semask_optimizer_params(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
    bias_lr_factor: float = 1.0,
    weight_decay_bias=None,
) -> List[Dict[str, Any]]:
    """
    Parameter groups of the SeMask recipe, merged so that equal hyper-parameters share a group.

    Args:
        model (nn.Module): the model, not yet wrapped in DistributedDataParallel (the backbone
            prefix is matched against names relative to it).
        base_lr (float): learning rate of non-backbone parameters.
        weight_decay (float): weight decay of parameters without a special rule.
        weight_decay_norm (float): weight decay of normalisation-layer parameters.
        weight_decay_embed (float): weight decay of ``nn.Embedding`` weights.
        backbone_multiplier (float): learning-rate factor of parameters under ``backbone.``.
        bias_lr_factor (float): learning-rate factor of biases (detectron2 legacy option).
        weight_decay_bias (float or None): weight decay of biases; None keeps the rules above.

    Returns:
        list[dict]: groups with keys "params", "lr" and "weight_decay".
    """
    params = get_default_optimizer_params(
        model,
        base_lr=base_lr,
        weight_decay=weight_decay,
        weight_decay_norm=weight_decay_norm,
        bias_lr_factor=bias_lr_factor,
        weight_decay_bias=weight_decay_bias,
        lr_factor_func=functools.partial(_lr_factor, backbone_multiplier=backbone_multiplier),
        overrides={name: {"weight_decay": 0.0} for name in NO_DECAY_PARAM_NAMES},
    )
    embeddings = [
        p
        for m in model.modules()
        if isinstance(m, nn.Embedding)
        for p in m.parameters(recurse=False)
        if p.requires_grad
    ]
    # get_default_optimizer_params has no rule for embeddings. reduce_param_groups applies later
    # groups parameter by parameter on top of earlier ones, so this only changes their decay.
    return reduce_param_groups(
        params + [{"params": embeddings, "weight_decay": weight_decay_embed}]
    )


def _lr_factor(name: str, *, backbone_multiplier: float) -> float:
    return backbone_multiplier if name.startswith(BACKBONE_PREFIX) else 1.0


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """
    Build the optimizer named by SOLVER.OPTIMIZER ("ADAMW" or "SGD") with the SeMask parameter
    groups and the configured gradient clipping.

    Args:
        cfg (CfgNode): a config with the keys of :func:`semask_d2.add_semask_config`.
        model (nn.Module): the model to optimise (before the DDP wrapper).

    Returns:
        torch.optim.Optimizer
    """
    params = get_semask_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        weight_decay_embed=cfg.SOLVER.WEIGHT_DECAY_EMBED,
        backbone_multiplier=cfg.SOLVER.BACKBONE_MULTIPLIER,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_cls = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'ADAMW' or 'SGD', got {cfg.SOLVER.OPTIMIZER!r}")
    return _add_gradient_clipping(cfg, optimizer_cls)(params, lr=cfg.SOLVER.BASE_LR, **kwargs)


def _add_gradient_clipping(
    cfg: CfgNode, optimizer_cls: Type[torch.optim.Optimizer]
) -> Type[torch.optim.Optimizer]:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return maybe_add_gradient_clipping(cfg, optimizer_cls)
    # One norm over every parameter of every group. Under AMP, GradScaler.step unscales before
    # calling step(), so the norm is computed on true gradients.
    clipper = functools.partial(
        torch.nn.utils.clip_grad_norm_, max_norm=clip.CLIP_VALUE, norm_type=clip.NORM_TYPE
    )
    return _generate_optimizer_class_with_gradient_clipping(optimizer_cls, global_clipper=clipper)
