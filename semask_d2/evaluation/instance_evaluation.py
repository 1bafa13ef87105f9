"""
COCO mask AP for datasets whose thing classes are any subset of the model's classes.

Detectron2's ``COCOEvaluator`` maps a predicted class back to a dataset category through the
inverse of ``thing_dataset_id_to_contiguous_id`` and asserts that the map's values are exactly
0..N-1. A panoptic model predicts over all classes, things and stuff, so on ADE20K panoptic the
thing classes are 100 non-contiguous values of 0..149 and the assertion fails. Mask2Former's
``mask2former/evaluation/instance_evaluation.py`` relaxes it by replacing the whole evaluation
method, which no longer runs on current detectron2; :class:`InstanceSegEvaluator` changes only the
id mapping and leaves the COCO evaluation to detectron2.
"""

import logging
from typing import Dict, List, Optional

from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator

from ..data.errors import DatasetError

__all__ = ["InstanceSegEvaluator"]

logger = logging.getLogger(__name__)

_THING_MAP = "thing_dataset_id_to_contiguous_id"


class InstanceSegEvaluator(COCOEvaluator):
    """
    ``COCOEvaluator`` that maps predicted classes to dataset category ids through any
    ``thing_dataset_id_to_contiguous_id``, contiguous or not.

    A prediction whose class is not a value of the map (a stuff class, which instance inference
    keeps when panoptic inference is off) has no category in the ground truth and is dropped,
    with a warning; COCOeval would ignore it anyway. Without the map, classes are category ids.
    Masks only (``tasks=("segm",)``): Mask2Former predicts all-zero boxes. The official COCO API
    computes the AP (no compiled extension needed).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        """
        Args:
            dataset_name (str): a registered dataset with ``json_file`` (COCO instances JSON)
                metadata, or records in detectron2's instance format, converted to COCO JSON in
                `output_dir`.
            distributed (bool): gather the predictions of all ranks and evaluate on the main one.
            output_dir (str or None): where predictions and COCO results are written.

        Raises:
            DatasetError: ``thing_classes`` does not give one name per category of the
                ground-truth JSON, which the per-category AP needs.
        """
        super().__init__(
            dataset_name,
            tasks=("segm",),
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=False,
        )
        thing_map = self._metadata.get(_THING_MAP, None)
        self._dataset_id_of = None if thing_map is None else {v: k for k, v in thing_map.items()}
        # COCOEvaluator unmaps ids (with its 0..N-1 assertion) when the metadata has the map;
        # it reads only this view from here on, and the mapping is done in _eval_predictions.
        self._metadata = Metadata(
            **{k: v for k, v in self._metadata.as_dict().items() if k != _THING_MAP}
        )
        self._check_class_names()

    def _check_class_names(self) -> None:
        names = self._metadata.get("thing_classes", None)
        num_categories = len(self._coco_api.getCatIds())
        # COCOEvaluator labels the per-category AP with thing_classes, one name per ground-truth
        # category in id order, and asserts so after the whole evaluation; fail before it.
        if names is not None and len(names) > 1 and len(names) != num_categories:
            raise DatasetError(
                f"dataset '{self._metadata.name}': thing_classes has {len(names)} names but "
                f"{self._metadata.json_file} has {num_categories} categories. Fix: set "
                "thing_classes to the names of the JSON's categories, in category id order."
            )

    def _eval_predictions(self, predictions: List[Dict], img_ids=None) -> None:
        if self._dataset_id_of is not None:
            predictions = self._to_dataset_ids(predictions)
        super()._eval_predictions(predictions, img_ids=img_ids)

    def _to_dataset_ids(self, predictions: List[Dict]) -> List[Dict]:
        # Each prediction: {"image_id", "instances": COCO result dicts, contiguous category_id}.
        mapped, dropped = [], 0
        for prediction in predictions:
            results = prediction["instances"]
            kept = [
                {**r, "category_id": self._dataset_id_of[r["category_id"]]}
                for r in results
                if r["category_id"] in self._dataset_id_of
            ]
            dropped += len(results) - len(kept)
            mapped.append({**prediction, "instances": kept})
        if dropped:
            logger.warning(
                "%d predicted instance(s) of classes that are not thing classes are not scored.",
                dropped,
            )
        return mapped
