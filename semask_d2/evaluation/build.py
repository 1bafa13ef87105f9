"""
Evaluator selection by the ``evaluator_type`` metadata of a dataset.

"sem_seg" uses :class:`SeMaskSemSegEvaluator`: detectron2's ``SemSegEvaluator`` with labels
checked as in training, compact logs and a JSON results file. "cityscapes_sem_seg" also uses
it, on the trainId labels the loader reads (the class IoU is defined as in the official script),
unless TEST.OFFICIAL_CITYSCAPES_EVAL asks for detectron2's ``CityscapesSemSegEvaluator``, which
re-scores labelIds with cityscapesscripts and is checked for here so that it fails early and
clearly.

Panoptic datasets get the evaluators Mask2Former's ``train_net.py`` builds for them, chosen by
MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON (see :data:`PANOPTIC_EVALUATORS`): PQ
with detectron2's ``COCOPanopticEvaluator``, mask AP with :class:`InstanceSegEvaluator` (COCO AP)
or detectron2's ``CityscapesInstanceEvaluator`` (Cityscapes AP), mIoU as for semantic datasets.
Instance datasets ("coco", "cityscapes_instance") get the AP evaluator alone. The metadata and
files each evaluator reads are checked here, so that a misregistered dataset fails when the
evaluator is built rather than after inference over the whole set.

Unlike Mask2Former, nothing requires CUDA. The Cityscapes evaluators write their files to one
temporary folder shared by the ranks, so they work on a single machine only, and cityscapesScripts'
instance evaluation also leaves a ``matches.json`` in the working directory.
"""

import glob
import importlib.util
import logging
import os
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
)

from ..data.errors import DatasetError
from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_evaluation import SeMaskSemSegEvaluator

__all__ = ["EVALUATOR_BUILDERS", "PANOPTIC_EVALUATORS", "build_evaluator"]

logger = logging.getLogger(__name__)

Builder = Callable[[CfgNode, str, Optional[str]], Optional[DatasetEvaluator]]


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


def _require_metadata(dataset_name: str, keys: Sequence[str], purpose: str, fix: str) -> None:
    meta = MetadataCatalog.get(dataset_name)
    for key in keys:
        if meta.get(key, None) is None:
            raise DatasetError(
                f"dataset '{dataset_name}': metadata has no '{key}', which {purpose} needs. "
                f"Fix: {fix}"
            )


def _require_path(dataset_name: str, key: str, isdir: bool, fix: str) -> None:
    path = MetadataCatalog.get(dataset_name).get(key)
    if not (os.path.isdir(path) if isdir else os.path.isfile(path)):
        kind = "folder" if isdir else "file"
        raise DatasetError(f"dataset '{dataset_name}': {key} {kind} not found: {path}. Fix: {fix}")


def _panoptic_quality(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str]
) -> DatasetEvaluator:
    keys = (
        "panoptic_json",
        "panoptic_root",
        "thing_dataset_id_to_contiguous_id",
        "stuff_dataset_id_to_contiguous_id",
    )
    off = "or set MODEL.MASK_FORMER.TEST.PANOPTIC_ON False."
    fix = "register the dataset with detectron2's register_coco_panoptic (COCO panoptic format), "
    _require_metadata(dataset_name, keys, "the panoptic evaluation (PQ)", fix + off)
    # Mask2Former's datasets/prepare_*_pan_seg.py and cityscapesScripts' createPanopticImgs.py
    # write both.
    fix = "create the COCO panoptic ground truth (PNG folder and JSON), "
    _require_path(dataset_name, "panoptic_json", False, fix + off)
    _require_path(dataset_name, "panoptic_root", True, fix + off)
    return COCOPanopticEvaluator(dataset_name, output_dir)


def _coco_instances(cfg: CfgNode, dataset_name: str, output_dir: Optional[str]) -> DatasetEvaluator:
    meta = MetadataCatalog.get(dataset_name)
    # Without json_file, COCOEvaluator converts the dataset's instance records to COCO JSON.
    if meta.get("json_file", None) is not None:
        _require_path(
            dataset_name, "json_file", False, "restore the COCO instances JSON of the dataset."
        )
        # detectron2's load_coco_json sets the category id map when the records are loaded
        # (by the test loader, normally first); without it, classes would be taken for ids.
        if meta.get("thing_dataset_id_to_contiguous_id", None) is None:
            DatasetCatalog.get(dataset_name)
    return InstanceSegEvaluator(dataset_name, output_dir=output_dir)


def _panoptic_instances(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str]
) -> DatasetEvaluator:
    # Panoptic records hold no instance annotations: the ground truth must be a COCO JSON.
    fix = (
        "give the COCO instances JSON of the dataset as json_file (instances_json of "
        "register_coco_panoptic), or set MODEL.MASK_FORMER.TEST.INSTANCE_ON False."
    )
    _require_metadata(dataset_name, ("json_file",), "the instance evaluation (mask AP)", fix)
    _require_path(dataset_name, "json_file", False, fix)
    return InstanceSegEvaluator(dataset_name, output_dir=output_dir)


def _cityscapes_instances(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str]
) -> DatasetEvaluator:
    meta = MetadataCatalog.get(dataset_name)
    _require_metadata(
        dataset_name,
        ("thing_classes", "gt_dir"),
        "the Cityscapes instance evaluation",
        "register the dataset with detectron2's Cityscapes loaders.",
    )
    gt_dir = meta.gt_dir
    # cityscapesScripts scores every instanceIds file it finds under gt_dir.
    if not glob.glob(os.path.join(gt_dir, "*", "*_gtFine_instanceIds.png")):
        raise DatasetError(
            f"dataset '{dataset_name}': no */*_gtFine_instanceIds.png under {gt_dir} for the "
            "Cityscapes instance evaluation. Fix: add the original Cityscapes gtFine files."
        )
    if importlib.util.find_spec("cityscapesscripts") is None:
        raise DatasetError(
            f"dataset '{dataset_name}': the Cityscapes instance evaluation needs the "
            "cityscapesscripts package. Fix: pip install cityscapesscripts."
        )
    from cityscapesscripts.helpers.labels import name2label

    # Predictions are written with the Cityscapes label id of their class name.
    unknown = [name for name in meta.thing_classes if name not in name2label]
    if unknown:
        raise DatasetError(
            f"dataset '{dataset_name}': thing_classes {unknown} are not Cityscapes label names. "
            "Fix: use the names of cityscapesscripts' helpers/labels.py."
        )
    return CityscapesInstanceEvaluator(dataset_name)


def _sem_seg_if_labelled(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str]
) -> Optional[DatasetEvaluator]:
    # A panoptic dataset may come without semantic labels (detectron2's register_coco_panoptic
    # reads none); the panoptic and instance metrics are still worth having.
    if not all("sem_seg_file_name" in r for r in DatasetCatalog.get(dataset_name)):
        logger.warning(
            "Dataset '%s' has no semantic labels (sem_seg_file_name): mIoU is not evaluated.",
            dataset_name,
        )
        return None
    _require_metadata(
        dataset_name,
        ("stuff_classes", "ignore_label"),
        "the semantic evaluation (mIoU)",
        "set them in the dataset's metadata, or set MODEL.MASK_FORMER.TEST.SEMANTIC_ON False.",
    )
    return _sem_seg(cfg, dataset_name, output_dir)


# Evaluators of each panoptic evaluator_type, as Mask2Former's train_net.py builds them: pairs of
# (MODEL.MASK_FORMER.TEST flag that turns the evaluator on, builder).
PANOPTIC_EVALUATORS: Dict[str, Tuple[Tuple[str, Builder], ...]] = {
    # Mask2Former builds the ADE20K mIoU evaluator whatever SEMANTIC_ON says, which fails at the
    # first image when it is off (the model then returns no "sem_seg"); here SEMANTIC_ON decides.
    "ade20k_panoptic_seg": (
        ("SEMANTIC_ON", _sem_seg_if_labelled),
        ("PANOPTIC_ON", _panoptic_quality),
        ("INSTANCE_ON", _panoptic_instances),
    ),
    "coco_panoptic_seg": (
        ("PANOPTIC_ON", _panoptic_quality),
        ("INSTANCE_ON", _panoptic_instances),
        ("SEMANTIC_ON", _sem_seg_if_labelled),
    ),
    "cityscapes_panoptic_seg": (
        ("PANOPTIC_ON", _panoptic_quality),
        ("SEMANTIC_ON", _cityscapes_sem_seg),
        ("INSTANCE_ON", _cityscapes_instances),
    ),
}


def _panoptic_dataset(
    parts: Tuple[Tuple[str, Builder], ...],
    cfg: CfgNode,
    dataset_name: str,
    output_dir: Optional[str],
) -> DatasetEvaluator:
    flags = cfg.MODEL.MASK_FORMER.TEST
    evaluators = [build(cfg, dataset_name, output_dir) for flag, build in parts if flags.get(flag)]
    evaluators = [e for e in evaluators if e is not None]
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}': set MODEL.MASK_FORMER.TEST.PANOPTIC_ON, "
            "INSTANCE_ON or SEMANTIC_ON (with semantic labels)"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


# evaluator_type -> builder(cfg, dataset_name, output_dir). Add entries for new dataset types.
EVALUATOR_BUILDERS: Dict[str, Callable[[CfgNode, str, Optional[str]], DatasetEvaluator]] = {
    "sem_seg": _sem_seg,
    "cityscapes_sem_seg": _cityscapes_sem_seg,
    "coco": _coco_instances,
    "cityscapes_instance": _cityscapes_instances,
    **{t: partial(_panoptic_dataset, parts) for t, parts in PANOPTIC_EVALUATORS.items()},
}


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_dir: Optional[str] = None
) -> DatasetEvaluator:
    """
    Build the evaluator for `dataset_name` from its ``evaluator_type`` metadata.

    Args:
        cfg (CfgNode): the config (reads TEST.OFFICIAL_CITYSCAPES_EVAL, TEST.PRINT_PER_CLASS
            and, for panoptic datasets, MODEL.MASK_FORMER.TEST.{PANOPTIC,INSTANCE,SEMANTIC}_ON).
        dataset_name (str): a registered dataset.
        output_dir (str or None): where evaluators write predictions and results.

    Returns:
        DatasetEvaluator: one evaluator, or ``DatasetEvaluators`` when several apply.

    Raises:
        NotImplementedError: for an evaluator type without a builder, or a panoptic dataset with
            no evaluation turned on; ``DefaultTrainer.test`` then skips the dataset with a
            warning, as detectron2 does.
        DatasetError: when the metadata or files an evaluator reads are missing, or the
            official Cityscapes evaluation is asked for but cannot run.
            The semantic evaluators raise it later, while evaluating, for a bad label file.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_BUILDERS:
        raise NotImplementedError(
            f"no evaluator for dataset '{dataset_name}' with evaluator_type {evaluator_type!r}; "
            f"known types: {sorted(EVALUATOR_BUILDERS)}"
        )
    return EVALUATOR_BUILDERS[evaluator_type](cfg, dataset_name, output_dir)
