"""Evaluators chosen by the dataset's ``evaluator_type`` metadata."""

from .build import EVALUATOR_BUILDERS, build_evaluator
from .sem_seg_evaluation import SeMaskSemSegEvaluator

__all__ = ["EVALUATOR_BUILDERS", "SeMaskSemSegEvaluator", "build_evaluator"]
