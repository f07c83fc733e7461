"""Masked language modelling (GLIPv2 L_mlm) on the data side: greenlight maps and token masking.

Follows ``create_greenlight_map`` (``ConvertCocoPolysToMask``) and ``random_word``
(``maskrcnn_benchmark/modeling/detector/generalized_vl_rcnn.py``) of microsoft/GLIP (MIT
licence; GLIPv2 reference §3.3.2 and §7 items 6-7), vectorised and seeded per sample instead of
drawn from the global ``random`` state.

The **greenlight map** says, per token position (``[CLS]`` = index 0), what masking may do:

* :data:`GREEN` (1): may be masked, and is scored (gets a label);
* :data:`CORRUPTIBLE` (0): may be masked (the input is corrupted), but is never scored;
* :data:`FROZEN` (-1): never masked, never scored (``[PAD]``, or data with MLM off).

The corrupted ids replace ``input_ids`` for the whole forward: the grounding loss of the same
step sees the ``[MASK]``-ed names and phrases, with unchanged box targets (reference §7.6).
"""

from __future__ import annotations

from typing import Iterable, Tuple

import numpy as np
import torch

from .positive_map import char_span_to_tokens
from .text import Prompt

__all__ = [
    "GREEN",
    "CORRUPTIBLE",
    "FROZEN",
    "IGNORE_LABEL",
    "MLM_SCOPES",
    "build_greenlight_map",
    "greenlight_from_char_spans",
    "mask_tokens",
    "mlm_generator",
]

GREEN = 1
CORRUPTIBLE = 0
FROZEN = -1
#: Label of positions that are not scored (``torch.nn.CrossEntropyLoss`` ``ignore_index``).
IGNORE_LABEL = -100

#: ``"greenlight"``: the reference's rule (official ``MLM_LOSS_FOR_ONLY_POSITIVES`` True);
#: ``"all"``: every non-pad token is scored, ``[CLS]``/``[SEP]`` included (official False);
#: ``"none"``: no masking at all on this sample (official ``NO_MASK_FOR_OD`` / ``_GOLD``).
MLM_SCOPES = ("greenlight", "all", "none")
_DATA_KINDS = ("grounding", "detection")

# Keeps the MLM stream apart from any other stream seeded by the same (seed, image id, epoch).
_MLM_STREAM = 0x6D6C6D


def greenlight_from_char_spans(
    encoding, text_len: int, green_spans: Iterable[Tuple[int, int]]
) -> torch.Tensor:
    """Greenlight map of a tokenized caption whose green text is given by character spans.

    Each span gets the tokens the positive map gives it (:func:`char_span_to_tokens`, with the
    official fallbacks), so the green tokens of a span are exactly its positive-map tokens.

    Args:
        encoding (BatchEncoding): from :func:`tokenize_prompt`, padded to L tokens.
        text_len (int): the caption's length in characters.
        green_spans (Iterable[tuple[int, int]]): ``[start, end)`` **character** spans to mark
            green; spans without tokens (e.g. cut by truncation) mark nothing.

    Returns:
        torch.Tensor: (L,) int64 over token indices (``[CLS]`` = 0): 1 on the spans' tokens, -1
        on ``[PAD]`` (``attention_mask`` 0), 0 elsewhere (``[CLS]``, ``[SEP]``, other text).
    """
    attention = torch.as_tensor(encoding["attention_mask"], dtype=torch.int64)
    greenlight = torch.full_like(attention, CORRUPTIBLE)
    for start, end in green_spans:
        tokens = char_span_to_tokens(encoding, int(start), int(end), text_len)
        if tokens is not None:
            greenlight[tokens[0] : tokens[1] + 1] = GREEN
    greenlight[attention == 0] = FROZEN
    return greenlight


def build_greenlight_map(
    encoding,
    prompt: Prompt,
    *,
    data_kind: str,
    positive_class_ids: Iterable[int] = (),
    scope: str = "greenlight",
) -> torch.Tensor:
    """Greenlight map of one sample's prompt, by the reference's rule (§3.3.2).

    * grounding data (captions): the whole caption, span ``(0, len(caption))``, is green;
    * detection data: only the names of **positive** categories (classes with a box in the
      image) are green; negative names, separators, prefixes/suffixes, ``[CLS]`` and ``[SEP]``
      are 0 (corruptible, never scored).

    In both, ``[PAD]`` is -1. ``[CLS]`` and ``[SEP]`` are 0 under ``"greenlight"``, as in the
    official code: they can be selected and corrupted, but are never scored.

    Args:
        encoding (BatchEncoding): ``prompt.caption`` tokenized by :func:`tokenize_prompt`
            (padded to L tokens).
        prompt (Prompt): the sample's prompt (its caption, entries and class ids).
        data_kind (str): ``"grounding"`` or ``"detection"``.
        positive_class_ids (Iterable[int]): detection only, the class ids (as in
            ``prompt.class_ids``) with boxes in the image; their entries are green. The
            ``__background__`` entry (class id -1) is never positive.
        scope (str): one of :data:`MLM_SCOPES`; ``"all"`` ignores the rule and makes every
            non-pad token green (official ``MLM_LOSS_FOR_ONLY_POSITIVES`` False); ``"none"``
            makes the whole map -1.

    Returns:
        torch.Tensor: (L,) int64 in {-1, 0, 1}, over token indices (``[CLS]`` = 0).

    Raises:
        ValueError: unknown ``data_kind`` or ``scope``, or positive class ids given for
            grounding data.
    """
    if scope not in MLM_SCOPES:
        raise ValueError(f"Unknown MLM scope {scope!r}; expected one of {MLM_SCOPES}")
    if data_kind not in _DATA_KINDS:
        raise ValueError(f"Unknown data kind {data_kind!r}; expected one of {_DATA_KINDS}")
    positives = {int(c) for c in positive_class_ids}
    if data_kind == "grounding" and positives:
        raise ValueError(
            f"Prompt {prompt.caption!r}: positive_class_ids {sorted(positives)} given for "
            "grounding data, whose whole caption is green"
        )
    attention = torch.as_tensor(encoding["attention_mask"], dtype=torch.int64)
    if scope == "none":
        return torch.full_like(attention, FROZEN)
    if scope == "all":
        return torch.where(attention == 0, FROZEN, GREEN)
    if data_kind == "grounding":
        spans = [(0, len(prompt.caption))]
    else:
        spans = [
            span
            for entry, class_id in zip(prompt.spans, prompt.class_ids)
            if class_id >= 0 and class_id in positives
            for span in entry
        ]
    return greenlight_from_char_spans(encoding, len(prompt.caption), spans)


def mlm_generator(seed: int, image_id: int, epoch: int) -> np.random.Generator:
    """The random generator of one sample's masking, a function of (seed, image id, epoch) only.

    The same triple gives the same masks whatever the batch composition, worker or process;
    the global ``random`` / numpy / torch states are neither read nor advanced.

    Args:
        seed (int): the run's seed (non-negative).
        image_id (int): the dataset's image id (non-negative).
        epoch (int): the pass over the data (non-negative), so each pass masks differently.

    Returns:
        numpy.random.Generator: a fresh PCG64 generator.

    Raises:
        ValueError: a value is negative or not an integer.
    """
    values = []
    for name, value in (("seed", seed), ("image_id", image_id), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"MLM {name} must be a non-negative integer, got {value!r}")
        values.append(int(value))
    return np.random.default_rng(np.random.SeedSequence(values, spawn_key=(_MLM_STREAM,)))


def mask_tokens(
    input_ids: torch.Tensor,
    greenlight: torch.Tensor,
    *,
    rng: np.random.Generator,
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of token ids, as the official ``random_word`` (reference §3.3.2).

    Every position whose greenlight is not -1 (so ``[CLS]`` and ``[SEP]`` too) is selected with
    probability ``mask_prob``. A selected token becomes ``[MASK]`` with probability
    ``mask_token_frac``, a uniformly random id of the **whole** vocabulary (special and
    ``[unusedN]`` ids included, as the official code) with probability ``random_token_frac``,
    and stays unchanged otherwise. Selected tokens are corrupted whatever their greenlight;
    only the selected **and** green ones (greenlight 1) get a label.

    Args:
        input_ids (torch.Tensor): (..., L) int64 token ids, e.g. (L,) for one sample.
        greenlight (torch.Tensor): same shape, in {-1, 0, 1}
            (:func:`build_greenlight_map`; ``[PAD]`` must be -1).
        rng (numpy.random.Generator): the sample's generator (:func:`mlm_generator`).
        mask_token_id (int): id of ``[MASK]`` (``tokenizer.mask_token_id``, 103 in BERT).
        vocab_size (int): V; random ids are drawn from ``0..V-1`` (``len(tokenizer)``).
        mask_prob (float): selection probability (0.15).
        mask_token_frac (float): share of selected tokens set to ``[MASK]`` (0.8).
        random_token_frac (float): share of selected tokens set to a random id (0.1).

    Returns:
        tuple[torch.Tensor, torch.Tensor]: ``masked_ids`` (..., L) int64, the corrupted input
        ids (a new tensor), and ``labels`` (..., L) int64: the original id at selected green
        positions, -100 (:data:`IGNORE_LABEL`) elsewhere. With no green position every label is
        -100 (the model defines the loss of such a batch as zero).

    Raises:
        ValueError: shapes differ, the greenlight has values outside {-1, 0, 1}, or a
            probability is out of range.
    """
    ids = torch.as_tensor(input_ids)
    light = torch.as_tensor(greenlight)
    if ids.shape != light.shape:
        raise ValueError(
            f"input_ids {tuple(ids.shape)} and greenlight {tuple(light.shape)} differ in shape"
        )
    if not bool(((light == FROZEN) | (light == CORRUPTIBLE) | (light == GREEN)).all()):
        raise ValueError(f"greenlight has values outside {{-1, 0, 1}}: {light.unique().tolist()}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_token_frac < 0 or random_token_frac < 0 or mask_token_frac + random_token_frac > 1:
        raise ValueError(
            f"mask_token_frac {mask_token_frac} and random_token_frac {random_token_frac} must "
            "be non-negative and sum to at most 1"
        )
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")

    shape = tuple(ids.shape)
    # One uniform per position decides both selection and replacement, as ``random_word``
    # (u < p selects; u / p then picks [MASK] / random / kept). The random ids are drawn at
    # every position so the draws do not depend on which tokens were selected.
    u = torch.from_numpy(rng.random(shape))
    random_ids = torch.from_numpy(rng.integers(0, vocab_size, size=shape, dtype=np.int64))
    selected = (u < mask_prob) & (light != FROZEN)
    v = u / mask_prob if mask_prob > 0 else u
    to_mask = selected & (v < mask_token_frac)
    to_random = selected & (v >= mask_token_frac) & (v < mask_token_frac + random_token_frac)

    masked_ids = ids.to(torch.int64).clone()
    masked_ids[to_mask] = int(mask_token_id)
    masked_ids[to_random] = random_ids[to_random]
    labels = torch.full_like(masked_ids, IGNORE_LABEL)
    scored = selected & (light == GREEN)
    labels[scored] = ids.to(torch.int64)[scored]
    return masked_ids, labels
