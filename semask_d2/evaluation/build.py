"""
Evaluator selection by the ``evaluator_type`` metadata of a dataset.

"sem_seg" uses :class:`SeMaskSemSegEvaluator`: detectron2's ``SemSegEvaluator`` with labels
checked as in training, compact logs and a JSON results file. "cityscapes_sem_seg" also uses
it, on the trainId labels the loader reads (the class IoU is defined as in the official script),
unless TEST.OFFICIAL_CITYSCAPES_EVAL asks for detectron2's ``CityscapesSemSegEvaluator``, which
re-scores labelIds with cityscapesscripts and is checked for here so that it fails early and
clearly. Unlike Mask2Former, nothing requires CUDA.
"""

import glob
import importlib.util
import os
from typing import Callable, Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import CityscapesSemSegEvaluator, DatasetEvaluator

from ..data.errors import DatasetError
from .sem_seg_evaluation import SeMaskSemSegEvaluator

__all__ = ["EVALUATOR_BUILDERS", "build_evaluator"]


def _sem_seg(cfg: CfgNode, dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    return SeMaskSemSegEvaluator(
        dataset_name,
        distributed=True,
        output_dir=output_dir,
        print_per_class=cfg.TEST.PRINT_PER_CLASS,
    )


def _cityscapes_sem_seg(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str]
) -> DatasetEvaluator:
    if not cfg.TEST.OFFICIAL_CITYSCAPES_EVAL:
        return _sem_seg(cfg, dataset_name, output_dir)
    gt_dir = MetadataCatalog.get(dataset_name).get("gt_dir", "")
    # The official script scores every labelIds file it finds under gt_dir; none means no score.
    if not glob.glob(os.path.join(gt_dir, "*", "*_gtFine_labelIds.png")):
        raise DatasetError(
            f"dataset '{dataset_name}': no */*_gtFine_labelIds.png under {gt_dir or '(no gt_dir)'}"
            " for TEST.OFFICIAL_CITYSCAPES_EVAL. Fix: add the original Cityscapes gtFine files, "
            "or set TEST.OFFICIAL_CITYSCAPES_EVAL False (same IoU on trainIds)."
        )
    if importlib.util.find_spec("cityscapesscripts") is None:
        raise DatasetError(
            f"dataset '{dataset_name}': TEST.OFFICIAL_CITYSCAPES_EVAL needs the "
            "cityscapesscripts package. Fix: pip install cityscapesscripts, or set "
            "TEST.OFFICIAL_CITYSCAPES_EVAL False."
        )
    return CityscapesSemSegEvaluator(dataset_name)


# evaluator_type -> builder(cfg, dataset_name, output_dir). Add entries for new dataset types.
EVALUATOR_BUILDERS: Dict[str, Callable[[CfgNode, str, Optional[str]], DatasetEvaluator]] = {
    "sem_seg": _sem_seg,
    "cityscapes_sem_seg": _cityscapes_sem_seg,
}


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """
    Build the evaluator for `dataset_name` from its ``evaluator_type`` metadata.

    Args:
        cfg (CfgNode): the config (reads TEST.OFFICIAL_CITYSCAPES_EVAL and TEST.PRINT_PER_CLASS).
        dataset_name (str): a registered dataset.
        output_dir (str or None): where evaluators write predictions and results.

    Returns:
        DatasetEvaluator

    Raises:
        NotImplementedError: for an evaluator type without a builder; ``DefaultTrainer.test``
            then skips the dataset with a warning, as detectron2 does.
        DatasetError: when the official Cityscapes evaluation is asked for but cannot run.
            The semantic evaluators raise it later, while evaluating, for a bad label file.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_BUILDERS:
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}' with evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(EVALUATOR_BUILDERS)}"
        )
    return EVALUATOR_BUILDERS[evaluator_type](cfg, dataset_name, output_dir)
