from .predictor import GLIPPredictor
from .trainer import GLIPTrainer, build_param_groups

__all__ = ["GLIPPredictor", "GLIPTrainer", "build_param_groups"]
