"""
Shared base of the panoptic and instance training mappers: targets are segments (one mask per
panoptic segment or instance), and the per-pixel labels of SeMask's prior loss come from the
record's semantic label file or are derived from the segments
(:mod:`.semantic_targets`). Also the large-scale jitter of the COCO recipes (augmentations, and
the mixin that the COCO LSJ mappers add to the panoptic and instance mappers).
"""

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances

from ..errors import DatasetError
from ..file_checks import check_size, read_image_checked, read_label_checked
from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper

__all__ = ["LSJDatasetMapperMixin", "MaskFormerSegmentDatasetMapper", "build_lsj_augmentations"]

# The mappers that read a record, by the key that marks its annotation type.
_MAPPERS_BY_KEY = (
    ("pan_seg_file_name", "mask_former_panoptic (or coco_panoptic_lsj)"),
    ("annotations", "mask_former_instance (or coco_instance_lsj)"),
    ("sem_seg_file_name", "mask_former_semantic"),
)


def build_lsj_augmentations(cfg: CfgNode) -> List[T.Augmentation]:
    """
    Large-scale jitter of Mask2Former's COCO recipes: flip (``INPUT.RANDOM_FLIP``: "horizontal",
    "vertical" or "none"), resize by s ~ U(``INPUT.MIN_SCALE``, ``INPUT.MAX_SCALE``) so that the
    image fits in a square of side s * ``INPUT.IMAGE_SIZE`` (aspect ratio kept), then a random
    crop of at most ``IMAGE_SIZE`` x ``IMAGE_SIZE`` (one uniform draw places it).

    Padding to the full square is left to the mapper (image 128, labels the ignore value,
    masks 0), so that the panoptic PNG is never padded with a value that could be a segment id.
    """
    size = cfg.INPUT.IMAGE_SIZE
    augmentations = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    augmentations += [
        T.ResizeScale(cfg.INPUT.MIN_SCALE, cfg.INPUT.MAX_SCALE, size, size),
        T.FixedSizeCrop((size, size), pad=False),
    ]
    return augmentations


class LSJDatasetMapperMixin:
    """
    Mixin, placed before a :class:`MaskFormerSegmentDatasetMapper` subclass, for the COCO
    recipes: large-scale jitter (:func:`build_lsj_augmentations`), padding to
    ``INPUT.IMAGE_SIZE`` squared and ``instances.gt_boxes`` (XYXY, from the masks; zeros for an
    empty mask). With `drop_empty_instances`, targets whose mask the crop removed are dropped.
    """

    drop_empty_instances = False

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_lsj_augmentations(cfg)
        ret["size_divisibility"] = cfg.INPUT.IMAGE_SIZE
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        """As the mapper's ``__call__``, plus ``instances.gt_boxes``."""
        dataset_dict = super().__call__(dataset_dict)
        instances = dataset_dict["instances"]
        if self.drop_empty_instances:
            instances = instances[instances.gt_masks.flatten(1).any(dim=1)]
        instances.gt_boxes = BitMasks(instances.gt_masks).get_bounding_boxes()
        dataset_dict["instances"] = instances
        return dataset_dict


class MaskFormerSegmentDatasetMapper(MaskFormerSemanticDatasetMapper):
    """
    Base of the training mappers whose targets are segments. It takes the semantic mapper's
    arguments; `num_classes` bounds the class ids of segments and of semantic label files.
    Subclasses read their record's segments in ``__call__`` and finish with
    :meth:`_prior_labels` (before augmenting) and :meth:`_training_input` (after).
    """

    def _read_image(self, dataset_dict: Dict) -> np.ndarray:
        """
        Decode the record's image, check it against ``height``/``width`` and fill those in
        when missing (detectron2's panoptic loaders omit them; the training loader's
        aspect-ratio grouping reads them from the mapped dict).

        Returns:
            np.ndarray: (H, W, C) image in `image_format`.
        """
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        check_size(dataset_dict, image)
        dataset_dict.setdefault("height", image.shape[0])
        dataset_dict.setdefault("width", image.shape[1])
        return image

    def _prior_labels(
        self, dataset_dict: Dict, image_size: Tuple[int, int], derive: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """
        Args:
            dataset_dict (dict): the record; its ``sem_seg_file_name`` is used when present.
            image_size (tuple[int, int]): (H, W) of the decoded image.
            derive (callable): () -> (H, W) integer labels, called without a label file.

        Returns:
            np.ndarray: (H, W) labels for ``T.AugInput(sem_seg=...)``: uint8 when the values
            fit, else float64.

        Raises:
            DatasetError: the label file is missing, corrupt, of another size, or holds a
                value that is neither a class nor the ignore value.
        """
        path = dataset_dict.get("sem_seg_file_name")
        if path is None:
            labels = derive()
        else:
            labels = read_label_checked(path, self.num_classes, self.ignore_label)
            check_size({"height": image_size[0], "width": image_size[1]}, labels, path)
        # uint8 labels are resized by PIL, as the image is; other types go through torch,
        # which has no uint16/int64 kernels, and float64 holds every label value exactly.
        if labels.min() >= 0 and labels.max() <= 255:
            return labels.astype(np.uint8)
        return labels.astype(np.float64)

    def _record_error(self, dataset_dict: Dict, missing: str, registration: str) -> DatasetError:
        """The error for a record of another annotation type, naming the mapper that reads it."""
        mappers = [name for key, name in _MAPPERS_BY_KEY if key in dataset_dict]
        other = f"set INPUT.DATASET_MAPPER_NAME to {mappers[0]}, or " if mappers else ""
        return DatasetError(
            f"record of {dataset_dict['file_name']} has no {missing}, so {type(self).__name__} "
            f"cannot map it. Fix: {other}register the dataset with {registration}."
        )

    def _check_classes(self, classes: Sequence[int], where: str, fix: str) -> None:
        """Raise :class:`DatasetError` for a class id outside 0..num_classes-1."""
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise DatasetError(
                f"{where} has category_id {bad[0]}, outside the classes 0..{self.num_classes - 1}. "
                f"Fix: {fix}"
            )

    def _training_input(
        self,
        dataset_dict: Dict,
        aug_input: T.AugInput,
        classes: Sequence[int],
        masks: Sequence[np.ndarray],
    ) -> Dict:
        """
        Args:
            dataset_dict (dict): the record (a copy), completed in place.
            aug_input (AugInput): the augmented image (H, W, C) and labels (H, W).
            classes (list[int]): the N target classes.
            masks (list[np.ndarray]): the N target masks (H, W) of the augmented image.

        Returns:
            dict: the record plus ``image`` (C, S, S) tensor (uint8 for "BGR"/"RGB"), ``sem_seg``
            (S, S) int64 tensor and ``instances`` of size (S, S) with ``gt_classes`` (N,) int64
            and ``gt_masks`` (N, S, S) bool; S x S is the padded size (H x W without padding).
        """
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
        height, width = sem_seg.shape
        if self.size_divisibility > 0:
            image, sem_seg = self._pad(image, sem_seg)
        # Zeros beyond (H, W) are the mask padding; N = 0 gives (0, S, S), which the criterion
        # accepts.
        gt_masks = torch.zeros((len(masks), *sem_seg.shape), dtype=torch.bool)
        for target, mask in zip(gt_masks, masks):
            target[:height, :width] = torch.from_numpy(np.asarray(mask, dtype=bool))
        instances = Instances(tuple(sem_seg.shape))
        instances.gt_classes = torch.tensor(list(classes), dtype=torch.int64)
        instances.gt_masks = gt_masks
        dataset_dict["image"] = image
        dataset_dict["sem_seg"] = sem_seg
        dataset_dict["instances"] = instances
        return dataset_dict
