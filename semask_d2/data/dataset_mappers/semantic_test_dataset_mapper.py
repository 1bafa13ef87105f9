"""Inference-time mapper of semantic-segmentation datasets: the image only, checked."""

import copy
from typing import Dict, List

import numpy as np
import torch

from detectron2.config import CfgNode, configurable
from detectron2.data import transforms as T

from ..file_checks import check_size, read_image_checked
from ..transforms import build_test_resize

__all__ = ["SemanticTestDatasetMapper"]


class SemanticTestDatasetMapper:
    """
    Read and resize the image of a dataset dict for inference. Labels are not read: the
    evaluator reads them itself, at the original size given by ``height`` / ``width``, which
    the model's output is resized to.
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str):
        """
        Args:
            augmentations (list[Augmentation]): deterministic test-time augmentations.
            image_format (str): detectron2 image format, e.g. "BGR".
        """
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return {
            "augmentations": [build_test_resize(cfg)],
            "image_format": cfg.INPUT.FORMAT,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        """
        Args:
            dataset_dict (dict): detectron2 record with ``file_name`` and optionally ``height``
                and ``width`` (the size the prediction must have).

        Returns:
            dict: the record without ``sem_seg_file_name``, plus ``image`` (C, H', W') tensor of
            the resized image (uint8 for "BGR"/"RGB"), and ``height`` / ``width``.

        Raises:
            DatasetError: the image is missing, corrupt, or not of the size of its record.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        check_size(dataset_dict, image)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
        dataset_dict["image"] = torch.as_tensor(image)
        dataset_dict.pop("sem_seg_file_name", None)
        return dataset_dict
