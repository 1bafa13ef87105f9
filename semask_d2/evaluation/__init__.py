"""Evaluators chosen by the dataset's ``evaluator_type`` metadata."""

from .build import EVALUATOR_BUILDERS, build_evaluator

__all__ = ["EVALUATOR_BUILDERS", "build_evaluator"]
