"""
Inference and drawing for ``demo/demo.py``: a :class:`DefaultPredictor` that also returns the
SeMask prior maps of the same forward pass, and the images drawn from its results (semantic,
panoptic or instance drawings by Detectron2's visualizers, prior-map overlays). Nothing here
reads or writes files.
"""

import contextlib
from typing import Callable, Dict, Iterator, List, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import Metadata, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from semask_d2.data.transforms import build_test_resize
from semask_d2.engine import build_checkpointer
from semask_d2.modeling.semantic_prior import prior_features, stage_of_prior

__all__ = [
    "COLOR_SEED",
    "PRIOR_ALPHA",
    "TASKS",
    "FrameDrawer",
    "SeMaskPredictor",
    "blend_labels",
    "build_metadata",
    "colors_from",
    "draw_prediction",
    "draw_prior_maps",
    "prior_labels_to_image",
]

# Weight of the palette colour when a prior map is blended over the image.
PRIOR_ALPHA = 0.5
# Seed of the numpy generator Visualizer draws its random instance colours from (ColorMode.IMAGE):
# the same image gives the same drawing on every run.
COLOR_SEED = 0


class SeMaskPredictor(DefaultPredictor):
    """
    :class:`DefaultPredictor` (test-time resize, weights from ``MODEL.WEIGHTS``, eval mode) for
    either SeMask meta-architecture. A forward hook on ``model.backbone`` keeps the
    ``resN_prior`` entries of the backbone's output dict, so the prior maps come from the same
    forward pass as the segmentation.
    """

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg (CfgNode): a full SeMask config (``add_semask_config`` applied).

        Raises:
            WeightsError: MODEL.WEIGHTS is missing, unreadable or does not fit the model.
        """
        # DefaultPredictor's set-up, with semask-d2's strict checkpointer in place of
        # detectron2's, which would load weights of another model with warnings only.
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        build_checkpointer(cfg, self.model).load(cfg.MODEL.WEIGHTS)
        # The evaluation's test-time resize (INPUT.TEST_RESIZE), so that the demo predicts
        # what train_net.py --eval-only scores.
        self.aug = build_test_resize(cfg)
        self.input_format = cfg.INPUT.FORMAT
        # res2_prior..res5_prior, finest stride first.
        self.prior_strides = {
            name: shape.stride
            for name, shape in prior_features(self.model.backbone.output_shape()).items()
        }
        self._priors: Dict[str, torch.Tensor] = {}
        self.model.backbone.register_forward_hook(self._keep_priors)

    def _keep_priors(self, module, inputs, outputs: Dict[str, torch.Tensor]) -> None:
        self._priors = {name: outputs[name] for name in self.prior_strides}

    def __call__(self, image_bgr: np.ndarray) -> Dict:
        """
        Args:
            image_bgr (ndarray): (H, W, 3) uint8 image in BGR order, as DefaultPredictor takes.

        Returns:
            dict: the outputs the model returns, on the CPU:
                * "sem_seg" (ndarray): (H, W) int64 predicted labels.
                * "panoptic_seg" (tuple[Tensor, list[dict]]): the (H, W) int32 segment ids (0:
                  no segment) and, per segment, "id", "isthing" and "category_id".
                * "instances" (Instances): `pred_masks` (N, H, W), `scores`, `pred_classes`
                  and `pred_boxes`, the masks' bounding boxes (the model leaves them zero).
            and always:
                * "priors" (dict[str, ndarray]): per ``resN_prior`` key, the (h, w) argmax over
                  the K classes of the prior logits, at the stride of that stage on the resized,
                  padded network input. Empty for a backbone without prior maps.
                * "resized_size" (tuple[int, int]): (height, width) of the image after the
                  test-time resize, before padding.
        """
        self._priors = {}
        predictions = super().__call__(image_bgr)
        height, width = image_bgr.shape[:2]
        resize = self.aug.get_transform(image_bgr)
        resized_size = (resize.new_h, resize.new_w)
        result = {
            "priors": {k: v[0].argmax(dim=0).cpu().numpy() for k, v in self._priors.items()},
            "resized_size": resized_size,
        }
        if "sem_seg" in predictions:
            result["sem_seg"] = predictions["sem_seg"].argmax(dim=0).cpu().numpy()
        if "panoptic_seg" in predictions:
            segment_ids, segments_info = predictions["panoptic_seg"]
            result["panoptic_seg"] = (segment_ids.cpu(), segments_info)
        if "instances" in predictions:
            result["instances"] = _with_mask_boxes(predictions["instances"].to("cpu"))
        return result


def _with_mask_boxes(instances: Instances) -> Instances:
    # Visualizer writes each label at its box and VideoVisualizer tracks instances by box:
    # all-zero boxes would stack the labels in a corner and lose the instances between frames.
    instances.pred_boxes = BitMasks(instances.pred_masks > 0).get_bounding_boxes()
    return instances


def _palette(num_classes: int) -> List[List[int]]:
    # detectron2's 74 distinct colours, then fixed random ones: the same on every run.
    colors = colormap(rgb=True, maximum=255).astype(np.int64).tolist()
    extra = np.random.RandomState(0).randint(0, 256, size=(max(num_classes - len(colors), 0), 3))
    return (colors + extra.tolist())[:num_classes]


def _class_lists(source: Metadata, num_classes: int) -> str:
    # The lists the model's contiguous ids index: the semantic classes (semantic and panoptic
    # datasets, things included), else the thing classes (instance datasets, whose
    # stuff_classes, when present, are those of another task).
    for prefix in ("stuff", "thing"):
        if len(source.get(f"{prefix}_classes", [])) == num_classes:
            return prefix
    return "stuff"


def build_metadata(cfg: CfgNode) -> Metadata:
    """
    Class names and RGB colours for drawing, one per class of ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``.

    They come from the metadata of ``DATASETS.TEST[0]``: its ``stuff_classes`` /
    ``stuff_colors`` when there is one class per model class, else its ``thing_classes`` /
    ``thing_colors`` (an instance dataset); otherwise, or for missing colours, "class <i>" and
    a fixed palette. Both the ``stuff_*`` and the ``thing_*`` fields hold the same per-class
    lists, indexed by contiguous class id: whether a segment is a thing comes from the
    prediction (panoptic ``isthing``, from the model's ``thing_ids``; every instance is one).
    A new object is returned: registered metadata stays as is (Visualizer would otherwise pick
    random colours for a dataset without ``stuff_colors``).

    Args:
        cfg (CfgNode): the model config.

    Returns:
        Metadata: with ``stuff_classes`` and ``thing_classes`` (list[str]), ``stuff_colors`` and
        ``thing_colors`` (list of RGB tuples).
    """
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "semask_demo"
    source = MetadataCatalog.get(name) if len(cfg.DATASETS.TEST) else Metadata()
    prefix = _class_lists(source, num_classes)
    classes = source.get(f"{prefix}_classes", [])
    colors = source.get(f"{prefix}_colors", [])
    if len(classes) != num_classes:
        classes = [f"class {i}" for i in range(num_classes)]
    if len(colors) != num_classes:
        colors = _palette(num_classes)
    classes = list(classes)
    colors = [tuple(int(v) for v in c) for c in colors]
    return Metadata(
        name=name,
        stuff_classes=classes,
        stuff_colors=colors,
        thing_classes=classes,
        thing_colors=colors,
    )


@contextlib.contextmanager
def colors_from(stream: np.random.RandomState) -> Iterator[None]:
    """
    Make `stream` numpy's global generator inside, where Visualizer draws its random colours;
    `stream` advances, and the global generator is restored after.
    """
    outer = np.random.get_state()
    np.random.set_state(stream.get_state())
    try:
        yield
    finally:
        stream.set_state(np.random.get_state())
        np.random.set_state(outer)


# What each task draws, from a result of SeMaskPredictor, with a Visualizer of one image.
_IMAGE_DRAWERS: Dict[str, Callable[[Visualizer, Dict], VisImage]] = {
    "semantic": lambda v, result: v.draw_sem_seg(result["sem_seg"]),
    "panoptic": lambda v, result: v.draw_panoptic_seg(*result["panoptic_seg"]),
    "instance": lambda v, result: v.draw_instance_predictions(result["instances"]),
}
# The same with a VideoVisualizer, which keeps the colour of an instance from frame to frame.
_FRAME_DRAWERS: Dict[str, Callable[[VideoVisualizer, np.ndarray, Dict], VisImage]] = {
    "semantic": lambda v, frame, result: v.draw_sem_seg(frame, result["sem_seg"]),
    "panoptic": lambda v, frame, result: v.draw_panoptic_seg_predictions(
        frame, *result["panoptic_seg"]
    ),
    "instance": lambda v, frame, result: v.draw_instance_predictions(frame, result["instances"]),
}
TASKS = tuple(_IMAGE_DRAWERS)


def draw_prediction(
    task: str, image_rgb: np.ndarray, result: Dict, metadata: Metadata
) -> np.ndarray:
    """
    Args:
        task (str): one of :data:`TASKS`: draws ``result["sem_seg"]`` (masks, edges, names),
            ``result["panoptic_seg"]`` (stuff in its class colour, things in a shade of it,
            names) or ``result["instances"]`` (masks, boxes, names and scores, random colours).
        image_rgb (ndarray): (H, W, 3) uint8 RGB image.
        result (dict): the output of :class:`SeMaskPredictor` for that image.
        metadata (Metadata): from :func:`build_metadata`.

    Returns:
        ndarray: (H, W, 3) uint8 RGB drawing by :class:`Visualizer` (ColorMode.IMAGE), the
        random colours drawn from numpy's generator seeded with :data:`COLOR_SEED`.
    """
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    with colors_from(np.random.RandomState(COLOR_SEED)):
        return _IMAGE_DRAWERS[task](visualizer, result).get_image()


class FrameDrawer:
    """:func:`draw_prediction` for the frames of one video, by :class:`VideoVisualizer`."""

    def __init__(self, task: str, metadata: Metadata):
        """
        Args:
            task (str): one of :data:`TASKS`.
            metadata (Metadata): from :func:`build_metadata`.
        """
        self._draw = _FRAME_DRAWERS[task]
        self._visualizer = VideoVisualizer(metadata, ColorMode.IMAGE)
        # One stream for the whole video: each new instance gets the next random colour, not the
        # first one again.
        self._colors = np.random.RandomState(COLOR_SEED)

    def __call__(self, frame_rgb: np.ndarray, result: Dict) -> np.ndarray:
        """
        Args:
            frame_rgb (ndarray): (H, W, 3) uint8 RGB frame, the next of the video.
            result (dict): the output of :class:`SeMaskPredictor` for that frame.

        Returns:
            ndarray: (H, W, 3) uint8 RGB drawing.
        """
        with colors_from(self._colors):
            return self._draw(self._visualizer, frame_rgb, result).get_image()


def _source_index(out_len: int, in_len: int) -> np.ndarray:
    # Nearest neighbour by pixel centres (torch's "nearest-exact"): output i reads input
    # floor((i + 0.5) * in_len / out_len).
    index = ((np.arange(out_len) + 0.5) * in_len / out_len).astype(np.int64)
    return np.minimum(index, in_len - 1)


def prior_labels_to_image(
    labels: np.ndarray, stride: int, resized_size: Tuple[int, int], image_size: Tuple[int, int]
) -> np.ndarray:
    """
    Map a prior label map back onto the original image.

    Cell (i, j) of a stride-s map covers input pixels [i*s, (i+1)*s) x [j*s, (j+1)*s) of the
    padded network input, whose top-left ``resized_size`` block is the resized image. Each
    original pixel is therefore mapped to its nearest resized pixel, then to that pixel's cell;
    cells over the padding are never read.

    Args:
        labels (ndarray): (h, w) labels of one stage.
        stride (int): the stage's stride.
        resized_size (tuple[int, int]): image size after the test-time resize.
        image_size (tuple[int, int]): original (height, width).

    Returns:
        ndarray: (height, width) labels.
    """
    rows = _source_index(image_size[0], resized_size[0]) // stride
    cols = _source_index(image_size[1], resized_size[1]) // stride
    return labels[rows[:, None], cols[None, :]]


def blend_labels(
    image_rgb: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float = PRIOR_ALPHA
) -> np.ndarray:
    """
    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB image.
        labels (ndarray): (H, W) labels indexing `colors`.
        colors (ndarray): (K, 3) RGB palette.
        alpha (float): weight of the palette colour.

    Returns:
        ndarray: (H, W, 3) uint8, round((1 - alpha) * image + alpha * colors[labels]).
    """
    mixed = (1.0 - alpha) * image_rgb.astype(np.float64) + alpha * colors[labels].astype(np.float64)
    return np.round(mixed).astype(np.uint8)


def draw_prior_maps(
    image_rgb: np.ndarray, result: Dict, strides: Dict[str, int], metadata: Metadata
) -> Dict[str, np.ndarray]:
    """
    What the encoder believes at each stage: the argmax of each prior map, coloured with the
    dataset palette and blended over the image at :data:`PRIOR_ALPHA`.

    Args:
        image_rgb (ndarray): (H, W, 3) uint8 RGB image given to the predictor.
        result (dict): the output of :class:`SeMaskPredictor` for that image.
        strides (dict[str, int]): ``SeMaskPredictor.prior_strides``.
        metadata (Metadata): from :func:`build_metadata`.

    Returns:
        dict[str, ndarray]: per stage ("res2".."res5"), an (H, W, 3) uint8 RGB image.
    """
    colors = np.asarray(metadata.stuff_colors, dtype=np.uint8)
    images = {}
    for name, labels in result["priors"].items():
        full = prior_labels_to_image(
            labels, strides[name], result["resized_size"], image_rgb.shape[:2]
        )
        images[stage_of_prior(name)] = blend_labels(image_rgb, full, colors)
    return images
