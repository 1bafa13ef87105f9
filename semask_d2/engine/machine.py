"""
Config defaults that work where the user runs: no CUDA, several CPU processes, few cores.

The shipped recipes are GPU recipes (``MODEL.DEVICE`` cuda, SyncBN, 4 data-loader workers). On a
machine without CUDA they would stop with a driver traceback, SyncBN would fail in a
multi-process CPU run, and every process would start one torch thread per core: on 2 cores two
processes then run 3-7x slower than with one thread each.
"""

import os
from typing import List, Sequence

import torch

from detectron2.config import CfgNode

__all__ = ["cpu_threads_per_process", "fit_config_to_machine"]


def cpu_threads_per_process(processes: int) -> int:
    """Torch threads for each of `processes` CPU processes sharing this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, processes))


def fit_config_to_machine(cfg: CfgNode, processes: int, opts: Sequence[str]) -> List[str]:
    """
    Adapt `cfg` (not frozen) in place to this machine, and set this process's torch threads.

    * ``MODEL.DEVICE`` cuda without CUDA -> cpu.
    * On the CPU: ``MODEL.SEM_SEG_HEAD.NORM`` SyncBN -> detectron2's naiveSyncBN (the same
      statistics across processes, over gloo too; same state-dict keys); torch threads
      ``max(1, cores // processes)`` unless OMP_NUM_THREADS is set; at most that many
      data-loader workers unless ``opts`` sets DATALOADER.NUM_WORKERS.

    Args:
        cfg (CfgNode): the merged config.
        processes (int): processes on this machine (``--num-gpus``).
        opts (list[str]): the command-line ``KEY VALUE`` overrides.

    Returns:
        list[str]: one warning per change, for the caller to log once its logger is set up.
    """
    warnings = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        warnings.append(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but CUDA is not available here: running on "
            "the CPU (set MODEL.DEVICE cpu to silence this)."
        )
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE != "cpu":
        return warnings
    if cfg.MODEL.SEM_SEG_HEAD.NORM == "SyncBN":
        warnings.append(
            "MODEL.SEM_SEG_HEAD.NORM SyncBN needs CUDA: using detectron2's naiveSyncBN, which "
            "synchronizes the same statistics over gloo (same weights and checkpoint keys)."
        )
        cfg.MODEL.SEM_SEG_HEAD.NORM = "naiveSyncBN"
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(cpu_threads_per_process(processes))
    threads = torch.get_num_threads()
    if "DATALOADER.NUM_WORKERS" not in list(opts)[::2]:
        cfg.DATALOADER.NUM_WORKERS = min(cfg.DATALOADER.NUM_WORKERS, threads)
    return warnings
