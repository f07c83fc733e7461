"""Prompt logic, in one place: prompt text, token positive maps, chunking, training sampling.

Used by the dataset mapper (training and evaluation) and by the demo predictor. Character
spans are half-open ``[start, end)`` intervals of the caption; token indices count ``[CLS]``
as 0.
"""

from .chunking import chunk_categories
from .concepts import concept_id, normalize_concept
from .mlm import (
    CORRUPTIBLE,
    FROZEN,
    GREEN,
    IGNORE_LABEL,
    MLM_SCOPES,
    build_greenlight_map,
    greenlight_from_char_spans,
    mask_tokens,
    mlm_generator,
)
from .positive_map import (
    build_positive_map,
    char_span_to_tokens,
    encode_prompt,
    positive_map_from_encoding,
    span_cuts_token,
    tokenize_prompt,
)
from .sampling import BACKGROUND_CLASS_ID, DetectionPromptSampler
from .text import (
    CharSpan,
    Prompt,
    build_detection_prompt,
    build_grounding_prompt,
    check_char_spans,
    clean_name,
)
from .tokenizer import build_tokenizer

__all__ = [
    "BACKGROUND_CLASS_ID",
    "CORRUPTIBLE",
    "CharSpan",
    "DetectionPromptSampler",
    "FROZEN",
    "GREEN",
    "IGNORE_LABEL",
    "MLM_SCOPES",
    "Prompt",
    "build_detection_prompt",
    "build_greenlight_map",
    "build_grounding_prompt",
    "build_positive_map",
    "build_tokenizer",
    "char_span_to_tokens",
    "check_char_spans",
    "chunk_categories",
    "clean_name",
    "concept_id",
    "encode_prompt",
    "greenlight_from_char_spans",
    "mask_tokens",
    "mlm_generator",
    "normalize_concept",
    "positive_map_from_encoding",
    "span_cuts_token",
    "tokenize_prompt",
]
