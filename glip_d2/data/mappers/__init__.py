"""Dataset mappers: records to model inputs (image, prompt tokens, positive maps, instances)."""

from .grounding_mapper import GroundingDatasetMapper, ImageReadError
from .vl_task_mapper import UNDERSTANDING_TASKS, VLTaskDatasetMapper, load_answer_vocab

__all__ = [
    "GroundingDatasetMapper",
    "ImageReadError",
    "UNDERSTANDING_TASKS",
    "VLTaskDatasetMapper",
    "load_answer_vocab",
]
