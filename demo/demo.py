"""
SeMask demo: segment images or a video and write overlays; with ``--prior-maps`` also write, for
each backbone stage, the argmax of its semantic prior map blended over the image.

    python demo/demo.py --config-file CONFIG --input IMAGES_OR_FOLDER_OR_GLOB --output OUT \
        [--prior-maps] [--opts MODEL.WEIGHTS model.pth ...]
    python demo/demo.py --config-file CONFIG --video-input VIDEO --output OUT [--prior-maps]

See ``demo/README.md`` for the file names written.
"""

import argparse
import glob
import logging
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode

from predictor import SeMaskPredictor, build_metadata, draw_prior_maps, draw_sem_seg
from semask_d2 import add_semask_config
from semask_d2.engine import ConfigError, WeightsError, merge_config

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Written when the video does not report its frame rate.
DEFAULT_FPS = 25.0


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


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """
    Build the frozen config: file, then ``--opts``. ``MODEL.DEVICE`` is cuda when available,
    else cpu, unless ``--opts`` sets it. An empty ``MODEL.WEIGHTS`` gives random weights.
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
    cfg.freeze()
    return cfg


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

    def __init__(self, cfg: CfgNode, prior_maps: bool):
        try:
            self.predictor = SeMaskPredictor(cfg)
        except WeightsError as e:
            raise DemoError(str(e)) from e
        self.metadata = build_metadata(cfg)
        if prior_maps and not self.predictor.prior_strides:
            raise DemoError("--prior-maps: this backbone has no prior maps (NUM_SEM_BLOCKS 0)")
        self.prior_maps = prior_maps

    def run_image(self, path: str, out_base: str) -> None:
        """Write ``<out_base>.png`` and, with prior maps, the files of :func:`write_prior_maps`."""
        image_bgr = _read_image(path)
        result = self.predictor(image_bgr)
        image_rgb = image_bgr[:, :, ::-1]
        _write_png(f"{out_base}.png", draw_sem_seg(image_rgb, result["sem_seg"], self.metadata))
        if self.prior_maps:
            self._write_priors(out_base, image_rgb, result)

    def _write_priors(self, out_base: str, image_rgb: np.ndarray, result: Dict) -> None:
        strides = self.predictor.prior_strides
        write_prior_maps(
            out_base, image_rgb, draw_prior_maps(image_rgb, result, strides, self.metadata)
        )

    def run_video(self, capture: cv2.VideoCapture, out_base: str, prior_every: int) -> int:
        """
        Write ``<out_base>.mp4`` (mp4v) with the overlay of every frame and, with prior maps,
        the prior files of every `prior_every`-th frame as ``<out_base>_<frame:06d>_...``.

        Returns:
            int: the number of frames written.
        """
        fps = capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS
        visualizer = VideoVisualizer(self.metadata, ColorMode.IMAGE)
        writer: Optional[cv2.VideoWriter] = None
        count = 0
        try:
            for frame_bgr in _frames(capture):
                if writer is None:
                    writer = _open_writer(f"{out_base}.mp4", fps, frame_bgr.shape[:2])
                result = self.predictor(frame_bgr)
                frame_rgb = frame_bgr[:, :, ::-1]
                overlay = visualizer.draw_sem_seg(frame_rgb, result["sem_seg"]).get_image()
                writer.write(np.ascontiguousarray(overlay[:, :, ::-1]))
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


def _run_video(args: argparse.Namespace, cfg: CfgNode, logger: logging.Logger) -> None:
    capture = _open_video(args.video_input, args.output)
    try:
        _make_output_dir(args.output)
        demo = Demo(cfg, args.prior_maps)
        stem = os.path.splitext(os.path.basename(args.video_input))[0]
        start = time.perf_counter()
        count = demo.run_video(capture, os.path.join(args.output, stem), args.prior_every)
    finally:
        capture.release()
    logger.info("%s: %d frames in %.2fs", args.video_input, count, time.perf_counter() - start)


def _run_images(args: argparse.Namespace, cfg: CfgNode, logger: logging.Logger) -> None:
    # Inputs are checked before the (slow) model build.
    stems = resolve_inputs(args.input, args.output)
    _make_output_dir(args.output)
    demo = Demo(cfg, args.prior_maps)
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
    logger = setup_logger(name="semask_demo")
    try:
        if args.prior_every < 1:
            raise DemoError(f"--prior-every must be at least 1, got {args.prior_every}")
        cfg = setup_cfg(args)
        if args.video_input:
            _run_video(args, cfg, logger)
        else:
            _run_images(args, cfg, logger)
    except DemoError as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
