"""Helpers shared by the evaluators (grounding: Flickr30K entities, referring expressions;
and the VQA and caption evaluators' gathering, id checks and prediction files).

Boxes here are ``XYXY_ABS`` in original-image pixels with Detectron2's continuous convention
(``w = x2 - x1``); IoU has no ``+1`` (as the official Flickr30K and RefExp evaluators).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances, pairwise_iou
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

__all__ = [
    "box_iou",
    "check_known_ids",
    "gather_predictions",
    "predictions_by_record",
    "phrase_gt_boxes",
    "ranked_detections",
    "record_gt_boxes",
    "write_predictions",
]

logger = logging.getLogger(__name__)


def ranked_detections(instances: Instances, limit: Optional[int] = None) -> Dict[str, list]:
    """The detections of one image sorted by descending score (stable for ties).

    Args:
        instances (Instances): ``pred_boxes`` (``XYXY_ABS``), ``scores``, ``pred_classes``.
        limit (int, optional): keep only the best ``limit`` detections.

    Returns:
        dict: ``boxes`` (list of ``[x1, y1, x2, y2]``), ``scores`` (list[float]) and ``labels``
        (list[int], the prompt row / phrase index of each box).
    """
    instances = instances.to("cpu")
    scores = instances.scores.detach().numpy()
    order = np.argsort(-scores, kind="stable")
    if limit is not None:
        order = order[:limit]
    order_t = torch.as_tensor(order, dtype=torch.long)
    return {
        "boxes": instances.pred_boxes.tensor.detach()[order_t].tolist(),
        "scores": scores[order].tolist(),
        "labels": instances.pred_classes.detach()[order_t].tolist(),
    }


def gather_predictions(predictions: List[Any], distributed: bool) -> Optional[List[Any]]:
    """All ranks' predictions on the main process (``None`` elsewhere)."""
    if not distributed:
        return predictions
    comm.synchronize()
    gathered = comm.gather(predictions, dst=0)
    if not comm.is_main_process():
        return None
    return list(itertools.chain(*gathered))


def check_known_ids(ids, known, what: str, dataset_name: str) -> None:
    """Raise ``ValueError`` naming ``dataset_name`` and the first few offenders when a
    predicted id (``what``: "question_ids", "image ids") is not in ``known``."""
    unknown = sorted((i for i in ids if i not in known), key=str)
    if unknown:
        raise ValueError(
            f"Predictions for {len(unknown)} {what} not in dataset '{dataset_name}' "
            f"(first: {unknown[:5]})"
        )


def write_predictions(output_dir: Optional[str], filename: str, rows: List[Any]) -> None:
    """Write ``rows`` as JSON to ``output_dir/filename`` (nothing when ``output_dir`` is empty)."""
    if not output_dir:
        return
    PathManager.mkdirs(output_dir)
    path = os.path.join(output_dir, filename)
    logger.info(f"Saving predictions to {path}")
    with PathManager.open(path, "w") as f:
        json.dump(rows, f)


def predictions_by_record(
    predictions: List[Mapping[str, Any]], dataset_name: str
) -> tuple[Dict[Any, Mapping[str, Any]], Dict[Any, Mapping[str, Any]]]:
    """Index gathered predictions and the dataset's records by ``image_id`` (one record per
    image id, as referring-expression sets have); the first prediction of an id is kept.

    Returns:
        (predictions by image id, records by image id).

    Raises:
        ValueError: a prediction's image id is not in ``dataset_name``.
    """
    by_image: Dict[Any, Mapping[str, Any]] = {}
    for pred in predictions:
        by_image.setdefault(pred["image_id"], pred)
    records = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
    unknown = [i for i in by_image if i not in records]
    if unknown:
        raise ValueError(
            f"Predictions for {len(unknown)} image ids not in dataset '{dataset_name}' "
            f"(first: {unknown[0]})"
        )
    return by_image, records


def _ann_xyxy(ann: Mapping[str, Any]) -> List[float]:
    return list(BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS))


def record_gt_boxes(record: Mapping[str, Any]) -> np.ndarray:
    """All annotation boxes of a dataset record as a ``(G, 4)`` ``XYXY_ABS`` float array."""
    boxes = [_ann_xyxy(ann) for ann in record.get("annotations", [])]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def phrase_gt_boxes(record: Mapping[str, Any]) -> List[np.ndarray]:
    """Ground-truth boxes of each evaluated phrase of a grounding record.

    Phrase ``k`` is ``record["tokens_positive_eval"][k]`` (a list of ``[start, end)``
    **character** spans into the caption). An annotation belongs to phrase ``k`` when one of
    its ``tokens_positive`` character spans equals one of the phrase's spans; this is how
    MDETR's Flickr30K conversion writes them (an annotation lists the spans of every phrase
    that refers to it).

    Args:
        record (dict): a Detectron2 dataset dict with ``tokens_positive_eval`` and
            ``annotations`` (``bbox``, ``bbox_mode``, ``tokens_positive``).

    Returns:
        list[np.ndarray]: per phrase, a ``(G_k, 4)`` ``XYXY_ABS`` array (``G_k`` may be 0).
    """
    phrases = record.get("tokens_positive_eval") or []
    anns = [
        ({tuple(span) for span in ann.get("tokens_positive", [])}, _ann_xyxy(ann))
        for ann in record.get("annotations", [])
    ]
    out = []
    for spans in phrases:
        wanted = {tuple(span) for span in spans}
        boxes = [box for ann_spans, box in anns if ann_spans & wanted]
        out.append(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    return out


def box_iou(boxes1: Sequence, boxes2: Sequence, kind: str = "iou") -> np.ndarray:
    """Pairwise IoU (or GIoU) of two sets of ``XYXY_ABS`` boxes, continuous convention.

    Args:
        boxes1: ``(N, 4)`` boxes.
        boxes2: ``(M, 4)`` boxes.
        kind (str): ``"iou"`` (0 for empty boxes) or ``"giou"`` (generalised IoU).

    Returns:
        np.ndarray: ``(N, M)``.
    """
    a = torch.as_tensor(np.asarray(boxes1, dtype=np.float64).reshape(-1, 4))
    b = torch.as_tensor(np.asarray(boxes2, dtype=np.float64).reshape(-1, 4))
    if kind == "iou":
        return pairwise_iou(Boxes(a), Boxes(b)).numpy()
    if kind == "giou":
        from torchvision.ops import generalized_box_iou

        return generalized_box_iou(a, b).numpy()
    raise ValueError(f"Unknown IoU kind '{kind}'; use 'iou' or 'giou'")
