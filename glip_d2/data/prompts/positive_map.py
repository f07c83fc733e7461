"""Character spans to token positions: the positive maps of prompts.

Follows ``create_positive_map`` of microsoft/GLIP (MIT licence,
``maskrcnn_benchmark/data/datasets/modulated_coco.py``; reference §9-§10): the first token of a
span ``[start, end)`` is ``char_to_token(start)``, retried at ``start + 1`` and ``start + 2``;
the last is ``char_to_token(end - 1)``, retried at ``end - 2`` and ``end - 3``; a span with no
first or last token is skipped. Token indices count the ``[CLS]`` token as index 0, so the
first word is at index 1. The caption is tokenized once, truncated and padded to ``max_len``
tokens, so a span cut by the truncation gets no tokens (as in official training).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "tokenize_prompt",
    "char_span_to_tokens",
    "span_cuts_token",
    "positive_map_from_encoding",
    "build_positive_map",
    "encode_prompt",
]


def tokenize_prompt(tokenizer, caption: str, max_len: int = 256):
    """Tokenize a caption the way every model input is tokenized.

    Args:
        tokenizer: a Hugging Face *fast* tokenizer (``BertTokenizerFast``).
        caption (str): the prompt text.
        max_len (int): L, the padded and truncated length (``MAX_QUERY_LEN``, 256).

    Returns:
        BatchEncoding: ``input_ids``, ``attention_mask`` and ``offset_mapping`` of length L,
        ``[CLS] ... [SEP]`` then ``[PAD]``; ``char_to_token`` maps characters to token indices.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; character-to-token alignment "
            "needs one (e.g. transformers.BertTokenizerFast)"
        )
    return tokenizer(
        caption,
        padding="max_length",
        truncation=True,
        max_length=max_len,
        return_offsets_mapping=True,
    )


def _char_to_token(encoding, index: int, text_len: int) -> Optional[int]:
    if not 0 <= index < text_len:
        return None
    return encoding.char_to_token(index)


def char_span_to_tokens(encoding, start: int, end: int, text_len: int) -> Optional[Tuple[int, int]]:
    """The token range of one character span, with the official fallbacks.

    Args:
        encoding (BatchEncoding): from :func:`tokenize_prompt`.
        start, end (int): the character span ``[start, end)``.
        text_len (int): the caption's length in characters.

    Returns:
        tuple[int, int] or None: ``(first, last)`` token indices, inclusive, counting ``[CLS]``
        as 0; None when the span has no tokens (empty, whitespace, or cut by truncation).
    """
    if end <= start:
        return None
    first = None
    for i in (start, start + 1, start + 2):
        first = _char_to_token(encoding, i, text_len)
        if first is not None:
            break
    last = None
    for i in (end - 1, end - 2, end - 3):
        last = _char_to_token(encoding, i, text_len)
        if last is not None:
            break
    if first is None or last is None or last < first:
        return None
    return first, last


def span_cuts_token(encoding, start: int, end: int, text_len: int) -> bool:
    """Whether a character span starts or ends inside a token (not on token boundaries).

    Spans that begin or end on whitespace are not flagged (the fallbacks handle them).

    Args:
        encoding (BatchEncoding): from :func:`tokenize_prompt` (with offsets).
        start, end (int): the character span ``[start, end)``.
        text_len (int): the caption's length in characters.

    Returns:
        bool: True if the token covering ``start`` begins before it or the token covering
        ``end - 1`` ends after ``end``; the positive map then covers those whole tokens.
    """
    offsets = encoding["offset_mapping"]
    first = _char_to_token(encoding, start, text_len)
    if first is not None and offsets[first][0] < start:
        return True
    last = _char_to_token(encoding, end - 1, text_len)
    return last is not None and offsets[last][1] > end


def positive_map_from_encoding(
    encoding, text_len: int, spans_per_entry: Sequence[Sequence[Sequence[int]]], max_len: int
) -> torch.Tensor:
    """Token positive map of K entries, each a union of character spans.

    Args:
        encoding (BatchEncoding): from :func:`tokenize_prompt`, of length ``max_len``.
        text_len (int): the caption's length in characters.
        spans_per_entry (Sequence): K entries, each a list of ``[start, end)`` character spans.
        max_len (int): L.

    Returns:
        torch.Tensor: (K, L) bool; row k marks the tokens (``[CLS]`` = index 0) of entry k.
    """
    positive_map = torch.zeros((len(spans_per_entry), max_len), dtype=torch.bool)
    for k, entry in enumerate(spans_per_entry):
        for start, end in entry:
            tokens = char_span_to_tokens(encoding, int(start), int(end), text_len)
            if tokens is not None:
                positive_map[k, tokens[0] : tokens[1] + 1] = True
    return positive_map


def build_positive_map(
    tokenizer, caption: str, spans: Sequence[Sequence[Sequence[int]]], max_len: int = 256
) -> torch.Tensor:
    """Token positive map of a caption's entries (categories or phrases).

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        caption (str): the prompt text.
        spans (Sequence): K entries, each a list of ``[start, end)`` **character** spans.
        max_len (int): L, the padded query length.

    Returns:
        torch.Tensor: (K, L) bool; ``[k, j]`` is True iff token j (``[CLS]`` = 0) belongs to
        entry k. Entries whose spans have no tokens (see :func:`char_span_to_tokens`) are zero.
    """
    encoding = tokenize_prompt(tokenizer, caption, max_len)
    return positive_map_from_encoding(encoding, len(caption), spans, max_len)


def encode_prompt(
    tokenizer,
    caption: str,
    spans_per_entry: Sequence[Sequence[Sequence[int]]],
    max_len: int = 256,
) -> Dict[str, torch.Tensor]:
    """The tokenized prompt fields the model consumes (shared by mapper and predictor).

    Args:
        tokenizer: a Hugging Face fast tokenizer.
        caption (str): the prompt text.
        spans_per_entry (Sequence): K entries, each a list of ``[start, end)`` character spans.
        max_len (int): L (``MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN``).

    Returns:
        dict: ``input_ids`` (L,) int64 (``[CLS] ... [SEP]`` then ``[PAD]``), ``attention_mask``
        (L,) int64, ``positive_map`` (K, L) bool in token indices (``[CLS]`` = 0).
    """
    encoding = tokenize_prompt(tokenizer, caption, max_len)
    return {
        "input_ids": torch.as_tensor(encoding["input_ids"], dtype=torch.int64),
        "attention_mask": torch.as_tensor(encoding["attention_mask"], dtype=torch.int64),
        "positive_map": positive_map_from_encoding(
            encoding, len(caption), spans_per_entry, max_len
        ),
    }


def token_count(tokenizer, text: str) -> int:
    """Number of tokens of ``text`` with ``[CLS]`` and ``[SEP]``, untruncated."""
    return len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])


def entry_token_lengths(tokenizer, texts: Sequence[str]) -> List[int]:
    """WordPiece counts of several texts, without special tokens (one batched call)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return [len(x) for x in ids]
