"""
Training mapper of instance-segmentation datasets for MaskFormer models (the behaviour of
Mask2Former's ``mask_former_instance`` mapper, with checked inputs), which also emits the
per-pixel labels of SeMask's prior loss.
"""

import copy
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_util

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import polygons_to_bitmask

from ..errors import DatasetError
from .mask_former_segment_dataset_mapper import MaskFormerSegmentDatasetMapper
from .mask_former_semantic_dataset_mapper import build_shortest_edge_augmentations
from .registration import register_training_mapper
from .semantic_targets import labels_from_masks

__all__ = ["MaskFormerInstanceDatasetMapper", "annotation_mask"]


def annotation_mask(annotation: Dict, image_size: Tuple[int, int], image_path: str) -> np.ndarray:
    """
    Decode the ``segmentation`` of a detectron2 instance annotation.

    Args:
        annotation (dict): with ``segmentation``: polygons (list of [x0, y0, x1, y1, ...]),
            COCO RLE (dict with ``size`` and ``counts``, compressed or not) or an (H, W) array.
        image_size (tuple[int, int]): (H, W) of the image.
        image_path (str): the image, for messages.

    Returns:
        np.ndarray: (H, W) uint8 mask of 0 and 1 (polygons: the union of their parts).

    Raises:
        DatasetError: no or an unknown segmentation, or a mask of another size.
    """
    segmentation = annotation.get("segmentation")
    height, width = image_size
    if isinstance(segmentation, list):
        polygons = [np.asarray(p, dtype=np.float64).reshape(-1) for p in segmentation]
        return polygons_to_bitmask(polygons, height, width).astype(np.uint8)
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
            segmentation = mask_util.frPyObjects(segmentation, *segmentation["size"])
        mask = mask_util.decode(segmentation)
    elif isinstance(segmentation, np.ndarray):
        mask = segmentation
    else:
        kind = "no" if segmentation is None else f"a {type(segmentation).__name__}"
        raise DatasetError(
            f"an annotation of {image_path} has {kind} segmentation; MaskFormer models need "
            "polygons, COCO RLE or a mask per instance. Fix: add the masks, or drop the "
            "annotation."
        )
    if mask.shape != (height, width):
        raise DatasetError(
            f"an annotation of {image_path} has a {mask.shape[1]}x{mask.shape[0]} mask but the "
            f"image is {width}x{height}. Fix: regenerate the annotations for this image."
        )
    return mask.astype(np.uint8)


@register_training_mapper("mask_former_instance")
class MaskFormerInstanceDatasetMapper(MaskFormerSegmentDatasetMapper):
    """
    Map a detectron2 instance record (``file_name``, ``annotations`` with contiguous
    ``category_id``, ``segmentation`` and ``iscrowd``) to a training input:

    1. read the image and decode every annotation's mask (:func:`annotation_mask`);
    2. take the prior loss's labels from ``sem_seg_file_name``, or derive them from the masks
       (:func:`labels_from_masks`: crowd regions keep their class; uncovered pixels and
       overlaps of different classes are ignored);
    3. augment: resize the shortest edge, plain random crop, optional SSD colour jitter, flip;
    4. pad the image (128), labels (ignore value) and masks (0) to exactly `size_divisibility`;
    5. one target per non-crowd annotation: its class and mask, even when empty.

    Masks are decoded at the image's size and then transformed (nearest), whereas Mask2Former
    transforms polygons before decoding them: cropping polygons needs shapely, which detectron2
    does not install. Only mask borders can differ by a pixel.
    """

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_shortest_edge_augmentations(
                cfg, lambda: T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE)
            ),
            "image_format": cfg.INPUT.FORMAT,
            # Instance metadata has its thing_classes only once the dataset is loaded
            # (detectron2's load_coco_json sets them), which is after the mapper is built.
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "ignore_label": MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", 255),
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict (dict): detectron2 instance record.

        Returns:
            dict: the record (with the image's ``height``/``width``) without ``annotations``,
            plus ``image``, ``sem_seg`` and ``instances``, as
            :meth:`MaskFormerSegmentDatasetMapper._training_input` describes.

        Raises:
            DatasetError: the record has no annotations, a file is missing or corrupt, or an
                annotation has no usable mask or a class outside the model's.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        annotations = self._pop_annotations(dataset_dict)
        image_path = dataset_dict["file_name"]
        image = self._read_image(dataset_dict)
        image_size = image.shape[:2]
        masks = [annotation_mask(a, image_size, image_path) for a in annotations]
        classes = [a["category_id"] for a in annotations]
        self._check_classes(
            classes,
            f"an annotation of {image_path}",
            "register the dataset with contiguous category ids (detectron2's load_coco_json "
            "maps them), or set MODEL.SEM_SEG_HEAD.NUM_CLASSES to the number of classes.",
        )
        sem_seg = self._prior_labels(
            dataset_dict,
            image_size,
            lambda: labels_from_masks(masks, classes, image_size, self.ignore_label),
        )
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        targets = [i for i, a in enumerate(annotations) if not a.get("iscrowd", 0)]
        return self._training_input(
            dataset_dict,
            aug_input,
            [classes[i] for i in targets],
            [transforms.apply_segmentation(masks[i]) for i in targets],
        )

    def _pop_annotations(self, dataset_dict: Dict) -> List[Dict]:
        if "annotations" not in dataset_dict:
            raise self._record_error(
                dataset_dict,
                "annotations",
                "its instances (e.g. detectron2's register_coco_instances)",
            )
        return dataset_dict.pop("annotations")
