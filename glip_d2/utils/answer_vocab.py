"""The VQA answer vocabulary file (``MODEL.VQA.ANSWER_VOCAB``), read by the model and mapper."""

from __future__ import annotations

import json
from typing import List

from .paths import resolve_path

__all__ = ["load_answer_vocab"]


def load_answer_vocab(path: str) -> List[str]:
    """The answers of ``MODEL.VQA.ANSWER_VOCAB``: a json list of normalised answer strings.

    Args:
        path (str): the json file (a local path or ``pkg://``).

    Returns:
        list[str]: answer ``a`` is the label of the VQA head's logit ``a``.

    Raises:
        FileNotFoundError: no such file (the message says how one is made).
        ValueError: the file is not a non-empty json list of strings.
    """
    full = resolve_path(path) if path else ""
    try:
        with open(full) as f:
            answers = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"MODEL.VQA.ANSWER_VOCAB {path!r}: no such file (a json list of answers; "
            "train_net.py writes one from DATASETS.TRAIN when the key is empty)"
        ) from None
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"MODEL.VQA.ANSWER_VOCAB {path!r} is not a non-empty json list of strings")
    return answers
