"""Post-processing of the GLIP head (reference §8): token scores to category detections."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torchvision.ops import batched_nms

from .atss import GLIPBoxCoder


def token_to_category_scores(
    token_probs: torch.Tensor, positive_map: torch.Tensor, agg: str = "MEAN"
) -> torch.Tensor:
    """Aggregate per-token probabilities into per-category scores.

    Args:
        token_probs (Tensor): (N, L) sigmoid of the dot-product logits.
        positive_map (Tensor): (K, L) bool or 0/1, tokens of each prompt entry.
        agg (str): "MEAN" (official) or "MAX" over an entry's tokens.

    Returns:
        Tensor: (N, K); an entry without tokens scores 0.
    """
    pm = positive_map.to(token_probs.dtype)
    if agg == "MEAN":
        return token_probs @ pm.t() / pm.sum(1).clamp(min=1)[None, :]
    if agg == "MAX":
        masked = token_probs[:, None, :] * pm[None, :, :]
        return masked.max(dim=2)[0]
    raise ValueError(f"Unknown score aggregation '{agg}' (MODEL.GLIP_HEAD.SCORE_AGG)")


def multiclass_nms_inclusive(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-label NMS with +1 areas; kept indices in ascending original order.

    A box is suppressed by a higher-scoring box of the same label when their IoU (inclusive
    convention) exceeds ``iou_threshold``. The inclusive IoU of ``[x1, y1, x2, y2]`` equals the
    continuous IoU of ``[x1, y1, x2 + 1, y2 + 1]``, which torchvision computes.

    Args:
        boxes (Tensor): (N, 4) inclusive XYXY.
        scores (Tensor): (N,).
        labels (Tensor): (N,) int.
        iou_threshold (float): e.g. 0.6.

    Returns:
        Tensor: (M,) int64 indices into the inputs, sorted ascending (the official kernel's
        output order, not score order).
    """
    shifted = boxes.clone()
    shifted[:, 2:] += 1
    keep = batched_nms(shifted.float(), scores.float(), labels, iou_threshold)
    return keep.sort()[0]


def postprocess_image(
    logits_per_level: Sequence[torch.Tensor],
    deltas_per_level: Sequence[torch.Tensor],
    centerness_per_level: Sequence[torch.Tensor],
    anchors_per_level: Sequence[torch.Tensor],
    positive_map: torch.Tensor,
    image_size: Tuple[int, int],
    box_coder: GLIPBoxCoder,
    *,
    score_thresh: float,
    pre_nms_top_n: int,
    nms_thresh: float,
    detections_per_img: int,
    score_agg: str = "MEAN",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of one image, in the official ATSS post-processor's order of operations.

    Args:
        logits_per_level: per level (HW_l, L) dot-product logits.
        deltas_per_level: per level (HW_l, 4) box deltas (after the per-level Scale).
        centerness_per_level: per level (HW_l,) centerness logits.
        anchors_per_level: per level (HW_l, 4) inclusive XYXY.
        positive_map (Tensor): (K, L) tokens of each prompt entry.
        image_size: (h, w) of the resized, unpadded image.
        box_coder: the head's coder.

    Returns:
        (boxes, scores, labels): boxes (D, 4) inclusive XYXY in resized-image pixels, scores
        (D,) = sqrt(category score x centerness), labels (D,) prompt-entry index in [0, K).
    """
    h, w = image_size
    all_boxes, all_scores, all_labels = [], [], []
    for logits, deltas, ctr, anchors in zip(
        logits_per_level, deltas_per_level, centerness_per_level, anchors_per_level
    ):
        scores = token_to_category_scores(logits.sigmoid(), positive_map, score_agg)
        candidates = scores > score_thresh  # before the centerness product (reference §8.3)
        k = min(int(candidates.sum()), pre_nms_top_n)
        scores = scores * ctr.sigmoid()[:, None]
        top, flat = scores[candidates].topk(k, sorted=False)
        loc, label = candidates.nonzero(as_tuple=True)
        loc, label = loc[flat], label[flat]
        boxes = box_coder.decode(deltas[loc], anchors[loc])
        boxes = torch.stack(
            (
                boxes[:, 0].clamp(0, w - 1),
                boxes[:, 1].clamp(0, h - 1),
                boxes[:, 2].clamp(0, w - 1),
                boxes[:, 3].clamp(0, h - 1),
            ),
            dim=1,
        )
        all_boxes.append(boxes)
        all_scores.append(top.sqrt())
        all_labels.append(label)
    boxes = torch.cat(all_boxes)
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    keep = multiclass_nms_inclusive(boxes, scores, labels, nms_thresh)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    n = scores.numel()
    if n > detections_per_img > 0:
        # Ties at the cut are all kept, as in the official post-processor.
        kth = scores.float().kthvalue(n - detections_per_img + 1)[0]
        keep = scores >= kth
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, scores, labels
