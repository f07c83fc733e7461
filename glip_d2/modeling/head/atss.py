"""ATSS anchors, box coder and assignment with the official "+1" box convention.

Boxes inside the head are XYXY in *inclusive* pixel coordinates (Detectron-v1 style: a box
covering pixels 0..9 is ``[0, 0, 9, 9]`` and has width ``x2 - x1 + 1``), as in the official
GLIP code (reference §6, §7). The meta-architecture converts Detectron2's continuous boxes to
this convention on input and back on output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


def cell_anchor(stride: int, size: float) -> torch.Tensor:
    """The one square anchor of a level, centred at ``(stride - 1) / 2``.

    Args:
        stride (int): feature stride in pixels.
        size (float): anchor side (``x2 - x1 + 1``).

    Returns:
        Tensor: (1, 4) inclusive XYXY, e.g. ``[-28, -28, 35, 35]`` for stride 8, size 64.
    """
    ctr = (stride - 1) / 2.0
    half = (size - 1) / 2.0
    return torch.tensor([[ctr - half, ctr - half, ctr + half, ctr + half]], dtype=torch.float32)


def grid_anchors(
    feature_shapes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[float],
    device: torch.device,
) -> List[torch.Tensor]:
    """Anchors of every level, one per location, row-major over (y, x).

    Args:
        feature_shapes: (H_l, W_l) per level.
        strides, sizes: per level.
        device: where to put them.

    Returns:
        list[Tensor]: per level (H_l * W_l, 4), inclusive XYXY.
    """
    out = []
    for (h, w), stride, size in zip(feature_shapes, strides, sizes):
        base = cell_anchor(stride, size).to(device)
        shift_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=device)
        shift_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=device)
        sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        sx, sy = sx.reshape(-1), sy.reshape(-1)
        shifts = torch.stack((sx, sy, sx, sy), dim=1)
        out.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return out


class GLIPBoxCoder:
    """Delta coder of the official ATSS head: weights (10, 10, 5, 5), +1 widths.

    Args:
        weights: (wx, wy, ww, wh).
        clip (float): upper bound for decoded log-size deltas, ``log(1000 / 16)``.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0), clip: float = None):
        self.weights = tuple(float(w) for w in weights)
        self.clip = math.log(1000.0 / 16) if clip is None else clip

    def encode(self, gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Deltas (N, 4) that take ``anchors`` (N, 4) to ``gt`` (N, 4), inclusive XYXY."""
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        acx = (anchors[:, 2] + anchors[:, 0]) / 2
        acy = (anchors[:, 3] + anchors[:, 1]) / 2
        gw = gt[:, 2] - gt[:, 0] + 1
        gh = gt[:, 3] - gt[:, 1] + 1
        gcx = (gt[:, 2] + gt[:, 0]) / 2
        gcy = (gt[:, 3] + gt[:, 1]) / 2
        return torch.stack(
            (
                wx * (gcx - acx) / aw,
                wy * (gcy - acy) / ah,
                ww * torch.log(gw / aw),
                wh * torch.log(gh / ah),
            ),
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Boxes (N, 4) inclusive XYXY from ``deltas`` (N, 4) relative to ``anchors`` (N, 4)."""
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        aw = anchors[:, 2] - anchors[:, 0] + 1
        ah = anchors[:, 3] - anchors[:, 1] + 1
        acx = (anchors[:, 2] + anchors[:, 0]) / 2
        acy = (anchors[:, 3] + anchors[:, 1]) / 2
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        dw = (deltas[:, 2] / ww).clamp(max=self.clip)
        dh = (deltas[:, 3] / wh).clamp(max=self.clip)
        cx = dx * aw + acx
        cy = dy * ah + acy
        w = torch.exp(dw) * aw
        h = torch.exp(dh) * ah
        return torch.stack(
            (cx - 0.5 * (w - 1), cy - 0.5 * (h - 1), cx + 0.5 * (w - 1), cy + 0.5 * (h - 1)),
            dim=1,
        )


def pairwise_iou_inclusive(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU (N, M) of inclusive XYXY boxes (areas and overlaps with +1)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def atss_assign(
    anchors_per_level: List[torch.Tensor], gt_boxes: torch.Tensor, topk: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Adaptive training sample selection (reference §7) for one image.

    Args:
        anchors_per_level: per level (A_l, 4) inclusive XYXY.
        gt_boxes (Tensor): (G, 4) inclusive XYXY.
        topk (int): closest anchors per level per box.

    Returns:
        (matched, is_pos): ``matched`` (A,) index of the assigned box for every anchor
        (meaningless where ``is_pos`` is False); ``is_pos`` (A,) bool.
    """
    anchors = torch.cat(anchors_per_level, dim=0)
    num_anchors, num_gt = anchors.shape[0], gt_boxes.shape[0]
    if num_gt == 0:
        zeros = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
        return zeros, zeros.bool()
    ious = pairwise_iou_inclusive(anchors, gt_boxes)
    gcx = (gt_boxes[:, 2] + gt_boxes[:, 0]) / 2.0
    gcy = (gt_boxes[:, 3] + gt_boxes[:, 1]) / 2.0
    acx = (anchors[:, 2] + anchors[:, 0]) / 2.0
    acy = (anchors[:, 3] + anchors[:, 1]) / 2.0
    dist = ((acx[:, None] - gcx[None, :]) ** 2 + (acy[:, None] - gcy[None, :]) ** 2).sqrt()

    candidates = []
    start = 0
    for level_anchors in anchors_per_level:
        end = start + level_anchors.shape[0]
        k = min(topk, end - start)
        _, idx = dist[start:end].topk(k, dim=0, largest=False)
        candidates.append(idx + start)
        start = end
    candidates = torch.cat(candidates, dim=0)  # (C, G)
    cand_ious = ious[candidates, torch.arange(num_gt, device=anchors.device)]
    thresh = cand_ious.mean(0) + cand_ious.std(0)
    is_pos = cand_ious >= thresh[None, :]

    # The candidate's centre must lie strictly inside its box.
    cx = acx[candidates]
    cy = acy[candidates]
    inside = (
        torch.stack(
            (
                cx - gt_boxes[None, :, 0],
                cy - gt_boxes[None, :, 1],
                gt_boxes[None, :, 2] - cx,
                gt_boxes[None, :, 3] - cy,
            ),
            dim=0,
        ).min(dim=0)[0]
        > 0.01
    )
    is_pos = is_pos & inside

    ious_inf = torch.full_like(ious, -float("inf"))
    gt_index = torch.arange(num_gt, device=anchors.device).expand_as(candidates)
    ious_inf[candidates[is_pos], gt_index[is_pos]] = ious[candidates[is_pos], gt_index[is_pos]]
    best, matched = ious_inf.max(dim=1)
    return matched, best != -float("inf")


@dataclass
class ATSSAssignment:
    """The ATSS assignment of a batch (reference §7).

    Attributes:
        matched (Tensor): (B, A) int64, per anchor the index of its assigned GT box in its
            image; where ``is_pos`` is False it is 0 (the official argmax of an all -inf row).
        is_pos (Tensor): (B, A) bool, the positive anchors.
    """

    matched: torch.Tensor
    is_pos: torch.Tensor

    @property
    def num_pos(self) -> torch.Tensor:
        """Positive anchors in the batch (0-d int64)."""
        return self.is_pos.sum()


class ATSSAssigner:
    """Adaptive training sample selection for a batch: :func:`atss_assign` per image.

    Args:
        topk (int): closest anchors per level per GT box (``MODEL.ATSS.TOPK``).
    """

    def __init__(self, topk: int = 9):
        self.topk = topk

    def __call__(
        self, anchors_per_level: List[torch.Tensor], gt_boxes: List[torch.Tensor]
    ) -> ATSSAssignment:
        """
        Args:
            anchors_per_level: per level (A_l, 4) inclusive XYXY, shared by the batch.
            gt_boxes: per image (G_i, 4) inclusive XYXY.
        """
        matched, is_pos = zip(*(atss_assign(anchors_per_level, b, self.topk) for b in gt_boxes))
        return ATSSAssignment(torch.stack(matched), torch.stack(is_pos))
