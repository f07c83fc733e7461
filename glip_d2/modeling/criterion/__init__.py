"""Training losses of GLIP and GLIPv2 as named terms of one criterion."""

from .base import BoxLoss, CriterionInputs, GLIPCriterion, LossTerm, TokenAlignmentLoss
from .build import build_criterion

__all__ = [
    "BoxLoss",
    "CriterionInputs",
    "GLIPCriterion",
    "LossTerm",
    "TokenAlignmentLoss",
    "build_criterion",
]
