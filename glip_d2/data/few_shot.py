"""Seeded k-shot subsets of detection datasets (GLIP few-shot transfer, reference §12)."""

from __future__ import annotations

import random
from typing import Dict, List, Sequence


def sample_few_shot(records: Sequence[Dict], shots: int, seed: int = 0) -> List[Dict]:
    """Pick images so that every category appears in (at least) ``shots`` images.

    Images are visited in an order shuffled by ``seed``; an image is kept when one of its
    categories still needs images, and then counts once for every category it contains (the
    official few-shot rule, which counts images per category rather than boxes). The same
    records, seed and ``shots`` always give the same subset.

    Args:
        records: Detectron2 dataset dicts with ``annotations`` (``category_id``).
        shots (int): images per category, e.g. 1, 3, 5 or 10.
        seed (int): shuffle seed.

    Returns:
        list[dict]: the kept records, in the shuffled order.
    """
    if shots <= 0:
        raise ValueError(f"shots must be positive, got {shots}")
    order = list(records)
    random.Random(seed).shuffle(order)
    need: Dict[int, int] = {}
    for record in order:
        for ann in record.get("annotations", []):
            need.setdefault(ann["category_id"], shots)
    kept = []
    for record in order:
        cats = {ann["category_id"] for ann in record.get("annotations", [])}
        if any(need[c] > 0 for c in cats):
            kept.append(record)
            for c in cats:
                need[c] -= 1
    return kept
