from .build import EVALUATOR_TABLE, build_evaluator

__all__ = ["EVALUATOR_TABLE", "build_evaluator"]
