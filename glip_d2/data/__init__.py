"""Data side of glip_d2: datasets, prompts, the mapper and the official resize.

Importing this package registers the builtin datasets (see ``datasets/README.md``). It never
imports :mod:`glip_d2.modeling`.
"""

from . import prompts
from .datasets import (
    load_coco_grounding_json,
    load_mdetr_grounding_json,
    register_coco_grounding,
    register_datasets_from_cfg,
    register_glip_shapes,
    register_mdetr_grounding,
)
from .mappers import GroundingDatasetMapper, ImageReadError
from .transforms import GLIPResize, build_glip_augmentation, glip_resize_shape

__all__ = [
    "GLIPResize",
    "GroundingDatasetMapper",
    "ImageReadError",
    "build_glip_augmentation",
    "glip_resize_shape",
    "load_coco_grounding_json",
    "load_mdetr_grounding_json",
    "prompts",
    "register_coco_grounding",
    "register_datasets_from_cfg",
    "register_glip_shapes",
    "register_mdetr_grounding",
]
