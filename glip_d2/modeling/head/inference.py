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


class GLIPPostProcessor:
    """The official test-time post-processing (reference §8) with its settings, for one image
    of a head pass at a time.

    Args:
        box_coder (GLIPBoxCoder): decodes the deltas.
        score_thresh (float): on the entry score before centerness (``ATSS.INFERENCE_TH``).
        pre_nms_top_n (int): candidates per level.
        nms_thresh (float): per-entry NMS IoU.
        detections_per_img (int): final cap.
        score_agg (str): token-to-entry score aggregation, ``"MEAN"`` or ``"MAX"``.
    """

    def __init__(
        self,
        box_coder: GLIPBoxCoder,
        *,
        score_thresh: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        score_agg: str = "MEAN",
    ):
        self.box_coder = box_coder
        self.score_thresh = score_thresh
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.score_agg = score_agg

    @classmethod
    def from_config(cls, cfg, box_coder: GLIPBoxCoder) -> GLIPPostProcessor:
        atss = cfg.MODEL.ATSS
        return cls(
            box_coder,
            score_thresh=atss.INFERENCE_TH,
            pre_nms_top_n=atss.PRE_NMS_TOP_N,
            nms_thresh=atss.NMS_TH,
            detections_per_img=atss.DETECTIONS_PER_IMG,
            score_agg=cfg.MODEL.GLIP_HEAD.SCORE_AGG,
        )

    def __call__(
        self,
        logits: Sequence[torch.Tensor],
        deltas: Sequence[torch.Tensor],
        centerness: Sequence[torch.Tensor],
        anchors: Sequence[torch.Tensor],
        index: int,
        positive_map: torch.Tensor,
        image_size: Tuple[int, int],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detections of image ``index`` of a head pass: inclusive boxes in resized-image
        pixels, scores and prompt-entry indices (see :func:`postprocess_image`).

        Args:
            logits, deltas, centerness: the head's per-level outputs for the whole batch.
            anchors: per level (A_l, 4).
            positive_map (Tensor): (K, L') tokens of each prompt entry, L' <= L.
        """
        return postprocess_image(
            [lg[index] for lg in logits],
            [d[index].permute(1, 2, 0).reshape(-1, 4) for d in deltas],
            [c[index].reshape(-1) for c in centerness],
            anchors,
            positive_map.to(logits[0].device),
            image_size,
            self.box_coder,
            score_thresh=self.score_thresh,
            pre_nms_top_n=self.pre_nms_top_n,
            nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img,
            score_agg=self.score_agg,
        )
