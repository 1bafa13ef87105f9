#!/usr/bin/env python
"""
Export a SeMask model to ONNX, check it, and compare ONNX Runtime with PyTorch on one image.

Flags as detectron2's ``tools/deploy/export_model.py``. The graph (``torch.onnx.export(...,
dynamo=True)``, opset >= 17) takes ``image``: float32 (3, H, W), RGB, 0-255, any H and W (traced
for H, W >= 33; smaller images the model accepts run too); normalisation and padding happen
inside. It returns ``sem_seg``: float32 (K, H, W), the model's ``sem_seg`` for that image. Writes
OUTPUT/model.onnx, runs ``onnx.checker``, then the sample image (or a generated one of
INPUT.MIN_SIZE_TEST squared) through ONNX Runtime and PyTorch, and prints the largest
difference. Needs the ``export`` extra: ``pip install -e '.[export]'``.

Example:
  python tools/export_model.py --config-file configs/ade20k/semantic-segmentation/semask_fpn/\
semask_fpn_swin_tiny_bs16_80k.yaml --format onnx --output out/ --sample-image img.jpg \
MODEL.WEIGHTS model_final.pth

Bad input (config, weights, image, a model that cannot be exported) ends with exit status 1
and a one-line ``error: ...``.
"""

import argparse
import logging
import os
import sys

import numpy as np
import torch

from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from semask_d2 import add_semask_config
from semask_d2.engine import build_checkpointer, merge_config, user_error_message
from semask_d2.export import (
    ExportError,
    build_sem_seg_graph,
    check_sample_size,
    compare_sem_seg,
    export_onnx,
    onnxruntime_session,
)
from semask_d2.export.onnx_export import DEFAULT_OPSET

logger = logging.getLogger("semask_d2.export_model")


def setup_cfg(args):
    cfg = get_cfg()
    add_semask_config(cfg)
    merge_config(cfg, args.config_file, args.opts)
    # The graph is traced on the CPU; ONNX Runtime picks its own device later.
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def load_model(cfg) -> torch.nn.Module:
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        build_checkpointer(cfg, model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    return model.eval()


def sample_image(path: str, cfg) -> torch.Tensor:
    """The image to trace and compare with: (3, H, W) float32, RGB, 0-255."""
    if path:
        try:
            array = read_image(path, format="RGB")
        except (OSError, ValueError) as e:
            raise ExportError(f"--sample-image {path} cannot be read ({e})") from None
    else:
        size = cfg.INPUT.MIN_SIZE_TEST
        array = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()
    check_sample_size(image)
    return image


def pytorch_sem_seg(model, graph, image: torch.Tensor) -> torch.Tensor:
    """The model's own ``sem_seg``; the graph in eager mode when the config turns it off."""
    with torch.no_grad():
        result = model([{"image": image}])[0]
        return result["sem_seg"] if "sem_seg" in result else graph(image)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format")
    parser.add_argument("--output", default="./output", help="output folder for model.onnx")
    parser.add_argument("--sample-image", default="", help="image to trace and compare with")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 17)")
    parser.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime and torch threads for the comparison"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="semask_d2")
    # The ONNX optimizer warns for every multi-output node it leaves unfolded (Split).
    logging.getLogger("onnxscript.optimizer").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    image = sample_image(args.sample_image, cfg)
    model = load_model(cfg)
    graph = build_sem_seg_graph(model, cfg.INPUT.FORMAT)
    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "model.onnx")
    export_onnx(graph, image, path, args.opset)
    print(
        f"Wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB, opset {args.opset}); "
        "onnx.checker passed"
    )
    session = onnxruntime_session(path, args.threads)
    onnx_out = session.run(None, {"image": image.numpy()})[0]
    stats = compare_sem_seg(onnx_out, pytorch_sem_seg(model, graph, image))
    print(
        f"ONNX Runtime vs PyTorch, {image.shape[1]}x{image.shape[2]} image, sem_seg "
        f"{tuple(onnx_out.shape)}: largest difference {stats['max_abs_diff']:.3g}, "
        f"{100 * stats['within_1e-4']:.4f}% of values within 1e-4, argmax equal on "
        f"{100 * stats['argmax_agree']:.4f}% of pixels"
    )
    return 0


def invoke_main() -> None:
    try:
        sys.exit(main())
    except ExportError as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        message = user_error_message(e)
        if message is None:
            raise
        sys.exit(f"error: {message}")


if __name__ == "__main__":
    invoke_main()
