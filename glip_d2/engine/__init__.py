from .trainer import GLIPTrainer, build_param_groups

__all__ = ["GLIPTrainer", "build_param_groups"]
