"""
SeMask demo: segment images or a video and write the semantic, panoptic or instance drawing
(``--task``); with ``--prior-maps`` also write, for each backbone stage, the argmax of its
semantic prior map blended over the image.

    python demo/demo.py --config-file CONFIG --input IMAGES_OR_FOLDER_OR_GLOB --output OUT \
        [--task {semantic,panoptic,instance}] [--prior-maps] [--opts MODEL.WEIGHTS model.pth ...]
    python demo/demo.py --config-file CONFIG --video-input VIDEO --output OUT [--prior-maps]

See ``demo/README.md`` for the file names written.
"""

import argparse
import glob
import logging
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger

from predictor import (
    TASKS,
    FrameDrawer,
    SeMaskPredictor,
    build_metadata,
    draw_prediction,
    draw_prior_maps,
)
from semask_d2 import add_semask_config
from semask_d2.engine import ConfigError, WeightsError, merge_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Written when the video does not report its frame rate.
DEFAULT_FPS = 25.0
# Meta-architectures whose inference returns, besides "sem_seg", "panoptic_seg" and "instances",
# each when its MODEL.MASK_FORMER.TEST flag is on. Any other one returns "sem_seg" only.
MASK_CLASSIFICATION_ARCHITECTURES = ("SeMaskMaskFormer",)
# The MODEL.MASK_FORMER.TEST flag of each task, in the order the default task is chosen.
TASK_FLAGS = {"panoptic": "PANOPTIC_ON", "instance": "INSTANCE_ON", "semantic": "SEMANTIC_ON"}

logger = logging.getLogger("semask_demo")


class DemoError(Exception):
    """A bad input or output argument; reported as one line with exit code 2."""


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="SeMask demo: segmentation and prior maps")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input", nargs="+", help="image files, folders (not recursive) or glob patterns"
    )
    source.add_argument("--video-input", help="a video file OpenCV can read")
    parser.add_argument("--output", required=True, help="folder for the results (created)")
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="what to draw (default: panoptic if MODEL.MASK_FORMER.TEST.PANOPTIC_ON, else "
        "instance if INSTANCE_ON, else semantic; FPN models: semantic only)",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        metavar="SCORE",
        help="instance task: draw the instances scoring at least this (default: 0.5)",
    )
    parser.add_argument(
        "--prior-maps", action="store_true", help="also write the per-stage prior-map overlays"
    )
    parser.add_argument(
        "--prior-every",
        type=int,
        default=1,
        metavar="N",
        help="video only: write prior maps of every N-th frame (default: every frame)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu",
    )
    return parser


def default_task(cfg: CfgNode) -> str:
    """
    Returns:
        str: for a mask-classification model, the first of "panoptic", "instance" whose
        ``MODEL.MASK_FORMER.TEST`` flag is on; otherwise "semantic".
    """
    if cfg.MODEL.META_ARCHITECTURE in MASK_CLASSIFICATION_ARCHITECTURES:
        for task, flag in TASK_FLAGS.items():
            if cfg.MODEL.MASK_FORMER.TEST[flag]:
                return task
    return "semantic"


def enable_task(cfg: CfgNode, task: str) -> None:
    """
    Make the model of `cfg` return the output of `task`: a mask-classification model gets the
    task's ``MODEL.MASK_FORMER.TEST`` flag on (the other outputs stay as configured); any other
    model predicts semantic segmentation only, so another task is an error.
    """
    architecture = cfg.MODEL.META_ARCHITECTURE
    if architecture in MASK_CLASSIFICATION_ARCHITECTURES:
        cfg.MODEL.MASK_FORMER.TEST[TASK_FLAGS[task]] = True
    elif task != "semantic":
        raise DemoError(
            f"--task {task}: MODEL.META_ARCHITECTURE {architecture} predicts semantic "
            "segmentation only; use a SeMask-Mask2Former config"
        )


def setup_cfg(args: argparse.Namespace) -> Tuple[CfgNode, str]:
    """
    Build the frozen config: file, then ``--opts``, then the task's output turned on
    (:func:`enable_task`). ``MODEL.DEVICE`` is cuda when available, else cpu, unless ``--opts``
    sets it. An empty ``MODEL.WEIGHTS`` gives random weights.

    Returns:
        tuple[CfgNode, str]: the config and the task to draw (``--task`` or
        :func:`default_task`).
    """
    if not os.path.isfile(args.config_file):
        raise DemoError(f"config file not found: {args.config_file}")
    cfg = get_cfg()
    add_semask_config(cfg)
    try:
        merge_config(cfg, args.config_file, args.opts)
    except ConfigError as e:
        raise DemoError(str(e)) from e
    if "MODEL.DEVICE" not in args.opts[::2]:
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    task = args.task or default_task(cfg)
    enable_task(cfg, task)
    cfg.freeze()
    return cfg, task


def _expand(pattern: str) -> List[str]:
    if os.path.isdir(pattern):
        names = sorted(os.listdir(pattern))
        files = [os.path.join(pattern, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        if not files:
            raise DemoError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {pattern}")
        return files
    if os.path.isfile(pattern):
        return [pattern]
    matches = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    if not matches:
        raise DemoError(f"input not found: {pattern}")
    return matches


def resolve_inputs(patterns: Sequence[str], output_dir: str) -> Dict[str, str]:
    """
    Args:
        patterns (list[str]): the ``--input`` values.
        output_dir (str): the ``--output`` folder.

    Returns:
        dict[str, str]: input path -> output name stem (the file name without extension).
    """
    stems: Dict[str, str] = {}
    owners: Dict[str, str] = {}
    for path in (p for pattern in patterns for p in _expand(pattern)):
        stem = os.path.splitext(os.path.basename(path))[0]
        owner = owners.setdefault(stem, path)
        if owner != path:
            raise DemoError(f"inputs {owner} and {path} would write the same files ({stem}*)")
        _check_not_input_folder(path, output_dir)
        stems[path] = stem
    return stems


def _make_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create the output folder {path}: {e.strerror}") from e


def _check_not_input_folder(path: str, output_dir: str) -> None:
    # Outputs are PNGs named after the inputs: in an input folder they could replace inputs, and
    # a later run on that folder would take them as inputs.
    if os.path.realpath(os.path.dirname(path)) == os.path.realpath(output_dir):
        raise DemoError(f"--output {output_dir} is the folder of input {path}; choose another")


def _read_image(path: str) -> np.ndarray:
    try:
        # BGR, as DefaultPredictor takes; grayscale and palette images become 3 channels.
        return read_image(path, format="BGR")
    except (OSError, ValueError) as e:
        raise DemoError(f"cannot read image {path}: {' '.join(str(e).split())}") from e


def _write_png(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(image_rgb[:, :, ::-1])):
        raise DemoError(f"cannot write {path}")


def write_prior_maps(out_base: str, image_rgb: np.ndarray, priors: Dict[str, np.ndarray]) -> None:
    """
    Write ``<out_base>_prior_<stage>.png`` per stage and ``<out_base>_priors.png``: the image
    and every stage side by side.
    """
    for stage, image in priors.items():
        _write_png(f"{out_base}_prior_{stage}.png", image)
    _write_png(f"{out_base}_priors.png", np.concatenate([image_rgb, *priors.values()], axis=1))


class Demo:
    """The predictor with what is needed to draw its results."""

    def __init__(
        self, cfg: CfgNode, task: str, prior_maps: bool, confidence_threshold: float = 0.5
    ):
        """
        Args:
            cfg (CfgNode): from :func:`setup_cfg`, which turned the output of `task` on.
            task (str): what to draw, one of ``TASKS``.
            prior_maps (bool): also draw the prior maps.
            confidence_threshold (float): instance task: the lowest score drawn.
        """
        try:
            self.predictor = SeMaskPredictor(cfg)
        except WeightsError as e:
            raise DemoError(str(e)) from e
        self.metadata = build_metadata(cfg)
        if prior_maps and not self.predictor.prior_strides:
            raise DemoError("--prior-maps: this backbone has no prior maps (NUM_SEM_BLOCKS 0)")
        if task == "panoptic" and not self.predictor.model.thing_ids:
            logger.warning(
                "panoptic: the model has no thing classes (DATASETS.TRAIN[0] has no "
                "thing_dataset_id_to_contiguous_id); every segment is stuff"
            )
        self.task = task
        self.prior_maps = prior_maps
        self.confidence_threshold = confidence_threshold

    def predict(self, image_bgr: np.ndarray) -> Dict:
        """The predictor's result, with the instances below the confidence threshold dropped."""
        result = self.predictor(image_bgr)
        if self.task == "instance":
            instances = result["instances"]
            result["instances"] = instances[instances.scores >= self.confidence_threshold]
        return result

    def run_image(self, path: str, out_base: str) -> None:
        """Write ``<out_base>.png`` and, with prior maps, the files of :func:`write_prior_maps`."""
        image_bgr = _read_image(path)
        result = self.predict(image_bgr)
        image_rgb = image_bgr[:, :, ::-1]
        _write_png(f"{out_base}.png", draw_prediction(self.task, image_rgb, result, self.metadata))
        if self.prior_maps:
            self._write_priors(out_base, image_rgb, result)

    def _write_priors(self, out_base: str, image_rgb: np.ndarray, result: Dict) -> None:
        strides = self.predictor.prior_strides
        write_prior_maps(
            out_base, image_rgb, draw_prior_maps(image_rgb, result, strides, self.metadata)
        )

    def run_video(self, capture: cv2.VideoCapture, out_base: str, prior_every: int) -> int:
        """
        Write ``<out_base>.mp4`` (mp4v) with the drawing of every frame and, with prior maps,
        the prior files of every `prior_every`-th frame as ``<out_base>_<frame:06d>_...``.

        Returns:
            int: the number of frames written.
        """
        fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        draw = FrameDrawer(self.task, self.metadata)
        writer: Optional[cv2.VideoWriter] = None
        count = 0
        try:
            for frame_bgr in _frames(capture):
                if writer is None:
                    writer = _open_writer(f"{out_base}.mp4", fps, frame_bgr.shape[:2])
                result = self.predict(frame_bgr)
                frame_rgb = frame_bgr[:, :, ::-1]
                drawing = draw(frame_rgb, result)
                writer.write(np.ascontiguousarray(drawing[:, :, ::-1]))
                if self.prior_maps and count % prior_every == 0:
                    self._write_priors(f"{out_base}_{count:06d}", frame_rgb, result)
                count += 1
        finally:
            if writer is not None:
                writer.release()
        if count == 0:
            raise DemoError("the video has no frame OpenCV can decode")
        return count


def _frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _open_writer(path: str, fps: float, size) -> cv2.VideoWriter:
    height, width = size
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise DemoError(f"OpenCV cannot write the mp4v video {path}")
    return writer


def _open_video(path: str, output_dir: str) -> cv2.VideoCapture:
    if not os.path.isfile(path):
        raise DemoError(f"video not found: {path}")
    _check_not_input_folder(path, output_dir)
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise DemoError(f"OpenCV cannot open the video {path}")
    return capture


def _build_demo(args: argparse.Namespace, cfg: CfgNode, task: str) -> Demo:
    return Demo(cfg, task, args.prior_maps, args.confidence_threshold)


def _run_video(args: argparse.Namespace, cfg: CfgNode, task: str) -> None:
    capture = _open_video(args.video_input, args.output)
    try:
        _make_output_dir(args.output)
        demo = _build_demo(args, cfg, task)
        stem = os.path.splitext(os.path.basename(args.video_input))[0]
        start = time.perf_counter()
        count = demo.run_video(capture, os.path.join(args.output, stem), args.prior_every)
    finally:
        capture.release()
    logger.info("%s: %d frames in %.2fs", args.video_input, count, time.perf_counter() - start)


def _run_images(args: argparse.Namespace, cfg: CfgNode, task: str) -> None:
    # Inputs are checked before the (slow) model build.
    stems = resolve_inputs(args.input, args.output)
    _make_output_dir(args.output)
    demo = _build_demo(args, cfg, task)
    for path, stem in stems.items():
        start = time.perf_counter()
        demo.run_image(path, os.path.join(args.output, stem))
        logger.info("%s: done in %.2fs", path, time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Args:
        argv (list[str] or None): command-line arguments; None reads ``sys.argv``.

    Returns:
        int: 0 on success, 2 for a bad argument (after a one-line message on stderr).
    """
    args = get_parser().parse_args(argv)
    # fvcore logs the weight loading (missing or unexpected keys).
    setup_logger(name="fvcore")
    setup_logger(name=logger.name)
    try:
        if args.prior_every < 1:
            raise DemoError(f"--prior-every must be at least 1, got {args.prior_every}")
        cfg, task = setup_cfg(args)
        logger.info("task: %s", task)
        if args.video_input:
            _run_video(args, cfg, task)
        else:
            _run_images(args, cfg, task)
    except DemoError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
