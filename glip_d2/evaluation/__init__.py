"""Evaluators of GLIP's benchmarks and the ``evaluator_type`` -> evaluator table."""

from .build import EVALUATOR_TABLE, build_evaluator
from .flickr_evaluation import FlickrEvaluator
from .lvis_evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from .refexp_evaluation import RefExpEvaluator

__all__ = [
    "EVALUATOR_TABLE",
    "FlickrEvaluator",
    "LVISFixedAPEvaluator",
    "LVISStandardEvaluator",
    "RefExpEvaluator",
    "build_evaluator",
]
