#!/usr/bin/env python
"""
Speed and memory of a model built from a config, with random weights.

Tasks (each measured in a fresh process so peak memory is its own):
  inference  the model called as DefaultPredictor does (resize, to tensor, model, output resized
             to the original size), batch 1, no_grad;
  train      one training step (forward, backward, optimizer step) at --batch-size;
  backbone   the backbone forward alone at --batch-size, no_grad;
  graph      the exported computation in PyTorch eager: semask_d2.export's SemSegGraph on one
             (3, H, W) float image (normalise, pad, model, crop; sem_seg out), no_grad;
  onnxruntime  the same graph exported to ONNX (--onnx-model, else exported first, untimed)
             on ONNX Runtime's CPU provider with --threads intra-op threads.
Protocol: --warmup untimed runs, then the median and range of --runs timed runs; torch threads
set explicitly (2 on CPU by default). Peak memory: RSS growth over the process baseline on CPU,
torch.cuda.max_memory_allocated on GPU.

Example:
  python tools/benchmark.py --config-file configs/ade20k/semantic-segmentation/semask_fpn/\
semask_fpn_swin_tiny_bs16_80k.yaml --input-size 512 512 --batch-size 2 --tasks inference,train
  python tools/benchmark.py --config-file CONFIG --tasks graph,onnxruntime --onnx-model model.onnx
"""

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from tabulate import tabulate

from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.events import EventStorage

import semask_d2  # noqa: F401  (registers the SeMask models)
from semask_d2 import add_semask_config
from semask_d2.export import build_sem_seg_graph, export_onnx, onnxruntime_session

TASKS = ("inference", "train", "backbone", "graph", "onnxruntime")


def setup_cfg(args):
    cfg = get_cfg()
    add_semask_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """
    Peak RSS of this process's own memory. On Linux VmHWM: ru_maxrss of a spawned process
    starts at its parent's RSS at fork time (the kernel keeps the high-water mark across exec),
    which would hide any peak below the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_batch(cfg, batch_size, height, width, device):
    """Training inputs as the semantic mapper emits them: image, sem_seg and per-class masks."""
    rng = np.random.default_rng(0)
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    batch = []
    for _ in range(batch_size):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        sem_seg = torch.from_numpy(
            rng.integers(0, num_classes, (height // 32 + 1, width // 32 + 1))
        )
        sem_seg = sem_seg.repeat_interleave(32, 0).repeat_interleave(32, 1)[:height, :width]
        classes = torch.unique(sem_seg)
        instances = Instances((height, width))
        instances.gt_classes = classes
        instances.gt_masks = BitMasks(sem_seg[None] == classes[:, None, None]).tensor
        batch.append({"image": image, "sem_seg": sem_seg, "instances": instances})
    return batch


def graph_input(args) -> torch.Tensor:
    """The (3, H, W) float32 image of the graph and onnxruntime tasks."""
    height, width = args.input_size
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (3, height, width)).astype(np.float32))


def count_onnx_parameters(path: str) -> int:
    import onnx

    return sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer)


def make_runner(task, cfg, args):
    """
    Return the number of parameters and a zero-argument callable performing one measured run
    of `task`.
    """
    height, width = args.input_size
    if task == "inference":
        predictor = DefaultPredictor(cfg)
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        return count_parameters(predictor.model), lambda: predictor(image)
    if task == "onnxruntime":
        session = onnxruntime_session(args.onnx_model, args.threads)
        feed = {"image": graph_input(args).numpy()}
        return count_onnx_parameters(args.onnx_model), lambda: session.run(None, feed)
    model = build_model(cfg)
    if task == "graph":
        graph = build_sem_seg_graph(model.eval(), cfg.INPUT.FORMAT)
        image = graph_input(args).to(cfg.MODEL.DEVICE)

        def run_graph():
            with torch.no_grad():
                return graph(image)

        return count_parameters(model), run_graph
    if task == "backbone":
        model.eval()
        x = torch.randn(args.batch_size, 3, height, width, device=cfg.MODEL.DEVICE)

        def run_backbone():
            with torch.no_grad():
                return model.backbone(x)

        return count_parameters(model), run_backbone
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(cfg, args.batch_size, height, width, cfg.MODEL.DEVICE)

    def run_train_step():
        with EventStorage():
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return count_parameters(model), run_train_step


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(task, args, queue):
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    baseline = current_rss_mb()
    num_params, runner = make_runner(task, cfg, args)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        runner()
    times = []
    for _ in range(args.runs):
        sync()
        start = time.perf_counter()
        runner()
        sync()
        times.append(time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb() - baseline
    queue.put(
        {
            "task": task,
            "device": torch.cuda.get_device_name() if cuda else f"cpu ({args.threads} threads)",
            "input": f"{args.input_size[0]}x{args.input_size[1]}",
            "batch": args.batch_size if task in ("train", "backbone") else 1,
            "median_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times),
            "max_ms": 1000 * max(times),
            "peak_mem_mb": memory,
            "params": num_params,
        }
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=2, help="batch of train/backbone tasks")
    # Comma-separated, so that trailing config overrides are never read as tasks.
    parser.add_argument(
        "--tasks",
        type=lambda text: text.split(","),
        default=["inference", "train"],
        metavar="TASK[,TASK...]",
        help=f"among {', '.join(TASKS)}",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default="", metavar="FILE", help="also write the rows here")
    parser.add_argument(
        "--onnx-model",
        default="",
        metavar="FILE",
        help="model.onnx of tools/export_model.py for the onnxruntime task (same config)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.runs < 5:
        parser.error("the protocol needs --warmup >= 1 and --runs >= 5")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown:
        parser.error(f"unknown tasks {unknown}; choose among {', '.join(TASKS)}")
    if "onnxruntime" in args.tasks and args.device != "cpu":
        parser.error("the onnxruntime task runs ONNX Runtime's CPU provider: add --device cpu")
    if args.onnx_model and not os.path.isfile(args.onnx_model):
        parser.error(f"--onnx-model {args.onnx_model}: no such file")
    return args


def export_for_benchmark(args, folder: str) -> str:
    """Export the config's model (random weights) at --input-size; returns the .onnx path."""
    cfg = setup_cfg(args)
    graph = build_sem_seg_graph(build_model(cfg).eval(), cfg.INPUT.FORMAT)
    path = os.path.join(folder, "model.onnx")
    print(f"Exporting {path} for the onnxruntime task (untimed) ...", file=sys.stderr)
    export_onnx(graph, graph_input(args), path)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if "onnxruntime" in args.tasks and not args.onnx_model:
            args.onnx_model = export_for_benchmark(args, folder)
        return run_tasks(args)


def run_tasks(args) -> int:
    ctx = mp.get_context("spawn")
    rows = []
    for task in args.tasks:
        queue = ctx.Queue()
        proc = ctx.Process(target=measure, args=(task, args, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            print(f"error: task {task!r} failed (exit {proc.exitcode}); see above", file=sys.stderr)
            return 1
        rows.append(queue.get())
    headers = list(rows[0])
    print(tabulate([list(r.values()) for r in rows], headers=headers, floatfmt=".1f", intfmt=","))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
