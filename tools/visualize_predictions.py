#!/usr/bin/env python
"""
Draw images, ground truth and predictions of a trained model side by side, one image per row,
classes coloured with the dataset's ``stuff_colors`` (detectron2 ``Visualizer.draw_sem_seg``;
ignored pixels are left uncoloured). When the model returns panoptic segments
(MODEL.MASK_FORMER.TEST.PANOPTIC_ON) and the dataset has panoptic ground truth, both are drawn
as panoptic segments instead (``Visualizer.draw_panoptic_seg``: stuff in its class colour,
each thing instance in a shade of its class's ``thing_colors``).

Example (what ``dev/quickstart.sh`` runs after training):

    python tools/visualize_predictions.py \
        --config-file configs/quickstart/semask_fpn_shapes.yaml OUTPUT_DIR ./output/quickstart

reads ``output/quickstart/model_final.pth`` and writes ``output/quickstart/predictions.png``.
"""

import argparse
import logging
import os
from typing import List, Optional

import numpy as np
import torch
from panopticapi.utils import rgb2id
from PIL import Image, ImageDraw

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

from semask_d2 import add_semask_config
from semask_d2.data import build_dataset_mapper

COLUMNS = ("image", "ground truth", "prediction")
_GAP = 4  # pixels between panels
_TITLE_HEIGHT = 16

logger = logging.getLogger("semask_d2.visualize_predictions")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config-file", required=True, help="the config the model was trained with"
    )
    parser.add_argument(
        "--weights", default="", help="model file (default: OUTPUT_DIR/model_final.pth)"
    )
    parser.add_argument(
        "--dataset", default="", help="registered dataset (default: the first of DATASETS.TEST)"
    )
    parser.add_argument("--num-images", type=int, default=4, help="rows: the dataset's first N")
    parser.add_argument(
        "--scale", type=float, default=2.0, help="display scale of each panel (default 2)"
    )
    parser.add_argument(
        "--output", default="", help="PNG to write (default: OUTPUT_DIR/predictions.png)"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def predict(model: torch.nn.Module, mapper, record: dict) -> dict:
    """
    Returns:
        dict: the model's output at the record's size: "sem_seg" (K, H, W) scores, and
        "panoptic_seg" / "instances" when its config turns them on.
    """
    with torch.no_grad():
        return model([mapper(record)])[0]


def draw_row(image: np.ndarray, record: dict, output: dict, metadata, scale: float):
    """
    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        record (dict): the image's dataset record (its ground truth).
        output (dict): :func:`predict`'s output for it.

    Returns:
        list[np.ndarray]: the three (H', W', 3) uint8 RGB panels of :data:`COLUMNS`.
    """
    # The arguments of `draw` for the ground truth and for the prediction.
    if "panoptic_seg" in output and "pan_seg_file_name" in record:
        colors = read_image(record["pan_seg_file_name"], format="RGB")
        truth_and_prediction = [
            (torch.from_numpy(rgb2id(colors)), record["segments_info"]),
            output["panoptic_seg"],
        ]
        draw = Visualizer.draw_panoptic_seg
    else:
        label = read_image(record["sem_seg_file_name"])
        prediction = output["sem_seg"].argmax(dim=0).cpu().numpy()
        truth_and_prediction = [(label,), (prediction,)]
        draw = Visualizer.draw_sem_seg
    panels = [Visualizer(image, metadata, scale=scale).output.get_image()]
    for arguments in truth_and_prediction:
        visualizer = Visualizer(image, metadata, scale=scale)
        panels.append(draw(visualizer, *arguments, alpha=0.7).get_image())
    return panels


def compose(rows: List[List[np.ndarray]]) -> Image.Image:
    """Tile equally sized panels into a grid under one title per column, on white."""
    height, width = rows[0][0].shape[:2]
    canvas = Image.new(
        "RGB",
        (len(COLUMNS) * (width + _GAP) - _GAP, _TITLE_HEIGHT + len(rows) * (height + _GAP) - _GAP),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(COLUMNS):
        draw.text((col * (width + _GAP) + 2, 2), title, fill="black")
    for row, panels in enumerate(rows):
        for col, panel in enumerate(panels):
            position = (col * (width + _GAP), _TITLE_HEIGHT + row * (height + _GAP))
            canvas.paste(Image.fromarray(panel), position)
    return canvas


def main(argv: Optional[List[str]] = None) -> str:
    """Returns the path of the written PNG."""
    args = parse_args(argv)
    setup_logger(name="semask_d2")
    cfg = get_cfg()
    add_semask_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    weights = args.weights or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "predictions.png")
    dataset = args.dataset or cfg.DATASETS.TEST[0]

    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    mapper = build_dataset_mapper(cfg, is_train=False)
    metadata = MetadataCatalog.get(dataset)
    rows = []
    for record in DatasetCatalog.get(dataset)[: args.num_images]:
        image = read_image(record["file_name"], format="RGB")
        rows.append(draw_row(image, record, predict(model, mapper, record), metadata, args.scale))
    if not rows:
        raise SystemExit(f"error: dataset '{dataset}' has no images")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    compose(rows).save(output)
    logger.info("Wrote %s (%d images of %s)", output, len(rows), dataset)
    return output


if __name__ == "__main__":
    main()
