"""Evaluators of GLIP's benchmarks and the ``evaluator_type`` -> evaluator table."""

from .build import EVALUATOR_TABLE, build_evaluator
from .captioning import CaptionEvaluator
from .flickr_evaluation import FlickrEvaluator
from .lvis_evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from .referring_segmentation import PhraseCutEvaluator, RefExpSegmentationEvaluator
from .refexp_evaluation import RefExpEvaluator
from .vqa import VQAEvaluator

__all__ = [
    "CaptionEvaluator",
    "EVALUATOR_TABLE",
    "FlickrEvaluator",
    "LVISFixedAPEvaluator",
    "LVISStandardEvaluator",
    "PhraseCutEvaluator",
    "RefExpEvaluator",
    "RefExpSegmentationEvaluator",
    "VQAEvaluator",
    "build_evaluator",
]
