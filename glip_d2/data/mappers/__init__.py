"""Dataset mappers: records to model inputs (image, prompt tokens, positive maps, instances)."""

from .grounding_mapper import GroundingDatasetMapper, ImageReadError

__all__ = ["GroundingDatasetMapper", "ImageReadError"]
