#!/usr/bin/env python
"""
Latency of a SeMask Mask2Former config against transformers' Mask2FormerForUniversalSegmentation
with a Swin-T backbone (huggingface/transformers), both built with random weights (no download).

Compared like with like: both models take the same normalised (1, 3, H, W) tensor and their
(class logits, mask logits) go through the same semantic post-processing to the input size
(:func:`semantic_postprocess`). Both run in one process, interleaved: every timed round runs
each model once, in an order that rotates from round to round, so that machine noise hits
both alike. Our model is also timed as DefaultPredictor calls it (uint8 HWC image, resize,
normalisation, output resized to the original size), for information only.

--bf16 adds rounds under torch.autocast("cpu", dtype=torch.bfloat16) and reports how far each
model's semantic scores move from its float32 scores (max abs difference, argmax agreement).
On CPUs without native bfloat16 (AVX512-BF16 or AMX) autocast is far slower than float32 for
both models (transformers' model most of all), so expect long runs.

Training steps (forward, backward, AdamW step) at --batch-size on the same synthetic batch,
and peak memory (RSS growth over the process baseline), are measured per model in fresh
processes as tools/benchmark.py does. Needs `pip install transformers` (and scipy).

Example:
  python tools/benchmark_vs_transformers.py --input-size 512 512 --runs 7 --json out.json
"""

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import current_rss_mb, peak_rss_mb, setup_cfg, synthetic_batch  # noqa: E402

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "configs/ade20k/semantic-segmentation/semask_mask2former/"
    "maskformer2_semask_swin_tiny_bs16_160k.yaml",
)
MODELS = ("ours", "transformers")
# Swin-T, as SWIN_SIZES["tiny"] of the SeMask backbone.
PEER_SWIN = dict(
    embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3
)


def semantic_postprocess(
    class_logits: torch.Tensor, mask_logits: torch.Tensor, size: Tuple[int, int]
) -> torch.Tensor:
    """
    Semantic scores of a mask-classification output (Mask2Former semantic inference), at `size`.

    Args:
        class_logits (Tensor): (B, Q, K + 1), the last class "no object".
        mask_logits (Tensor): (B, Q, h, w).
        size (tuple[int, int]): output (H, W); masks are upsampled bilinearly
            (align_corners False) before the sigmoid.
    Returns:
        Tensor: (B, K, H, W) float32, sum_q softmax(class_q)[k] * sigmoid(mask_q).
    """
    masks = F.interpolate(mask_logits.float(), size=size, mode="bilinear", align_corners=False)
    probs = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("bqk,bqhw->bkhw", probs, masks.sigmoid())


def output_effect(scores: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    """
    Args:
        scores, reference (Tensor): (B, K, H, W) semantic scores.
    Returns:
        dict: "max_abs_diff" of the scores and "argmax_agreement", the fraction of pixels with
        the same top class.
    """
    same = scores.argmax(1) == reference.argmax(1)
    return {
        "max_abs_diff": (scores - reference).abs().max().item(),
        "argmax_agreement": same.float().mean().item(),
    }


def time_interleaved(
    runners: Dict[str, Callable[[], object]], warmup: int, runs: int
) -> Dict[str, List[float]]:
    """
    Runs every runner once per round, the order rotating by one each round; `warmup` untimed
    rounds first.

    Returns:
        dict[str, list[float]]: seconds of the timed runs per runner name.
    """
    names = list(runners)
    times = {name: [] for name in names}
    for round_index in range(warmup + runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name]()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def build_ours(args):
    """Returns our model (eval, random weights) and its config."""
    from detectron2.modeling import build_model

    import semask_d2  # noqa: F401  (registers the SeMask models)

    cfg = setup_cfg(args)
    return build_model(cfg).eval(), cfg


def build_peer(num_labels: int, swin: Dict = PEER_SWIN, **overrides):
    """
    transformers' Mask2Former with a Swin backbone built from its config: random weights, no
    hub access. `overrides` go to Mask2FormerConfig (e.g. smaller sizes in tests).
    """
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    stages = [f"stage{i + 1}" for i in range(len(swin["depths"]))]
    backbone = SwinConfig(out_features=stages, **swin)
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, **overrides)
    return Mask2FormerForUniversalSegmentation(config).eval()


def ours_logits(model, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Our backbone and head on a normalised batch: (class logits, mask logits)."""
    outputs = model.sem_seg_head(model.backbone(x))
    return outputs["pred_logits"], outputs["pred_masks"]


def peer_logits(model, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """transformers' model on the same batch: (class logits, mask logits)."""
    outputs = model(pixel_values=x)
    return outputs.class_queries_logits, outputs.masks_queries_logits


def normalized_input(cfg, height: int, width: int) -> Tuple[np.ndarray, torch.Tensor]:
    """A random RGB uint8 image (H, W, 3) and the (1, 3, H, W) tensor both models take."""
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    if cfg.INPUT.FORMAT == "BGR":
        x = x.flip(1)
    return image, (x - mean) / std


def score_runner(
    forward: Callable, size: Tuple[int, int], dtype: str
) -> Callable[[], torch.Tensor]:
    """
    Args:
        forward (callable): returns (class logits, mask logits), e.g. :func:`ours_logits`
            bound to a model and input.
        size (tuple[int, int]): post-processing size.
        dtype (str): "fp32", or "bf16" for bfloat16 autocast.
    Returns:
        callable: one no_grad run to (B, K, H, W) float32 semantic scores.
    """

    def run():
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
        with torch.no_grad():
            with autocast:
                logits = forward()
            # Outside autocast: the same float32 post-processing for every model and dtype.
            return semantic_postprocess(*logits, size)

    return run


def make_runners(args, models: Dict, cfg, dtypes: Sequence[str]) -> Dict[str, Callable]:
    """
    Args:
        models (dict): "ours" and/or "transformers" models.
    Returns:
        dict[str, callable]: per "<model> <dtype>" a :func:`score_runner` on the same input,
        plus "ours predictor" (float32, DefaultPredictor-style) when our model is given.
    """
    from detectron2.engine import DefaultPredictor

    height, width = args.input_size
    image, x = normalized_input(cfg, height, width)
    logits = {"ours": ours_logits, "transformers": peer_logits}
    runners = {
        f"{name} {dtype}": score_runner(
            lambda f=logits[name], m=model: f(m, x), (height, width), dtype
        )
        for dtype in dtypes
        for name, model in models.items()
    }
    if "ours" in models:
        predictor = DefaultPredictor(cfg)
        predictor.model = models["ours"]  # the same weights (MODEL.WEIGHTS is empty)
        # DefaultPredictor takes BGR images.
        runners["ours predictor"] = lambda: predictor(image[:, :, ::-1].copy())
    return runners


def _train_runner(model_name: str, args):
    """Builds one model in training mode and returns (model, one-step callable)."""
    from detectron2.utils.events import EventStorage

    height, width = args.input_size
    cfg = setup_cfg(args)
    batch = synthetic_batch(cfg, args.batch_size, height, width, "cpu")
    if model_name == "ours":
        model = build_ours(args)[0].train()

        def loss_fn():
            with EventStorage():
                return sum(model(batch).values())

    else:
        model = build_peer(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES).train()
        mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
        pixels = (torch.stack([b["image"] for b in batch]).float() - mean) / std
        masks = [b["instances"].gt_masks.float() for b in batch]
        labels = [b["instances"].gt_classes for b in batch]

        def loss_fn():
            return model(pixel_values=pixels, mask_labels=masks, class_labels=labels).loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def measure_isolated(model_name: str, task: str, args, queue) -> None:
    """
    In a fresh process: "train" times training steps at --batch-size; "inference" runs the
    float32 model + post-processing once after warm-up. Both report the peak RSS growth.
    """
    torch.set_num_threads(args.threads)
    baseline = current_rss_mb()
    if task == "train":
        _, run = _train_runner(model_name, args)
        warmup, runs = args.warmup, args.train_runs
    else:
        cfg = setup_cfg(args)
        if model_name == "ours":
            model = build_ours(args)[0]
        else:
            model = build_peer(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
        _, x = normalized_input(cfg, *args.input_size)
        logits = ours_logits if model_name == "ours" else peer_logits
        run = score_runner(lambda: logits(model, x), tuple(args.input_size), "fp32")
        warmup, runs = args.warmup, 1
    times = time_interleaved({task: run}, warmup, runs)[task]
    queue.put(
        {
            "median_ms": 1000 * statistics.median(times),
            "peak_mem_mb": peak_rss_mb() - baseline,
        }
    )


def run_isolated(model_name: str, task: str, args) -> Dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure_isolated, args=(model_name, task, args, queue))
    proc.start()
    result = queue.get()  # before join: a full pipe would block the child
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{task} of {model_name} failed (exit {proc.exitcode})")
    return result


def compare(args) -> Dict:
    """Runs the whole protocol and returns the rows and summary (see :func:`main`)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    ours, cfg = build_ours(args)
    peer = build_peer(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    dtypes = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    runners = make_runners(args, {"ours": ours, "transformers": peer}, cfg, dtypes)
    times = time_interleaved(runners, args.warmup, args.runs)
    load_after = os.getloadavg()

    params = {
        "ours": sum(p.numel() for p in ours.parameters()),
        "transformers": sum(p.numel() for p in peer.parameters()),
    }
    isolated = {}
    if not args.skip_isolated:
        for name in MODELS:
            isolated[name] = {
                "train": run_isolated(name, "train", args),
                "inference": run_isolated(name, "inference", args),
            }
    rows = []
    for key, seconds in times.items():
        name, kind = key.split(" ")
        iso = isolated.get(name, {})
        rows.append(
            {
                "model": f"{name} (DefaultPredictor)" if kind == "predictor" else name,
                "params": params[name],
                "dtype": "bf16 autocast" if kind == "bf16" else "fp32",
                "median_ms": 1000 * statistics.median(seconds),
                "min_ms": 1000 * min(seconds),
                "max_ms": 1000 * max(seconds),
                "infer_peak_mb": (
                    iso["inference"]["peak_mem_mb"] if kind == "fp32" and iso else None
                ),
                "train_ms": iso["train"]["median_ms"] if kind == "fp32" and iso else None,
                "train_peak_mb": iso["train"]["peak_mem_mb"] if kind == "fp32" and iso else None,
            }
        )
    median = {key: statistics.median(seconds) for key, seconds in times.items()}
    summary = {
        "input": f"1x3x{args.input_size[0]}x{args.input_size[1]}",
        "threads": args.threads,
        "train_batch": args.batch_size,
        "runs": args.runs,
        "warmup": args.warmup,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "ratio_fp32": median["ours fp32"] / median["transformers fp32"],
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    if args.bf16:
        summary["ratio_bf16"] = median["ours bf16"] / median["transformers bf16"]
        for name in MODELS:
            summary[f"bf16_effect_{name}"] = output_effect(
                runners[f"{name} bf16"](), runners[f"{name} fp32"]()
            )
    return {"rows": rows, "summary": summary}


def format_report(result: Dict) -> str:
    """The table and one line per summary entry."""
    rows = result["rows"]
    table = tabulate(
        [list(r.values()) for r in rows],
        headers=list(rows[0]),
        floatfmt=".1f",
        intfmt=",",
        missingval="-",
    )
    summary = "\n".join(f"{k}: {v}" for k, v in result["summary"].items())
    return f"{table}\n{summary}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the training steps")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (and train steps)")
    parser.add_argument("--runs", type=int, default=5, help="timed interleaved rounds")
    parser.add_argument("--train-runs", type=int, default=5, help="timed training steps")
    parser.add_argument("--bf16", action="store_true", help="also time under bf16 autocast")
    parser.add_argument(
        "--skip-isolated", action="store_true", help="skip the training and memory processes"
    )
    parser.add_argument("--json", default="", metavar="FILE", help="also write the results here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.runs < 5 or args.train_runs < 5:
        parser.error("the protocol needs --warmup >= 1, --runs >= 5 and --train-runs >= 5")
    # tools/benchmark.setup_cfg reads these.
    args.device = "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = compare(args)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
