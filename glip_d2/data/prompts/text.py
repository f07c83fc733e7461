"""Prompt text: category-name cleaning, detection prompts and grounding captions.

Follows the query construction of microsoft/GLIP (MIT licence),
``maskrcnn_benchmark/engine/inference.py`` ``create_queries_and_maps`` and
``data/datasets/od_to_grounding.py`` (reference §9-§10). All spans here count **characters** of
the caption, as half-open intervals ``[start, end)``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.utils.logger import log_first_n

from .positive_map import build_positive_map, encode_prompt

__all__ = [
    "CharSpan",
    "Prompt",
    "clean_name",
    "build_detection_prompt",
    "build_grounding_prompt",
    "check_char_spans",
]

#: ``(start, end)``: a half-open character interval of a caption.
CharSpan = Tuple[int, int]

# The official pattern is greedy: "a (b) c (d)" loses everything from the first "(" to the last ")".
_PARENTHESES = re.compile(r"\(.*\)")


def clean_name(name: str) -> str:
    """Clean a category name as the official prompt builder does.

    Deletes ``(...)`` groups (greedily, like the official regex), turns ``_`` into spaces and
    collapses runs of whitespace. Unlike the official code it also strips the ends
    (``"bow_(weapon)"`` gives ``"bow"``, not ``"bow "``); the token ids are the same because
    BERT's pre-tokenizer splits on whitespace, only the character spans get tighter.

    Args:
        name (str): a raw category name, e.g. ``"hot_dog"`` or ``"bow_(weapon)"``.

    Returns:
        str: the cleaned name; it can be empty (e.g. ``"(x)"``), such a category gets no tokens.
    """
    name = _PARENTHESES.sub("", name)
    name = name.replace("_", " ")
    return " ".join(name.split())


@dataclass(frozen=True)
class Prompt:
    """A caption and its entries (categories of a detection prompt, phrases of a caption).

    Attributes:
        caption (str): the text given to the tokenizer.
        spans (tuple[tuple[CharSpan, ...], ...]): for each of the K entries, its character spans
            ``[start, end)`` in ``caption`` (one span per category; one or more per phrase).
            An empty span (``start == end``) marks an entry without text (no tokens).
        class_ids (tuple[int, ...]): K ids, the contiguous 0-based class id of each entry (for a
            grounding caption, the phrase index). -1 marks the official ``__background__``
            negative, which belongs to no class.
    """

    caption: str
    spans: Tuple[Tuple[CharSpan, ...], ...]
    class_ids: Tuple[int, ...]

    def __post_init__(self):
        if len(self.spans) != len(self.class_ids):
            raise ValueError(
                f"Prompt has {len(self.spans)} entries but {len(self.class_ids)} class ids"
            )

    def __len__(self) -> int:
        return len(self.spans)

    @property
    def phrases(self) -> List[str]:
        """list[str]: the text of each entry (its spans joined by a space)."""
        return [" ".join(self.caption[s:e] for s, e in entry) for entry in self.spans]

    def positive_map(self, tokenizer, max_len: int = 256):
        """Token positive map of the entries, see :func:`build_positive_map`.

        Returns:
            torch.Tensor: (K, max_len) bool; token indices count ``[CLS]`` as 0.
        """
        return build_positive_map(tokenizer, self.caption, self.spans, max_len)

    def encode(self, tokenizer, max_len: int = 256) -> Dict[str, object]:
        """The prompt fields of a model input dict (the mapper contract).

        Returns:
            dict: ``caption`` (str), ``input_ids`` (L,) int64, ``attention_mask`` (L,) int64,
            ``positive_map`` (K, L) bool, ``prompt_class_ids`` (K,) int64, ``phrases``
            (list[str] of length K), with L = ``max_len``.
        """
        out: Dict[str, object] = {"caption": self.caption}
        out.update(encode_prompt(tokenizer, self.caption, self.spans, max_len))
        out["prompt_class_ids"] = torch.as_tensor(self.class_ids, dtype=torch.int64)
        out["phrases"] = self.phrases
        return out


def _per_class(values: Optional[Sequence[str]], n: int, what: str) -> List[str]:
    if values is None:
        return [""] * n
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} categories")
    return list(values)


def build_detection_prompt(
    names: Sequence[str],
    *,
    separator: str = ". ",
    prefixes: Optional[Sequence[str]] = None,
    suffixes: Optional[Sequence[str]] = None,
    class_ids: Optional[Sequence[int]] = None,
    clean: bool = True,
) -> Prompt:
    """Build a detection prompt ``"person. bicycle. ... toothbrush"`` from category names.

    Each name (through :func:`clean_name` if ``clean``) is wrapped in its optional prefix and
    suffix (ODinW caption prompts); the entries are joined with ``separator`` and there is no
    trailing separator. The span of an entry covers the name only, not its prefix or suffix.

    Args:
        names (Sequence[str]): K category names, in prompt order.
        separator (str): joins the entries (``INPUT.PROMPT.SEPARATOR``, officially ``". "``).
        prefixes, suffixes (Sequence[str], optional): K strings put before / after each name.
        class_ids (Sequence[int], optional): K class ids of the entries; default ``0..K-1``.
        clean (bool): apply :func:`clean_name` to the names.

    Returns:
        Prompt: one span per entry, in characters.

    Raises:
        ValueError: ``names`` is empty, or a per-class list has the wrong length.
    """
    n = len(names)
    if n == 0:
        raise ValueError("Empty category list: a detection prompt needs at least one name")
    prefixes = _per_class(prefixes, n, "prefixes")
    suffixes = _per_class(suffixes, n, "suffixes")
    ids = tuple(range(n)) if class_ids is None else tuple(int(c) for c in class_ids)
    if len(ids) != n:
        raise ValueError(f"class_ids has {len(ids)} entries for {n} categories")
    parts: List[str] = []
    length = 0
    spans = []
    for i, raw in enumerate(names):
        name = clean_name(raw) if clean else raw
        if not name.strip():
            log_first_n(
                logging.WARNING,
                f"Category {raw!r} (class id {ids[i]}) has no text after cleaning; "
                "it gets no tokens and cannot be detected.",
                n=1,
                key="message",
            )
        parts.append(prefixes[i])
        length += len(prefixes[i])
        spans.append(((length, length + len(name)),))
        parts.append(name)
        length += len(name)
        parts.append(suffixes[i])
        length += len(suffixes[i])
        if i != n - 1:
            parts.append(separator)
            length += len(separator)
    return Prompt(caption="".join(parts), spans=tuple(spans), class_ids=ids)


def check_char_spans(caption: str, spans: Sequence[Sequence[int]], what: str) -> None:
    """Check that character spans lie inside the caption and are not empty.

    Args:
        caption (str): the caption.
        spans (Sequence[Sequence[int]]): ``[start, end)`` character spans.
        what (str): names the owner in the error, e.g. ``"annotation 12"``.

    Raises:
        ValueError: a span is malformed, empty or reaches outside ``caption``.
    """
    for span in spans:
        if len(span) != 2:
            raise ValueError(f"{what}: span {list(span)} is not a [start, end) pair")
        start, end = int(span[0]), int(span[1])
        if not 0 <= start < end <= len(caption):
            raise ValueError(
                f"{what}: character span [{start}, {end}) is empty or outside the caption "
                f"({len(caption)} characters: {caption!r})"
            )


def build_grounding_prompt(
    caption: str, phrase_spans: Sequence[Sequence[Sequence[int]]], *, what: str = "caption"
) -> Prompt:
    """A prompt from a free caption and the character spans of its phrases.

    Args:
        caption (str): the caption, e.g. ``"a red circle next to a blue square"``.
        phrase_spans (Sequence): K phrases, each a list of ``[start, end)`` character spans
            (MDETR ``tokens_positive`` / ``tokens_positive_eval``).
        what (str): names the caption's owner in error messages (e.g. ``"image 7"``).

    Returns:
        Prompt: entry k is phrase k, with class id k.

    Raises:
        ValueError: the caption is empty or a span lies outside it.
    """
    if not caption or not caption.strip():
        raise ValueError(f"{what}: empty caption; a grounding sample needs text")
    spans = []
    for k, entry in enumerate(phrase_spans):
        check_char_spans(caption, entry, f"{what} phrase {k}")
        spans.append(tuple((int(s), int(e)) for s, e in entry))
    return Prompt(caption=caption, spans=tuple(spans), class_ids=tuple(range(len(spans))))
