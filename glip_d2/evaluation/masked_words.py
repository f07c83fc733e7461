"""Masked-word accuracy of GLIPv2's LM head on grounding captions.

Each occurrence of a chosen word in a caption is replaced by ``[MASK]`` (one at a time) and
the model predicts it from the fused token features. On a caption like "a red circle next to
a blue square", the colour of a masked colour word is only known from the image: a model that
reads the text alone is at chance (1/3 for three colours).
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterable, List, Mapping, Sequence

from detectron2.data import DatasetCatalog

logger = logging.getLogger(__name__)

__all__ = ["masked_word_accuracy"]


def masked_word_accuracy(
    model,
    records: Iterable[Mapping],
    mapper,
    word_groups: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 16,
) -> Dict[str, Dict[str, float]]:
    """Accuracy of the LM head on masked words, per word group.

    Args:
        model: a GLIP model with an LM head (``MODEL.GLIPV2.MLM.WEIGHT`` > 0), in eval mode.
        records: dataset records with captions (e.g. ``DatasetCatalog.get(name)``), or a
            dataset name.
        mapper: the test-time mapper (``GroundingDatasetMapper(cfg, is_train=False)``).
        word_groups: ``{group: words}``; every word must be one token of the tokenizer.
        batch_size (int): masked prompts per forward.

    Returns:
        dict: ``{group: {"accuracy": percent, "count": n}}``, plus ``"all"``; a group that
        never occurs gets count 0 and no accuracy.

    Raises:
        ValueError: a word that is not a single token, or no record with a caption.
    """
    if isinstance(records, str):
        records = DatasetCatalog.get(records)
    tokenizer = mapper.tokenizer
    word_ids: Dict[int, str] = {}
    for group, words in word_groups.items():
        for w in words:
            ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))
            if len(ids) != 1:
                raise ValueError(f"masked word '{w}' ({group}) is {len(ids)} tokens; use one")
            word_ids[ids[0]] = group
    mask_id = tokenizer.mask_token_id
    hits = {g: 0 for g in word_groups}
    counts = {g: 0 for g in word_groups}
    pending: List[tuple] = []

    def flush():
        if not pending:
            return
        inputs = [p[0] for p in pending]
        for (_, target, group), (_, logits) in zip(
            pending, model.masked_token_logits(inputs, mask_id)
        ):
            counts[group] += 1
            hits[group] += int(int(logits[0].argmax()) == target)
        pending.clear()

    start, n_captions = time.perf_counter(), 0
    for record in records:
        if "caption" not in record:
            continue
        n_captions += 1
        mapped = mapper(record)
        ids = mapped["input_ids"]
        for pos in range(int(mapped["attention_mask"].sum())):
            group = word_ids.get(int(ids[pos]))
            if group is None:
                continue
            masked = dict(mapped, input_ids=ids.clone())
            masked["input_ids"][pos] = mask_id
            pending.append((masked, int(ids[pos]), group))
            if len(pending) >= batch_size:
                flush()
        if n_captions % 50 == 0:
            logger.info(f"Masked words: {n_captions} captions, {time.perf_counter() - start:.0f}s")
    flush()
    if n_captions == 0:
        raise ValueError("masked-word accuracy needs records with a 'caption'; none was given")
    result = {
        g: {"count": counts[g], **({"accuracy": 100.0 * hits[g] / counts[g]} if counts[g] else {})}
        for g in word_groups
    }
    total = sum(counts.values())
    result["all"] = {"count": total}
    if total:
        result["all"]["accuracy"] = 100.0 * sum(hits.values()) / total
    return result
