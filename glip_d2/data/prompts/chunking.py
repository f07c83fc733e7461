"""Split a large vocabulary into detection prompts that each fit the query length.

The official LVIS evaluation cuts the sorted category ids into chunks of
``TEST.CHUNKED_EVALUATION`` (40) and runs the model once per chunk (reference §9). It does not
check that a chunk fits in 256 tokens; here every chunk is checked and split further when it
does not, so no category is silently truncated away.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

from .positive_map import entry_token_lengths, token_count
from .text import Prompt, build_detection_prompt, clean_name

__all__ = ["chunk_categories"]

logger = logging.getLogger(__name__)


def _shorten(name: str, limit: int = 60) -> str:
    """``repr`` of ``name``, cut in the middle when it is longer than ``limit`` characters."""
    if len(name) <= limit:
        return repr(name)
    half = limit // 2
    return repr(name[:half]) + " ... " + repr(name[-half:])


def chunk_categories(
    names: Sequence[str],
    tokenizer,
    chunk_size: int = 0,
    *,
    max_len: int = 256,
    separator: str = ". ",
    prefixes: Optional[Sequence[str]] = None,
    suffixes: Optional[Sequence[str]] = None,
    class_ids: Optional[Sequence[int]] = None,
) -> List[Prompt]:
    """Detection prompts covering every category once, each at most ``max_len`` tokens.

    Categories keep their order. With ``chunk_size > 0`` the list is first cut into groups of
    ``chunk_size`` (the official chunked evaluation); any group, or the whole list when
    ``chunk_size <= 0``, is then packed greedily into prompts whose tokenization, with
    ``[CLS]`` and ``[SEP]``, has at most ``max_len`` tokens.

    Args:
        names (Sequence[str]): K raw category names (cleaned with :func:`clean_name`).
        tokenizer: a Hugging Face fast tokenizer.
        chunk_size (int): categories per prompt (``INPUT.PROMPT.CHUNK_SIZE``); 0 = as many as
            fit.
        max_len (int): the query length L in tokens.
        separator (str): joins the names.
        prefixes, suffixes (Sequence[str], optional): per-category caption-prompt text.
        class_ids (Sequence[int], optional): K class ids; default ``0..K-1``.

    Returns:
        list[Prompt]: the chunks in order; their ``class_ids`` together are ``class_ids``.

    Raises:
        ValueError: ``names`` is empty, or a single category does not fit in ``max_len`` tokens
            (the error names it).
    """
    n = len(names)
    if n == 0:
        raise ValueError("Empty category list: nothing to build prompts from")
    prefixes = list(prefixes) if prefixes is not None else [""] * n
    suffixes = list(suffixes) if suffixes is not None else [""] * n
    ids = list(range(n)) if class_ids is None else [int(c) for c in class_ids]
    if not len(prefixes) == len(suffixes) == len(ids) == n:
        raise ValueError("names, prefixes, suffixes and class_ids must have the same length")

    def prompt_of(idx: List[int]) -> Prompt:
        return build_detection_prompt(
            [names[i] for i in idx],
            separator=separator,
            prefixes=[prefixes[i] for i in idx],
            suffixes=[suffixes[i] for i in idx],
            class_ids=[ids[i] for i in idx],
        )

    def fits(prompt: Prompt) -> bool:
        return token_count(tokenizer, prompt.caption) <= max_len

    groups = [list(range(n))]
    if chunk_size > 0:
        groups = [list(range(i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)]
    # WordPieces per entry with its separator: a cheap bound that skips hopeless whole-group
    # tokenizations (and the tokenizer's warning about sequences longer than the model).
    lengths = entry_token_lengths(
        tokenizer, [p + clean_name(x) + s + separator for p, x, s in zip(prefixes, names, suffixes)]
    )

    chunks: List[Prompt] = []
    for group in groups:
        if sum(lengths[i] for i in group) <= 2 * max_len:
            whole = prompt_of(group)
            if fits(whole):
                chunks.append(whole)
                continue
        if chunk_size > 0:
            logger.warning(
                f"A chunk of {len(group)} categories starting with {_shorten(names[group[0]])} "
                f"needs more than {max_len} tokens; it is split further."
            )
        current: List[int] = []
        current_prompt: Optional[Prompt] = None
        for i in group:
            candidate = prompt_of(current + [i])
            if fits(candidate):
                current, current_prompt = current + [i], candidate
                continue
            single = candidate if not current else prompt_of([i])
            if not fits(single):
                n_tokens = token_count(tokenizer, single.caption)
                raise ValueError(
                    f"Category {_shorten(names[i])} (class id {ids[i]}, {len(names[i])} "
                    f"characters) alone needs {n_tokens} tokens, more than {max_len} "
                    "(MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN): it cannot be put in any prompt; "
                    "shorten its name"
                )
            if current_prompt is not None:
                chunks.append(current_prompt)
            current, current_prompt = [i], single
        if current_prompt is not None:
            chunks.append(current_prompt)
    return chunks
