"""
Exportable semantic-segmentation graphs: one image tensor in, the model's ``sem_seg`` out.

A detectron2 meta-architecture takes a list of dicts and pads a batch on the host; a deployed
graph takes one tensor. :class:`SemSegGraph` reproduces a model's inference for one image with
tensor operations only: channel order, normalisation and padding to the size divisibility
happen inside the graph, with pad amounts computed from the input's size (no branch on it), so
that the height and width stay dynamic when traced by ``torch.export``.
"""

from typing import Dict, Type

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling import SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess

from ..modeling.mask_former_inference import semantic_inference
from ..modeling.meta_arch import SeMaskMaskFormer
from .errors import ExportError

__all__ = ["MaskFormerGraph", "SemSegGraph", "SemanticSegmentorGraph", "build_sem_seg_graph"]


class SemSegGraph(nn.Module):
    """
    ``image`` (3, H, W) float32, RGB, 0-255 -> ``sem_seg`` (K, H, W) float32, equal to the
    wrapped model's ``sem_seg`` for the input ``[{"image": image}]`` (channels flipped first
    for a BGR model; no ``height``/``width``, so no resize). Subclasses implement
    :meth:`predict`.
    """

    def __init__(self, model: nn.Module, *, size_divisibility: int, input_format: str = "RGB"):
        """
        Args:
            model (nn.Module): the meta-architecture, in eval mode; its ``pixel_mean`` and
                ``pixel_std`` (C, 1, 1) buffers normalise the image.
            size_divisibility (int): pad the image at the bottom/right to a multiple of this,
                as the model's ``ImageList.from_tensors`` does; 0 for no padding.
            input_format (str): the model's channel order, "RGB" or "BGR" (``INPUT.FORMAT``);
                the graph's input is RGB either way.
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ExportError(f"INPUT.FORMAT {input_format!r} cannot be exported; use RGB or BGR")
        self.model = model
        self.size_divisibility = size_divisibility
        self.flip_channels = input_format == "BGR"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image (Tensor): (3, H, W) float32, RGB, 0-255.
        Returns:
            Tensor: (K, H, W) float32 ``sem_seg`` scores.
        """
        height, width = image.shape[-2:]
        if self.flip_channels:
            image = image.flip(0)
        x = (image - self.model.pixel_mean) / self.model.pixel_std
        d = self.size_divisibility
        if d > 0:
            # ceil(size / d) * d - size, as ImageList.from_tensors; zero padding after the
            # normalisation, as there.
            x = F.pad(
                x, (0, (width + d - 1) // d * d - width, 0, (height + d - 1) // d * d - height)
            )
        return self.predict(x[None], height, width)

    def predict(self, images: torch.Tensor, height, width) -> torch.Tensor:
        """
        Args:
            images (Tensor): (1, C, Hp, Wp) normalised, padded image.
            height, width (int or SymInt): the image size before padding.
        Returns:
            Tensor: (K, height, width) scores.
        """
        raise NotImplementedError


class SemanticSegmentorGraph(SemSegGraph):
    """detectron2's :class:`SemanticSegmentor` (SeMask-FPN): head logits, cropped and resized."""

    def predict(self, images: torch.Tensor, height, width) -> torch.Tensor:
        logits, _ = self.model.sem_seg_head(self.model.backbone(images))
        return sem_seg_postprocess(logits[0], (height, width), height, width)


class MaskFormerGraph(SemSegGraph):
    """
    :class:`SeMaskMaskFormer` (Mask2Former and MaskFormer heads): mask logits resized to the
    padded size and cropped, then the semantic inference of the queries.
    """

    def predict(self, images: torch.Tensor, height, width) -> torch.Tensor:
        outputs = self.model.sem_seg_head(self.model.backbone(images))
        masks = F.interpolate(
            outputs["pred_masks"], size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return semantic_inference(outputs["pred_logits"][0], masks[0, :, :height, :width])


def _semantic_segmentor_graph(model: SemanticSegmentor, input_format: str) -> SemSegGraph:
    if model.backbone.padding_constraints.get("square_size", 0):
        raise ExportError(
            f"{type(model.backbone).__name__} pads images to a square (padding_constraints), "
            "which the exported graph does not do"
        )
    return SemanticSegmentorGraph(
        model, size_divisibility=model.backbone.size_divisibility, input_format=input_format
    )


def _mask_former_graph(model: SeMaskMaskFormer, input_format: str) -> SemSegGraph:
    return MaskFormerGraph(
        model, size_divisibility=model.size_divisibility, input_format=input_format
    )


# Meta-architecture class -> builder of its graph; subclasses use their closest base's entry.
SEM_SEG_GRAPH_BUILDERS: Dict[Type[nn.Module], object] = {
    SemanticSegmentor: _semantic_segmentor_graph,
    SeMaskMaskFormer: _mask_former_graph,
}


def build_sem_seg_graph(model: nn.Module, input_format: str = "RGB") -> SemSegGraph:
    """
    Args:
        model (nn.Module): a built meta-architecture (``build_model``), in eval mode.
        input_format (str): ``INPUT.FORMAT`` of its config.
    Returns:
        SemSegGraph: the exportable graph of `model`, in eval mode.
    """
    for cls in type(model).__mro__:
        if cls in SEM_SEG_GRAPH_BUILDERS:
            return SEM_SEG_GRAPH_BUILDERS[cls](model, input_format).eval()
    names = sorted(c.__name__ for c in SEM_SEG_GRAPH_BUILDERS)
    raise ExportError(
        f"MODEL.META_ARCHITECTURE {type(model).__name__} cannot be exported; exportable: "
        f"{', '.join(names)}"
    )
