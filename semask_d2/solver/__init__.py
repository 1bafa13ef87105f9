"""Optimizers and learning-rate schedules of the SeMask recipes."""

from detectron2.projects.deeplab import build_lr_scheduler

from .build import build_optimizer, get_semask_optimizer_params

__all__ = ["build_lr_scheduler", "build_optimizer", "get_semask_optimizer_params"]
