"""Training targets and loss of the VL mask head (official ``MaskRCNNLossComputation`` with
``vl_version``, GLIPv2 reference §4.2).

Boxes are inclusive XYXY (the GLIP meta-architecture's internal convention, ``w = x2 - x1 + 1``).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, PolygonMasks

from ..head.atss import pairwise_iou_inclusive

__all__ = [
    "match_rois",
    "polygon_mask_targets",
    "mask_targets",
    "mask_loss",
    "positive_rois",
]


def match_rois(gt_boxes: torch.Tensor, rois: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """GT index of each ROI, -1 below ``iou_threshold`` (official ``Matcher(t, t,
    allow_low_quality_matches=False)``: the best GT by IoU, first on ties).

    Args:
        gt_boxes (Tensor): (G, 4) inclusive.
        rois (Tensor): (R, 4) inclusive.

    Returns:
        Tensor: (R,) int64.
    """
    if len(gt_boxes) == 0 or len(rois) == 0:
        return torch.full((len(rois),), -1, dtype=torch.int64, device=rois.device)
    iou = pairwise_iou_inclusive(gt_boxes, rois)
    best, matched = iou.max(dim=0)
    matched = matched.clone()
    matched[best < iou_threshold] = -1
    return matched


def polygon_mask_targets(
    polygons: Sequence[Sequence[np.ndarray]], rois: torch.Tensor, size: int
) -> torch.Tensor:
    """Each polygon set cropped to its ROI, scaled to ``size x size`` and rasterised, in the
    official arithmetic (``SegmentationMask.crop/resize/convert("mask")``): float32
    coordinates minus the ROI's corner, times ``size / max(roi width, 1)`` (width
    ``x2 - x1``, no ``+1``), merged and decoded by pycocotools.

    Args:
        polygons: per ROI, a list of flat ``[x0, y0, x1, y1, ...]`` arrays (image pixels).
        rois (Tensor): (R, 4) the ROI boxes, as the loss uses them.

    Returns:
        Tensor: (R, size, size) float32 0/1.
    """
    out = torch.zeros((len(polygons), size, size), dtype=torch.float32)
    boxes = rois.detach().float().cpu()
    for r, (polys, box) in enumerate(zip(polygons, boxes)):
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        scaled = []
        for p in polys:
            p = torch.as_tensor(np.asarray(p), dtype=torch.float32).clone()
            p[0::2] = p[0::2] - x1
            p[1::2] = p[1::2] - y1
            p[0::2] *= size / w
            p[1::2] *= size / h
            scaled.append(p.numpy().astype(np.float64))
        if not scaled:
            continue
        rle = mask_util.merge(mask_util.frPyObjects(scaled, size, size))
        out[r] = torch.from_numpy(mask_util.decode(rle).astype(np.float32))
    return out


def mask_targets(
    gt_masks: Union[PolygonMasks, BitMasks], matched: torch.Tensor, rois: torch.Tensor, size: int
) -> torch.Tensor:
    """(P, size, size) targets of ROIs matched to ``gt_masks[matched]``: polygons in the
    official arithmetic (:func:`polygon_mask_targets`), bitmasks with Detectron2's
    ``BitMasks.crop_and_resize`` (ROIAlign of the binary mask, thresholded at 0.5)."""
    if isinstance(gt_masks, PolygonMasks):
        polys = [gt_masks.polygons[int(i)] for i in matched]
        return polygon_mask_targets(polys, rois, size).to(rois.device)
    if isinstance(gt_masks, BitMasks):
        # crop_and_resize takes continuous boxes: the inclusive ROI's far edge is x2 + 1.
        boxes = rois.detach().clone().float()
        boxes[:, 2:] += 1
        picked = gt_masks[matched.to(gt_masks.tensor.device)]
        return picked.crop_and_resize(boxes.to(picked.device), size).float().to(rois.device)
    raise TypeError(f"gt_masks must be PolygonMasks or BitMasks, got {type(gt_masks).__name__}")


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over every pixel of every positive ROI; 0 (with a gradient
    path) when there are none."""
    if logits.numel() == 0:
        return logits.sum() * 0  # logits may carry a zero that reaches the parameters
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def positive_rois(
    matched: torch.Tensor, gt_token_maps: torch.Tensor, gt_mask_valid: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ROIs that get mask loss and their GT: matched (:func:`match_rois`) to a
    GT that has at least one token (official) and a mask (``gt_mask_valid``; all True for the
    official rectangle masks of box-only annotations).

    Returns:
        (roi indices (P,), matched GT indices (P,)).
    """
    ok = matched >= 0
    if len(gt_token_maps):
        has_tokens = gt_token_maps.any(1) & gt_mask_valid.to(torch.bool)
        ok &= has_tokens[matched.clamp(min=0)]
    inds = ok.nonzero().flatten()
    return inds, matched[inds]
