"""Auto-labelling with a teacher GLIP (pseudo-labels for captions or an ontology)."""

from .core import (
    DEFAULT_LOG_EVERY,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SHARD_SIZE,
    DEFAULT_TOPK,
    IMAGE_EXTENSIONS,
    filter_detections,
    label_captions,
    label_ontology,
    list_images,
    load_caption_records,
    load_ontology,
    write_yolo_labels,
)

__all__ = [
    "DEFAULT_LOG_EVERY",
    "DEFAULT_NMS_IOU",
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_TOPK",
    "IMAGE_EXTENSIONS",
    "filter_detections",
    "label_captions",
    "label_ontology",
    "list_images",
    "load_caption_records",
    "load_ontology",
    "write_yolo_labels",
]
