"""
Detectron2's ``SemSegEvaluator`` with checked labels, compact logs and results written as JSON.

Three differences from the stock evaluator:

* Ground-truth labels are read with :func:`~semask_d2.data.file_checks.read_label_checked`, as the
  training mapper reads them: a value outside the classes (other than the ignore value) raises
  :class:`~semask_d2.data.DatasetError` instead of silently skewing the mIoU.
* The results dict, which the stock evaluator logs as one line of tens of thousands of characters
  with 150 classes, is not logged; a per-class IoU/ACC table is logged on request instead. The
  summary (mIoU, fwIoU, mACC, pACC) is logged by ``DefaultTrainer.test`` anyway.
* The results are written to ``<output_dir>/sem_seg_results.json``.
"""

import json
import logging
import math
import os
from collections.abc import Mapping
from functools import partial
from typing import Dict, Optional

import numpy as np
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm

from ..data.file_checks import read_label_checked

__all__ = ["RESULTS_FILE", "SeMaskSemSegEvaluator"]

# Name of the results file written in the evaluator's output_dir.
RESULTS_FILE = "sem_seg_results.json"


class _DropResultsDict(logging.Filter):
    """Drops records whose message is a dict: ``SemSegEvaluator.evaluate``'s one-line dump."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(record.msg, Mapping)


logger = logging.getLogger(__name__)
# The evaluator logs through this logger (see SeMaskSemSegEvaluator.__init__); only the base
# class logs dicts here, so the filter removes exactly its dump.
logger.addFilter(_DropResultsDict())


def _read_label(path: str, dtype=int, *, num_classes: int, ignore_label: int) -> np.ndarray:
    # SemSegEvaluator calls its loader as fn(path, dtype=int) and writes into the array.
    return read_label_checked(path, num_classes, ignore_label).astype(dtype)


class SeMaskSemSegEvaluator(SemSegEvaluator):
    """
    ``SemSegEvaluator`` whose labels are checked like training labels, which logs a per-class
    table instead of the results dict, and writes the results as JSON. Metrics are unchanged.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        print_per_class: bool = False,
    ):
        """
        Args:
            dataset_name (str): a registered dataset with ``stuff_classes`` and ``ignore_label``
                metadata.
            distributed (bool): gather the results of all ranks and evaluate on the main one.
            output_dir (str or None): where predictions and results are written.
            print_per_class (bool): log a table of the IoU and ACC of every class.
        """
        meta = MetadataCatalog.get(dataset_name)
        loader = partial(
            _read_label, num_classes=len(meta.stuff_classes), ignore_label=meta.ignore_label
        )
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=loader)
        # Panoptic metadata may map the stuff classes only (Cityscapes); the semantic output
        # covers every class, so its JSON keeps the contiguous ids instead of failing an assert.
        ids = self._contiguous_id_to_dataset_id
        if ids is not None and set(ids) != set(range(self._num_classes)):
            self._contiguous_id_to_dataset_id = None
        self._logger = logger
        self._print_per_class = print_per_class

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        """
        Evaluate as ``SemSegEvaluator.evaluate``; on the process holding the results, also log
        the per-class table if asked and write them to ``<output_dir>/sem_seg_results.json``.

        Returns:
            dict or None: {"sem_seg": {metric: value}}, None on the other ranks of a
            distributed evaluation.
        """
        results = super().evaluate()
        if results is None:
            return results
        if self._print_per_class:
            self._log_per_class(results["sem_seg"])
        # With distributed=False every rank holds results; one writer avoids a race on the file.
        if self._output_dir and comm.is_main_process():
            self._write_results(results)
        return results

    def _log_per_class(self, res: Dict[str, float]) -> None:
        rows = [(name, res[f"IoU-{name}"], res[f"ACC-{name}"]) for name in self._class_names]
        table = tabulate(rows, headers=["class", "IoU", "ACC"], tablefmt="pipe", floatfmt=".3f")
        self._logger.info("Per-class results on %s:\n%s", self._dataset_name, table)

    def _write_results(self, results: Dict[str, Dict[str, float]]) -> None:
        # NaN (e.g. the IoU of a class absent from the ground truth) is not JSON; null is.
        data = {
            task: {k: None if math.isnan(v) else float(v) for k, v in res.items()}
            for task, res in results.items()
        }
        path = os.path.join(self._output_dir, RESULTS_FILE)
        # Written next to the target, then renamed: readers never see a partial file.
        tmp_path = path + ".tmp"
        with open(tmp_path, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp_path, path)
        self._logger.info("Semantic segmentation results written to %s", path)
