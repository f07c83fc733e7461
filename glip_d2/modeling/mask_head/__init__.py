"""GLIPv2's language-conditioned ROI mask head (GLIPv2 reference §4); importing registers
``VLHourglassMaskHead`` in Detectron2's ``ROI_MASK_HEAD_REGISTRY``."""

from .head import MaskTrainingStep, VLHourglassMaskHead
from .hourglass import Hourglass, HourglassFeatureExtractor, Residual
from .loss import mask_loss, mask_targets, match_rois, polygon_mask_targets
from .pooler import InclusiveROIPooler, assign_levels_inclusive
from .predictor import VLMaskPredictor

__all__ = [
    "MaskTrainingStep",
    "VLHourglassMaskHead",
    "Hourglass",
    "HourglassFeatureExtractor",
    "Residual",
    "mask_loss",
    "mask_targets",
    "match_rois",
    "polygon_mask_targets",
    "InclusiveROIPooler",
    "assign_levels_inclusive",
    "VLMaskPredictor",
]
