"""Flickr30K entities phrase grounding: Recall@1/5/10 and the upper bound (reference §9).

Follows the evaluator of MDETR / microsoft/GLIP (``flickr_eval.py``, after Plummer et al.):
for each sentence and each of its phrases, the detections of that phrase are ranked by score,
a dummy ``[0, 0, 0, 0]`` box is appended, and the phrase counts as recalled at ``k`` when one
of the first ``k`` boxes has IoU >= 0.5 with a ground-truth box of the phrase (``k = -1``, the
upper bound, looks at every box). IoU has no ``+1``. Two ground-truth protocols are reported:

* ``separate`` ("any box"): the phrase's boxes as annotated;
* ``merged``: the union box of the phrase's boxes (Plummer et al.'s protocol).

Recalls are in percent, overall (``R@1``, ``R@5``, ``R@10``, ``UB``) and per phrase type
(``R@1_people``, ...), under ``results["flickr30k_separate"]`` and
``results["flickr30k_merged"]``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..data.datasets.mdetr_grounding import derive_eval_phrases
from .grounding_utils import box_iou, gather_predictions, phrase_gt_boxes, ranked_detections

__all__ = ["FlickrEvaluator", "merge_boxes", "parse_flickr30k_sentences", "phrase_recall_hits"]

logger = logging.getLogger(__name__)

PROTOCOLS = ("separate", "merged")


def merge_boxes(boxes: np.ndarray) -> np.ndarray:
    """The smallest box enclosing all ``(G, 4)`` ``XYXY_ABS`` boxes, as a ``(1, 4)`` array
    (``(0, 4)`` for no boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) <= 1:
        return boxes
    return np.concatenate([boxes[:, :2].min(axis=0), boxes[:, 2:].max(axis=0)])[None]


def phrase_recall_hits(
    ranked_boxes: Sequence,
    gt_boxes: np.ndarray,
    topk: Sequence[int] = (1, 5, 10, -1),
    iou_threshold: float = 0.5,
) -> Dict[int, bool]:
    """Whether one phrase is recalled at each ``k``.

    Args:
        ranked_boxes: ``(N, 4)`` ``XYXY_ABS`` boxes of the phrase, best score first. A dummy
            ``[0, 0, 0, 0]`` box is appended, as in the official evaluator (so ``N = 0`` works).
        gt_boxes (np.ndarray): ``(G, 4)`` ``XYXY_ABS`` ground truth, ``G >= 1``.
        topk: the ``k`` values; ``-1`` means all boxes (the upper bound).
        iou_threshold (float): minimum IoU of a hit.

    Returns:
        dict[int, bool]: ``k -> hit``.
    """
    boxes = np.concatenate(
        [np.asarray(ranked_boxes, dtype=np.float64).reshape(-1, 4), np.zeros((1, 4))]
    )
    best = box_iou(boxes, gt_boxes).max(axis=1)
    return {
        k: bool(best.max() >= iou_threshold if k == -1 else best[:k].max() >= iou_threshold)
        for k in topk
    }


def parse_flickr30k_sentences(text: str) -> List[List[Tuple[Tuple[int, int], List[str]]]]:
    """Phrase spans and types of a Flickr30K entities ``Sentences/<image>.txt`` file.

    A line looks like ``[/EN#18/people A man] with [/EN#20/clothing an orange hat] .``; the
    sentence is its words joined by single spaces (the MDETR caption).

    Args:
        text (str): the file's content.

    Returns:
        list: per sentence (line), a list of ``((start, end), types)``: the phrase's
        ``[start, end)`` **character** span in the sentence and its coarse types.
    """
    sentences = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        words: List[str] = []
        phrases = []
        current: Optional[Tuple[int, List[str], List[str]]] = None  # first word, words, types
        for token in line.split():
            if current is None and token.startswith("[/EN#"):
                current = (len(words), [], token.split("/")[2:])
                continue
            if current is not None and token.endswith("]"):
                token = token[:-1]
                current[1].append(token)
                words.append(token)
                phrases.append(current)
                current = None
                continue
            if current is not None:
                current[1].append(token)
            words.append(token)
        spans = []
        for first, phrase_words, types in phrases:
            start = sum(len(w) for w in words[:first]) + first
            spans.append(((start, start + len(" ".join(phrase_words))), types))
        sentences.append(spans)
    return sentences


class FlickrEvaluator(DatasetEvaluator):
    """Flickr30K entities Recall@k (``evaluator_type`` ``"flickr30k"``; also ``"grounding"``,
    the same recalls on any MDETR-format set).

    Ground truth comes from ``DatasetCatalog.get(dataset_name)`` (the MDETR-format records of
    :func:`glip_d2.data.datasets.mdetr_grounding.load_mdetr_grounding_json`); each record is one
    sentence and needs ``image_id``, ``tokens_positive_eval`` (phrase ``k`` of the prompt = entry
    ``k``) and ``annotations`` with ``bbox``/``bbox_mode``/``tokens_positive`` (see
    :func:`~glip_d2.evaluation.grounding_utils.phrase_gt_boxes`). A record without
    ``tokens_positive_eval`` gets the phrases of
    :func:`~glip_d2.data.datasets.mdetr_grounding.derive_eval_phrases` (the MDETR loader
    already adds them; an INFO line says so). Recalls over zero evaluated phrases are an error,
    never NaN. Phrase types come from a record's ``phrase_types`` (per phrase, a type or a list
    of types) when present, else from the Flickr30K entities ``Sentences`` folder
    (``sentences_dir`` or metadata ``flickr30k_sentences_dir``, read with the records'
    ``original_img_id`` and ``sentence_id``); without either only the overall recalls are
    reported.

    Predictions: ``pred_classes`` is the phrase index ``k``; boxes are ``XYXY_ABS`` in original
    pixels. The ranked detections are written to ``<output_dir>/flickr30k_predictions.json``.

    Note: the official evaluator reads the raw Flickr30K entities boxes. MDETR's json merges
    boxes with IoU >= 0.95 within a sentence, so ``merged`` is exact on MDETR's
    ``final_flickr_mergedGT_*`` json (where both protocols coincide) and may differ marginally
    from it on the ``separateGT`` json.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        topk: Sequence[int] = (1, 5, 10, -1),
        iou_threshold: float = 0.5,
        sentences_dir: Optional[str] = None,
        task_name: str = "flickr30k",
    ):
        """
        Args:
            dataset_name (str): a registered MDETR-format Flickr30K dataset.
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write the ranked predictions.
            topk (Sequence[int]): recall cut-offs; ``-1`` is the upper bound.
            iou_threshold (float): minimum IoU of a hit.
            sentences_dir (str, optional): Flickr30K entities ``Sentences`` folder, for the
                phrase types.
            task_name (str): prefix of the result keys (``<task_name>_separate``) and of the
                predictions file; ``"grounding"`` for other MDETR-format grounding sets.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._topk = tuple(int(k) for k in topk)
        if any(k == 0 or k < -1 for k in self._topk):
            raise ValueError(f"topk values must be positive or -1, got {self._topk}")
        self._iou_threshold = float(iou_threshold)
        self._task_name = task_name
        meta = MetadataCatalog.get(dataset_name)
        self._sentences_dir = sentences_dir or meta.get("flickr30k_sentences_dir", None)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            pred = {"image_id": input["image_id"], **ranked_detections(output["instances"])}
            for key in ("original_img_id", "sentence_id"):
                if key in input:
                    pred[key] = input[key]
            self._predictions.append(pred)

    def _phrase_types(self, record: Mapping[str, Any], cache: Dict[Any, Any]) -> List[List[str]]:
        phrases = record.get("tokens_positive_eval") or []
        if "phrase_types" in record:
            return [[t] if isinstance(t, str) else list(t) for t in record["phrase_types"]]
        if self._sentences_dir is None or "original_img_id" not in record:
            return [[] for _ in phrases]
        image = record["original_img_id"]
        if image not in cache:
            path = os.path.join(self._sentences_dir, f"{image}.txt")
            with PathManager.open(path, "r") as f:
                cache[image] = parse_flickr30k_sentences(f.read())
        sentences = cache[image]
        sentence_id = int(record.get("sentence_id", 0))
        by_span = dict(sentences[sentence_id]) if sentence_id < len(sentences) else {}
        out = []
        for spans in phrases:
            types = [by_span[tuple(s)] for s in spans if tuple(s) in by_span]
            out.append(types[0] if types else [])
        return out

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return None
        if len(predictions) == 0:
            logger.warning("[FlickrEvaluator] Did not receive valid predictions.")
            return {}

        by_image: Dict[Any, Dict[str, Any]] = {}
        for pred in predictions:
            if pred["image_id"] in by_image:
                logger.warning(f"Several predictions for image {pred['image_id']}; using the first")
                continue
            by_image[pred["image_id"]] = pred

        records = {r["image_id"]: r for r in DatasetCatalog.get(self._dataset_name)}
        unknown = [i for i in by_image if i not in records]
        if unknown:
            raise ValueError(
                f"Predictions for {len(unknown)} image ids not in dataset '{self._dataset_name}' "
                f"(first: {unknown[0]})"
            )

        # hits[protocol][k][type] and totals[protocol][type]; "all" counts every phrase.
        hits = {p: {k: defaultdict(int) for k in self._topk} for p in PROTOCOLS}
        totals = {p: defaultdict(int) for p in PROTOCOLS}
        type_cache: Dict[Any, Any] = {}
        missing, no_gt, extra_labels, derived = 0, 0, 0, 0
        for image_id, record in records.items():
            if "tokens_positive_eval" not in record:
                derived += 1
                phrases = derive_eval_phrases(record.get("annotations", []))
                record = {**record, "tokens_positive_eval": phrases}
            gt_per_phrase = phrase_gt_boxes(record)
            if not any(len(g) for g in gt_per_phrase):
                continue
            pred = by_image.get(image_id)
            if pred is None:
                missing += 1
                continue
            types = self._phrase_types(record, type_cache)
            per_phrase: List[List[List[float]]] = [[] for _ in gt_per_phrase]
            for box, label in zip(pred["boxes"], pred["labels"]):
                if 0 <= label < len(per_phrase):
                    per_phrase[label].append(box)
                else:
                    extra_labels += 1
            for k_phrase, gt in enumerate(gt_per_phrase):
                if len(gt) == 0:
                    no_gt += 1
                    continue
                categories = ["all", *types[k_phrase]]
                for protocol in PROTOCOLS:
                    target = gt if protocol == "separate" else merge_boxes(gt)
                    result = phrase_recall_hits(
                        per_phrase[k_phrase], target, self._topk, self._iou_threshold
                    )
                    for cat in categories:
                        totals[protocol][cat] += 1
                        for k, hit in result.items():
                            hits[protocol][k][cat] += int(hit)

        if derived:
            logger.info(
                f"{derived} sentences of '{self._dataset_name}' have no tokens_positive_eval; "
                "their phrases are derived from the annotations' tokens_positive"
            )
        if missing:
            logger.warning(
                f"{missing} sentences of '{self._dataset_name}' have no predictions and are not "
                "evaluated"
            )
        if totals["separate"]["all"] == 0:
            raise ValueError(
                f"Phrase grounding of dataset '{self._dataset_name}': no phrase to evaluate "
                f"({len(records)} sentences, {len(by_image)} with predictions, {missing} "
                f"without, {no_gt} phrases without a ground-truth box). Some sentence needs a "
                "phrase (tokens_positive_eval, or annotations with tokens_positive) with a valid "
                "ground-truth box, and predictions for its image_id."
            )
        if no_gt:
            logger.warning(f"{no_gt} evaluated phrases have no ground-truth box and are skipped")
        if extra_labels:
            logger.warning(f"{extra_labels} detections have a phrase index outside the phrases")

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, f"{self._task_name}_predictions.json")
            logger.info(f"Saving ranked predictions to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(list(by_image.values()), f)

        results = OrderedDict()
        for protocol in PROTOCOLS:
            results[f"{self._task_name}_{protocol}"] = self._report(
                hits[protocol], totals[protocol]
            )
            self._log_table(protocol, hits[protocol], totals[protocol])
        return results

    def _metric_name(self, k: int) -> str:
        return "UB" if k == -1 else f"R@{k}"

    def _report(self, hits, totals) -> Dict[str, float]:
        out: Dict[str, float] = {}
        cats = ["all"] + sorted(c for c in totals if c != "all")
        for cat in cats:
            for k in self._topk:
                name = self._metric_name(k) + ("" if cat == "all" else f"_{cat}")
                out[name] = 100.0 * hits[k][cat] / totals[cat]  # totals > 0: checked above
        return out

    def _log_table(self, protocol: str, hits, totals) -> None:
        cats = ["all"] + sorted(c for c in totals if c != "all")
        rows = [
            [self._metric_name(k)] + [100.0 * hits[k][c] / totals[c] for c in cats]
            for k in self._topk
        ]
        table = tabulate(rows, headers=["Recall (%)"] + cats, floatfmt=".2f", tablefmt="pipe")
        logger.info(
            f"Phrase grounding '{self._dataset_name}', {protocol} GT, {totals['all']} phrases:\n"
            + table
        )
