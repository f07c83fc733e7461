"""How far two detection lists of the same image are apart (e.g. fp16/bf16 against fp32).

AP depends on which detections exist, their classes, boxes and score order; this reports
those: the share of the reference detections that the other list keeps (same class, box IoU
at least ``iou``, matched one to one, highest reference score first) and the score
differences of the kept ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from detectron2.structures import Boxes, pairwise_iou

__all__ = ["DetectionDiff", "compare_detections"]


@dataclass
class DetectionDiff:
    """Attributes:
    num_reference (int), num_other (int): detections in each list.
    kept (int): reference detections matched in the other list.
    max_score_diff (float), median_score_diff (float): |score difference| over the kept ones
        (0 when none is kept).
    """

    num_reference: int
    num_other: int
    kept: int
    max_score_diff: float
    median_score_diff: float

    @property
    def kept_fraction(self) -> float:
        """kept / num_reference (1.0 for two empty lists)."""
        return self.kept / self.num_reference if self.num_reference else float(self.num_other == 0)

    def summary(self) -> str:
        return (
            f"kept {self.kept}/{self.num_reference} ({100 * self.kept_fraction:.1f}%), "
            f"|d score| median {self.median_score_diff:.1e} max {self.max_score_diff:.1e}"
        )


def compare_detections(
    ref_boxes: Sequence,
    ref_scores: Sequence,
    ref_classes: Sequence,
    boxes: Sequence,
    scores: Sequence,
    classes: Sequence,
    iou: float = 0.9,
) -> DetectionDiff:
    """Match ``boxes`` to the reference ones (XYXY, any sequence or tensor) greedily.

    Args:
        ref_boxes, ref_scores, ref_classes: the reference detections (N, 4), (N,), (N,).
        boxes, scores, classes: the other detections (M, 4), (M,), (M,).
        iou (float): minimum box IoU of a match (same class required).

    Returns:
        DetectionDiff.
    """
    rb = torch.as_tensor(ref_boxes, dtype=torch.float64).reshape(-1, 4)
    rs = torch.as_tensor(ref_scores, dtype=torch.float64).reshape(-1)
    rc = torch.as_tensor(ref_classes).reshape(-1)
    ob = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    os_ = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    oc = torch.as_tensor(classes).reshape(-1)
    for name, (b, s, c) in {"reference": (rb, rs, rc), "other": (ob, os_, oc)}.items():
        if not len(b) == len(s) == len(c):
            raise ValueError(
                f"{name} detections: {len(b)} boxes, {len(s)} scores, {len(c)} classes"
            )
    diffs = []
    if len(rb) and len(ob):
        overlap = pairwise_iou(Boxes(rb), Boxes(ob))
        overlap[rc[:, None] != oc[None, :]] = -1.0
        taken = torch.zeros(len(ob), dtype=torch.bool)
        for i in torch.argsort(rs, descending=True, stable=True).tolist():
            row = overlap[i].masked_fill(taken, -1.0)
            j = int(row.argmax())
            if row[j] >= iou:
                taken[j] = True
                diffs.append(abs(float(rs[i] - os_[j])))
    diff = torch.tensor(diffs, dtype=torch.float64)
    return DetectionDiff(
        num_reference=len(rb),
        num_other=len(ob),
        kept=len(diffs),
        max_score_diff=float(diff.max()) if len(diffs) else 0.0,
        median_score_diff=float(diff.median()) if len(diffs) else 0.0,
    )
