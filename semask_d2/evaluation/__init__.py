"""Evaluators chosen by the dataset's ``evaluator_type`` metadata."""

from .build import EVALUATOR_BUILDERS, PANOPTIC_EVALUATORS, build_evaluator
from .instance_evaluation import InstanceSegEvaluator
from .sem_seg_evaluation import SeMaskSemSegEvaluator

__all__ = [
    "EVALUATOR_BUILDERS",
    "InstanceSegEvaluator",
    "PANOPTIC_EVALUATORS",
    "SeMaskSemSegEvaluator",
    "build_evaluator",
]
