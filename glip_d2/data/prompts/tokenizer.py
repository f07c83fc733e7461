"""The tokenizer of the prompts (BERT WordPiece, fast, for character offsets)."""

from __future__ import annotations

import functools

__all__ = ["build_tokenizer"]


@functools.lru_cache(maxsize=8)
def build_tokenizer(name_or_path: str):
    """Load (once per process) the fast BERT tokenizer named by ``INPUT.PROMPT.TOKENIZER``.

    Args:
        name_or_path (str): a Hugging Face model name (``"bert-base-uncased"``, downloaded by
            transformers if not cached), a local folder with ``vocab.txt``/``tokenizer.json``, or
            ``pkg://package/sub/path`` (a folder inside an installed package).

    Returns:
        transformers.BertTokenizerFast: shared between callers; do not modify it.
    """
    from transformers import BertTokenizerFast

    from ...utils.paths import resolve_path

    return BertTokenizerFast.from_pretrained(resolve_path(name_or_path))
