"""Referring expression comprehension (RefCOCO, RefCOCO+, RefCOCOg): top-k accuracy.

Each record is one expression with its referred box. All detections of the image are ranked by
score (whatever their phrase index); the expression counts as correct at ``k`` when one of the
first ``k`` boxes overlaps a ground-truth box with IoU >= 0.5. ``P@1`` is the usual top-1
accuracy. One registered dataset is one split, so results are per split.

The evaluators of MDETR and microsoft/GLIP (``RefExpEvaluator`` in ``refexp.py``) threshold the
*generalised* IoU instead; ``iou_type="giou"`` reproduces them (GIoU <= IoU, so it can only be
lower).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .grounding_utils import (
    box_iou,
    gather_predictions,
    predictions_by_record,
    ranked_detections,
    record_gt_boxes,
)

__all__ = ["RefExpEvaluator"]

logger = logging.getLogger(__name__)


class RefExpEvaluator(DatasetEvaluator):
    """Top-k accuracy of referring expressions (``evaluator_type`` ``"refcoco"``).

    Ground truth comes from ``DatasetCatalog.get(dataset_name)``: per record, ``image_id`` and
    the ``annotations`` boxes (``bbox``, ``bbox_mode``; MDETR's RefCOCO json has exactly one).
    Predictions are ``XYXY_ABS`` boxes in original pixels. The ranked top boxes are written to
    ``<output_dir>/refexp_predictions.json``.

    Results: ``{"refexp": {"P@1", "P@5", "P@10"}}`` in percent. Zero evaluated expressions
    (no record with both a box and predictions) are an error, never NaN.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        topk: Sequence[int] = (1, 5, 10),
        iou_threshold: float = 0.5,
        iou_type: str = "iou",
    ):
        """
        Args:
            dataset_name (str): a registered referring-expression split.
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write the ranked predictions.
            topk (Sequence[int]): accuracy cut-offs (positive).
            iou_threshold (float): minimum overlap of a correct box.
            iou_type (str): ``"iou"`` or ``"giou"`` (the official code's generalised IoU).
        """
        if iou_type not in ("iou", "giou"):
            raise ValueError(f"iou_type must be 'iou' or 'giou', got '{iou_type}'")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._topk = tuple(int(k) for k in topk)
        if not self._topk or min(self._topk) <= 0:
            raise ValueError(f"topk values must be positive, got {self._topk}")
        self._iou_threshold = float(iou_threshold)
        self._iou_type = iou_type
        self._predictions: List[Dict[str, Any]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        limit = max(self._topk)
        for input, output in zip(inputs, outputs):
            pred = ranked_detections(output["instances"], limit=limit)
            self._predictions.append({"image_id": input["image_id"], **pred})

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return None
        if len(predictions) == 0:
            logger.warning("[RefExpEvaluator] Did not receive valid predictions.")
            return {}
        by_image, records = predictions_by_record(predictions, self._dataset_name)
        correct = {k: 0 for k in self._topk}
        count, missing, no_gt = 0, 0, 0
        for image_id, record in records.items():
            gt = record_gt_boxes(record)
            if len(gt) == 0:
                no_gt += 1
                continue
            pred = by_image.get(image_id)
            if pred is None:
                missing += 1
                continue
            count += 1
            if not pred["boxes"]:
                continue
            best = box_iou(pred["boxes"], gt, kind=self._iou_type).max(axis=1)
            for k in self._topk:
                correct[k] += int(best[:k].max() >= self._iou_threshold)
        if missing:
            logger.warning(
                f"{missing} expressions of '{self._dataset_name}' have no predictions and are not "
                "evaluated"
            )
        if no_gt:
            logger.warning(f"{no_gt} records of '{self._dataset_name}' have no box; skipped")
        if count == 0:
            raise ValueError(
                f"Referring expressions of dataset '{self._dataset_name}': no expression to "
                f"evaluate ({len(records)} records, {no_gt} without a box, {missing} without "
                "predictions); accuracy over zero expressions is undefined"
            )

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "refexp_predictions.json")
            logger.info(f"Saving ranked predictions to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(list(by_image.values()), f)

        metrics = {f"P@{k}": 100.0 * correct[k] / count for k in self._topk}
        logger.info(
            f"Referring expressions '{self._dataset_name}' ({count} expressions, "
            f"{self._iou_type.upper()} >= {self._iou_threshold}):\n" + create_small_table(metrics)
        )
        return OrderedDict(refexp=metrics)
