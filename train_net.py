#!/usr/bin/env python
"""
SeMask training and evaluation script, after detectron2's ``projects/DeepLab/train_net.py``.

Examples (CONFIG: a file under configs/, e.g. .../semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml):
    python train_net.py --num-gpus 8 --config-file CONFIG
    python train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python train_net.py --config-file CONFIG --resume   # from OUTPUT_DIR/last_checkpoint
    python train_net.py --num-gpus 2 --config-file CONFIG   # 2 CPU processes without CUDA

``--num-gpus`` is the number of processes per machine. Without CUDA the run moves to the CPU
(SyncBN becomes naiveSyncBN, one torch thread per core and process). Bad input (missing dataset
files or weights, an unknown config key, weights of another model, a diverging loss, ...) ends
the run with exit status 1 and a one-line ``error: ...``.
"""

import os
import sys

import torch

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

# Importing semask_d2 registers its models and datasets, also in the spawned DDP processes.
from semask_d2 import add_semask_config
from semask_d2.data import build_dataset_mapper
from semask_d2.engine import (
    DefaultTrainer,
    build_checkpointer,
    cut_long_console_lines,
    fit_config_to_machine,
    merge_config,
    user_error_message,
)
from semask_d2.evaluation import build_evaluator
from semask_d2.solver import build_lr_scheduler, build_optimizer


class Trainer(DefaultTrainer):
    """The SeMask recipe: mapper from INPUT.DATASET_MAPPER_NAME, AdamW, poly schedule."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=build_dataset_mapper(cfg, False)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)


def setup(args):
    """Create the config from defaults, the file and the command-line overrides."""
    cfg = get_cfg()
    add_semask_config(cfg)
    merge_config(cfg, args.config_file, args.opts)
    warnings = fit_config_to_machine(cfg, args.num_gpus, args.opts)
    cfg.freeze()
    # Exactly default_setup's (cached) call, so that its own long lines are cut too.
    cut_long_console_lines(setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank()))
    default_setup(cfg, args)
    # default_setup configures detectron2's and fvcore's loggers only.
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="semask_d2")
    cut_long_console_lines(logger)
    for message in warnings:
        logger.warning(message)
    if cfg.MODEL.DEVICE == "cpu":
        logger.info(
            "CPU process %d: %d torch thread(s), %d data-loader worker(s)",
            comm.get_rank(),
            torch.get_num_threads(),
            cfg.DATALOADER.NUM_WORKERS,
        )
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        build_checkpointer(cfg, model, cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        sys.stdout.flush()
        sys.exit(f"error: {message}")


if __name__ == "__main__":
    invoke_main()
