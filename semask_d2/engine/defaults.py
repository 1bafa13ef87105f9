"""
A detectron2 ``DefaultTrainer`` that runs on any device.

Stock ``DefaultTrainer`` cannot train several CPU processes (gloo): ``create_ddp_model`` passes
``device_ids``, which ``DistributedDataParallel`` rejects for CPU modules, and
``SOLVER.AMP.ENABLED`` selects ``AMPTrainer``, which asserts CUDA. Both choices are made inside
``DefaultTrainer.__init__``, which is therefore redone here with device checks; the checkpointer
is :class:`StrictCheckpointer`, and a non-finite loss ends training with a one-line
:class:`NonFiniteLossError` and no checkpoint of the broken weights. Everything else is inherited.
"""

import logging
import os
import weakref
from collections import OrderedDict

from torch import nn

from detectron2.engine import AMPTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine import DefaultTrainer as _D2DefaultTrainer
from detectron2.engine import create_ddp_model as _d2_create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..modeling.test_time_augmentation import SemanticSegmentorWithTTA
from .user_errors import NonFiniteLossError, hide_user_error_tracebacks
from .weights import build_checkpointer

__all__ = ["DefaultTrainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


def _on_cuda(model: nn.Module) -> bool:
    return any(p.is_cuda for p in model.parameters())


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """
    detectron2's ``create_ddp_model`` (DistributedDataParallel when there are several
    processes), also for CPU models: those get ``device_ids=None``, the only value PyTorch
    accepts for them.

    Args:
        model (nn.Module): the model, already on its device.
        kwargs: arguments of ``DistributedDataParallel``.
    """
    if comm.get_world_size() > 1 and not _on_cuda(model):
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


class DefaultTrainer(_D2DefaultTrainer):
    """
    ``detectron2.engine.DefaultTrainer`` with device-generic construction: DDP without
    ``device_ids`` on CPU, AMP only on CUDA (a warning and float32 elsewhere), atomic
    checkpoints, and :meth:`test_with_TTA`. Subclasses override the ``build_*`` hooks as usual.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg (CfgNode): the frozen config.
        """
        # The order below is DefaultTrainer's, which later hooks rely on.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        hide_user_error_tracebacks()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        use_amp = cfg.SOLVER.AMP.ENABLED and _on_cuda(model)
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning("SOLVER.AMP.ENABLED is ignored: AMP needs CUDA; training in float32")

        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = build_checkpointer(
            cfg, model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError:
            # detectron2's check of the reduced losses (main process). The final checkpoint and
            # evaluation hooks would otherwise run on the broken weights in after_train().
            self._hooks = [
                h
                for h in self._hooks
                if not isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))
            ]
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at iteration {self.iter}; no checkpoint was "
                "written for it. Fix: lower SOLVER.BASE_LR or lengthen SOLVER.WARMUP_ITERS, "
                "enable SOLVER.CLIP_GRADIENTS, disable SOLVER.AMP.ENABLED, or check the labels "
                "(values above NUM_CLASSES, IGNORE_VALUE)."
            ) from None

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """
        Evaluate `model` with multi-scale and flip test-time augmentation (TEST.AUG.*) on
        cfg.DATASETS.TEST, writing to OUTPUT_DIR/inference_TTA.

        Returns:
            OrderedDict: the results of :meth:`test`, with "_TTA" appended to each task name.
        """
        logger.info("Running inference with test-time augmentation ...")
        model = SemanticSegmentorWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
            )
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, model, evaluators)
        return OrderedDict((task + "_TTA", metrics) for task, metrics in results.items())
