"""
Training mapper of semantic-segmentation datasets for SemanticSegmentor and MaskFormer models
(the behaviour of Mask2Former's ``mask_former_semantic`` mapper, with checked inputs).
"""

import copy
import logging
from typing import Callable, Dict, List

import numpy as np
import torch
from torch.nn import functional as F

from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.projects.point_rend import ColorAugSSDTransform
from detectron2.structures import Instances

from ..errors import DatasetError
from ..file_checks import check_size, read_image_checked, read_label_checked
from .registration import register_training_mapper

__all__ = ["MaskFormerSemanticDatasetMapper", "build_shortest_edge_augmentations"]

logger = logging.getLogger(__name__)


def build_shortest_edge_augmentations(
    cfg: CfgNode, crop: Callable[[], T.Augmentation]
) -> List[T.Augmentation]:
    """
    Training augmentations of the MaskFormer recipes: resize the shortest edge
    (``INPUT.MIN_SIZE_TRAIN``, ``MAX_SIZE_TRAIN``, ``MIN_SIZE_TRAIN_SAMPLING``), crop when
    ``INPUT.CROP.ENABLED``, SSD colour jitter when ``INPUT.COLOR_AUG_SSD``, horizontal flip.

    Args:
        cfg (CfgNode): the config.
        crop (callable): () -> the crop augmentation, called only when cropping is enabled.

    Returns:
        list[Augmentation]: in the order they apply.
    """
    augmentations = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN,
            cfg.INPUT.MAX_SIZE_TRAIN,
            cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.append(crop())
    if cfg.INPUT.COLOR_AUG_SSD:
        augmentations.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
    augmentations.append(T.RandomFlip())
    return augmentations


@register_training_mapper("mask_former_semantic")
class MaskFormerSemanticDatasetMapper:
    """
    Map a detectron2 semantic-segmentation record to a training input:

    1. read the image in the configured format and the label without converting it to 8 bits
       (16-bit ADE20K-full labels keep their values); check label values and sizes;
    2. resize the shortest edge, crop with a cap on the area of one category, optionally jitter
       colours (SSD), flip;
    3. pad image (value 128, before normalisation) and label (ignore value) to exactly
       `size_divisibility` x `size_divisibility`;
    4. build one binary mask per class present, for mask-classification models.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: int,
        ignore_label: int,
        size_divisibility: int,
    ):
        """
        Args:
            is_train (bool): must be True; inference uses :class:`SemanticTestDatasetMapper`.
            augmentations (list[Augmentation]): applied in order to image and label.
            image_format (str): detectron2 image format, e.g. "BGR".
            num_classes (int): K; label values must be in [0, K) or `ignore_label`.
            ignore_label (int): the dataset's ignore value, also used to pad labels.
            size_divisibility (int): square side (pixels) to pad to; <= 0: no padding.
        """
        if not is_train:
            raise ValueError(
                "MaskFormerSemanticDatasetMapper is for training; use build_dataset_mapper(cfg, "
                "is_train=False) for inference"
            )
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.size_divisibility = size_divisibility
        logger.info("Training augmentations: %s", augmentations)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        for name in cfg.DATASETS.TRAIN[1:]:
            other = MetadataCatalog.get(name)
            if (other.stuff_classes, other.ignore_label) != (meta.stuff_classes, meta.ignore_label):
                raise ValueError(
                    f"training sets {cfg.DATASETS.TRAIN[0]} and {name} differ in stuff_classes or "
                    "ignore_label; one mapper needs the same label encoding for all of them"
                )
        augmentations = build_shortest_edge_augmentations(
            cfg,
            lambda: T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                # Official code passes MODEL.SEM_SEG_HEAD.IGNORE_VALUE (255), which is a
                # real class of ADE20K-full; the dataset's own ignore value is meant.
                meta.ignore_label,
            ),
        )
        return {
            "is_train": is_train,
            "augmentations": augmentations,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": len(meta.stuff_classes),
            "ignore_label": meta.ignore_label,
            "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict (dict): detectron2 record with ``file_name`` and ``sem_seg_file_name``.

        Returns:
            dict: the record plus
            ``image``: (C, H, W) tensor (uint8 for "BGR"/"RGB"; the model normalises it);
            ``sem_seg``: (H, W) int64 tensor of class ids and the ignore value;
            ``instances``: :class:`Instances` of size (H, W) with ``gt_classes`` (N,) int64, the
            classes present in ascending order, and ``gt_masks`` (N, H, W) bool.

        Raises:
            DatasetError: a file is missing or corrupt, sizes differ, or a label value is
                neither a class nor the ignore value.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image_path = dataset_dict["file_name"]
        label_path = dataset_dict.get("sem_seg_file_name")
        if label_path is None:
            raise DatasetError(
                f"record of {image_path} has no sem_seg_file_name. Fix: register the dataset "
                "with its labels (register_sem_seg_dataset)."
            )
        image = read_image_checked(image_path, self.image_format)
        check_size(dataset_dict, image)
        label = read_label_checked(label_path, self.num_classes, self.ignore_label)
        check_size({"height": image.shape[0], "width": image.shape[1]}, label, label_path)
        if label.dtype != np.uint8:
            # Transforms resize non-uint8 arrays with torch, which has no uint16/uint32
            # kernels; float64 holds every 16-bit value exactly.
            label = label.astype(np.float64)

        aug_input = T.AugInput(image, sem_seg=label)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        if self.size_divisibility > 0:
            image, sem_seg = self._pad(image, sem_seg)

        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = self._instances(sem_seg)
        return dataset_dict

    def _pad(self, image: torch.Tensor, sem_seg: torch.Tensor):
        height, width = sem_seg.shape
        size = self.size_divisibility
        if height > size or width > size:
            # F.pad with a negative amount would silently crop.
            raise ValueError(
                f"augmented image is {width}x{height}, larger than INPUT.SIZE_DIVISIBILITY "
                f"{size}. Fix: enable INPUT.CROP with a size <= {size}, or set it to -1."
            )
        padding = [0, size - width, 0, size - height]  # left, right, top, bottom
        # 128 is mid-grey before normalisation, as in the official recipe.
        image = F.pad(image, padding, value=128).contiguous()
        sem_seg = F.pad(sem_seg, padding, value=self.ignore_label).contiguous()
        return image, sem_seg

    def _instances(self, sem_seg: torch.Tensor) -> Instances:
        instances = Instances(tuple(sem_seg.shape))
        classes = torch.unique(sem_seg)
        classes = classes[classes != self.ignore_label]
        instances.gt_classes = classes.to(torch.int64)
        # (N, H, W); N = 0 gives an empty (0, H, W) tensor, which the criterion accepts.
        instances.gt_masks = sem_seg[None] == classes[:, None, None]
        return instances
