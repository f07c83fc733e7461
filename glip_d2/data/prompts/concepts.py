"""Batch-independent concept keys of prompt entries (GLIPv2 L_inter cross-image positives).

Two prompt entries name the same concept when their normalised texts are equal: "Person" in a
COCO prompt and "person" in an Objects365 prompt, or the phrase "a red ball" in two captions.
The key is a stable hash (the same in every process, run and machine), so keys of different
images, datasets and ranks can be compared after an all-gather (reference §7.4: the official
integer category ids collide between datasets and never match caption phrases).
"""

from __future__ import annotations

import functools
import hashlib
import string

__all__ = ["concept_id", "normalize_concept"]

_STRIP = string.punctuation + string.whitespace


def normalize_concept(text: str) -> str:
    """The comparable form of an entry's text: lowercase, runs of whitespace collapsed to one
    space, punctuation and spaces stripped from both ends (``" Hot  Dog. "`` -> ``"hot dog"``).

    Args:
        text (str): a category name as it appears in the prompt, or a phrase of a caption.

    Returns:
        str: the normalised text (can be empty).
    """
    return " ".join(text.lower().split()).strip(_STRIP)


@functools.lru_cache(maxsize=1 << 16)
def concept_id(text: str) -> int:
    """Stable 62-bit id of the concept an entry's text names (see :func:`normalize_concept`).

    Args:
        text (str): a category name or caption phrase.

    Returns:
        int: in ``[0, 2**62)``, equal for texts with the same normalised form (independent of
        the process, unlike ``hash``); different texts collide with probability ~2**-62.
    """
    digest = hashlib.blake2b(normalize_concept(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2
