"""GLIP model components; importing registers them with Detectron2."""

from . import backbone, fusion, head, language, mask_head, meta_arch  # noqa: F401
from .meta_arch import GLIP

__all__ = ["GLIP"]
