#!/usr/bin/env python
"""
Parameters, FLOPs, activations and structure of a model built from a config.

detectron2's ``tools/analyze_model.py`` for every semask-d2 model.

The model is built from the config with random weights (``MODEL.WEIGHTS`` is not loaded: none of
the counts depends on weight values) and run in inference mode on generated images, batch 1, at
the config's training crop (``INPUT.CROP.SIZE``) or at ``--size H W``. Counts go through
detectron2's ``FlopCountAnalysis`` (fvcore) with the operator handles of
``semask_d2.utils.flop_handles`` added, so attention, deformable attention and deformable
convolution are counted. fvcore's convention: one fused multiply-add is one flop (MACs reported
as FLOPs); norms and bilinear resizing are counted per element, other elementwise ops are not.
The inference forward is counted whole: pre-processing, backbone, head and the post-processing
that resizes the output to the image size. Every operator without a handle is listed, split
into elementwise ops (not counted by convention) and ops with no handle at all, whose cost is
missing from the total.

Examples (``--tasks`` takes several values: put it before ``--config-file`` and overrides):
  python tools/analyze_model.py --tasks parameter flop --config-file configs/ade20k/\
semantic-segmentation/semask_fpn/semask_fpn_swin_tiny_bs16_80k.yaml --size 512 512
  python tools/analyze_model.py --tasks structure --config-file CONFIG MODEL.SWIN.DEPTHS [2,2,2,2]
"""

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import flop_count_table

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.analysis import (
    FlopCountAnalysis,
    activation_count_operators,
    parameter_count,
    parameter_count_table,
)

from semask_d2 import add_semask_config
from semask_d2.utils.flop_handles import (
    ACTIVATION_HANDLES,
    FLOP_HANDLES,
    UNCOUNTED_ELEMENTWISE_OPS,
)


class AnalysisError(ValueError):
    """A user error: bad config file, key or size."""


def setup_cfg(config_file: str, opts: Sequence[str], device: str):
    """The config of `config_file` with `opts` (``KEY VALUE`` pairs), on `device`, no weights."""
    if not os.path.isfile(config_file):
        raise AnalysisError(f"config file not found: {config_file}")
    cfg = get_cfg()
    add_semask_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise AnalysisError(f"cannot merge {config_file} with {list(opts)}: {e}")
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    return cfg


def input_size(cfg, size: Optional[Sequence[int]]) -> Tuple[int, int]:
    """(H, W): `size` when given, else the config's absolute training crop."""
    if size:
        if min(size) <= 0:
            raise AnalysisError(f"--size must be two positive integers H W, got {list(size)}")
        return int(size[0]), int(size[1])
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.TYPE == "absolute":
        return int(crop.SIZE[0]), int(crop.SIZE[1])
    raise AnalysisError(
        f"the config has no fixed crop size (INPUT.CROP.ENABLED {crop.ENABLED}, TYPE "
        f"{crop.TYPE!r}); pass --size H W"
    )


def generated_inputs(cfg, size: Tuple[int, int], num_inputs: int) -> List[List[Dict]]:
    """`num_inputs` batches of one random uint8 image (3, H, W), as the test mapper emits."""
    generator = torch.Generator().manual_seed(0)
    height, width = size
    batches = []
    for _ in range(num_inputs):
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
        batches.append([{"image": image.to(cfg.MODEL.DEVICE), "height": height, "width": width}])
    return batches


def count_flops(model, batches: List[List[Dict]], max_depth: int) -> Dict:
    """
    Returns:
        dict: ``total`` (mean over the batches) and ``total_std``, ``by_operator`` (mean),
        ``uncounted_elementwise`` and ``unsupported`` (operator -> occurrences in one forward),
        ``table`` (per-module table of the first batch).
    """
    totals, by_operator = [], Counter()
    for index, batch in enumerate(batches):
        flops = FlopCountAnalysis(model, batch).set_op_handle(**FLOP_HANDLES)
        # Listed below, split into elementwise and unhandled ops, instead of fvcore's warnings.
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops.tracer_warnings("none")
        totals.append(flops.total())
        by_operator.update(flops.by_operator())
        if index == 0:
            table = flop_count_table(flops, max_depth=max_depth)
            skipped = flops.unsupported_ops()
    return {
        "total": statistics.fmean(totals),
        "total_std": statistics.pstdev(totals),
        "by_operator": {op: n / len(batches) for op, n in sorted(by_operator.items())},
        "uncounted_elementwise": {
            op: n for op, n in sorted(skipped.items()) if op in UNCOUNTED_ELEMENTWISE_OPS
        },
        "unsupported": {
            op: n for op, n in sorted(skipped.items()) if op not in UNCOUNTED_ELEMENTWISE_OPS
        },
        "table": table,
    }


def count_activations(model, batches: List[List[Dict]]) -> Dict:
    """
    Returns:
        dict: ``total`` (millions, mean over the batches), ``total_std`` and ``by_operator``.
    """
    totals, by_operator = [], Counter()
    # fvcore counts the outputs of products and convolutions only and warns about every other
    # op (elementwise ones included); the flop task lists the unhandled ops instead.
    jit_logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = jit_logger.level
    jit_logger.setLevel(logging.ERROR)
    try:
        counts_per_batch = [
            activation_count_operators(model, batch, supported_ops=ACTIVATION_HANDLES)
            for batch in batches
        ]
    finally:
        jit_logger.setLevel(level)
    for counts in counts_per_batch:
        totals.append(sum(counts.values()))
        by_operator.update(counts)
    return {
        "total": statistics.fmean(totals),
        "total_std": statistics.pstdev(totals),
        "by_operator": {op: n / len(batches) for op, n in sorted(by_operator.items())},
    }


def _format_ops(ops: Dict[str, int]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in ops.items()) or "none"


def parameter_task(model, batches, args) -> Dict:
    total = parameter_count(model)[""]
    print(f"Parameter count:\n{parameter_count_table(model, max_depth=args.max_depth)}")
    print(f"Parameters: {total:,}")
    return {"total": total}


def flop_task(model, batches, args) -> Dict:
    with torch.no_grad():
        result = count_flops(model, batches, args.max_depth)
    by_operator = {op: round(n / 1e9, 3) for op, n in result["by_operator"].items()}
    print(f"FLOPs of the first input (fvcore: one multiply-add = one flop):\n{result['table']}")
    print(f"GFLOPs by operator: {by_operator}")
    elementwise = _format_ops(result["uncounted_elementwise"])
    print(f"Not counted, elementwise (fvcore convention): {elementwise}")
    unsupported = _format_ops(result["unsupported"])
    print(f"Unsupported, no handle (cost missing from the total): {unsupported}")
    print(f"GFLOPs: {result['total'] / 1e9:.2f} +- {result['total_std'] / 1e9:.2f}")
    return {k: v for k, v in result.items() if k != "table"}


def activation_task(model, batches, args) -> Dict:
    with torch.no_grad():
        result = count_activations(model, batches)
    print(f"Activations (millions) by operator: {result['by_operator']}")
    print(f"Activations: {result['total']:.2f}M +- {result['total_std']:.2f}M")
    return result


def structure_task(model, batches, args) -> Dict:
    print(f"Model structure:\n{model}")
    return {}


# Task name -> function(model, batches, args) that prints its report and returns its numbers.
TASKS = {
    "parameter": parameter_task,
    "flop": flop_task,
    "activation": activation_task,
    "structure": structure_task,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.strip().splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.strip().splitlines()[1:]),
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config")
    parser.add_argument(
        "--tasks", choices=list(TASKS), required=True, nargs="+", help="what to report"
    )
    parser.add_argument(
        "-n",
        "--num-inputs",
        type=int,
        default=1,
        help="generated images to average FLOPs and activations over (default 1; the counts "
        "of these models depend on the image size only)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="image size (default: the config's INPUT.CROP.SIZE)",
    )
    parser.add_argument("--device", default="cpu", help="device to build and run on (cpu)")
    parser.add_argument("--max-depth", type=int, default=3, help="module depth of the tables")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to this file")
    parser.add_argument(
        "opts",
        default=None,
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.SWIN.EMBED_DIM 128",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.num_inputs < 1:
            raise AnalysisError(f"--num-inputs must be at least 1, got {args.num_inputs}")
        cfg = setup_cfg(args.config_file, args.opts or [], args.device)
        size = input_size(cfg, args.size)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model = build_model(cfg).eval()
    batches = generated_inputs(cfg, size, args.num_inputs)
    print(f"{args.config_file}: input {size[0]}x{size[1]}, batch 1, random weights")
    report = {"config_file": args.config_file, "input_size": list(size), "seconds": {}}
    for task in args.tasks:
        start = time.perf_counter()
        report[task] = TASKS[task](model, batches, args)
        report["seconds"][task] = round(time.perf_counter() - start, 2)
    print(f"Seconds per task: {report['seconds']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
