"""ROI pooling of the VL mask head: Detectron2's ``ROIPooler`` with the official level rule.

The official maskrcnn-benchmark ``LevelMapper`` assigns a box of (inclusive, ``+1``) area ``a``
to level ``floor(4 + log2(sqrt(a) / 224 + 1e-6))``, clamped to the pooled levels; Detectron2's
``assign_boxes_to_levels`` uses the continuous area and ``1e-8``. Boxes here are in the
official inclusive convention (what the GLIP meta-architecture uses internally), so the
official rule is applied to them as they are. The pooling itself is Detectron2's legacy
``ROIAlign`` (``aligned=False``, torchvision's op, as the official pooler).
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
from detectron2.modeling.poolers import ROIPooler

__all__ = ["assign_levels_inclusive", "InclusiveROIPooler"]


def assign_levels_inclusive(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: float = 224.0,
    canonical_level: int = 4,
) -> torch.Tensor:
    """Official level index (0 = ``min_level``) of each inclusive XYXY box.

    Args:
        boxes (Tensor): (R, 4) inclusive boxes (``w = x2 - x1 + 1``).

    Returns:
        Tensor: (R,) int64 in ``[0, max_level - min_level]``.
    """
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    levels = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_box_size + 1e-6))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


class InclusiveROIPooler(ROIPooler):
    """``ROIPooler`` whose level assignment is :func:`assign_levels_inclusive`.

    Args (as ``ROIPooler``): output_size, scales (1/stride per level, finest first),
    sampling_ratio, pooler_type ("ROIAlign" = legacy, the official one; "ROIAlignV2" =
    half-pixel aligned), canonical_box_size, canonical_level.
    """

    def __init__(
        self,
        output_size: int,
        scales: Sequence[float],
        sampling_ratio: int = 0,
        pooler_type: str = "ROIAlign",
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__(
            output_size,
            scales=tuple(scales),
            sampling_ratio=sampling_ratio,
            pooler_type=pooler_type,
            canonical_box_size=canonical_box_size,
            canonical_level=canonical_level,
        )
        self.min_level_index = int(round(-math.log2(scales[0])))
        self.max_level_index = int(round(-math.log2(scales[-1])))

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """(R,) level index of each inclusive box."""
        return assign_levels_inclusive(
            boxes,
            self.min_level_index,
            self.max_level_index,
            self.canonical_box_size,
            self.canonical_level,
        )

    def forward(self, x: List[torch.Tensor], box_lists: List[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            x: per level (B, C, H_l, W_l).
            box_lists: per image (R_i, 4) inclusive boxes in input-image pixels.

        Returns:
            Tensor: (sum R_i, C, S, S), ROIs of image 0 first.
        """
        if len(x) != len(self.level_poolers):
            raise ValueError(f"{len(x)} feature levels for {len(self.level_poolers)} poolers")
        boxes = torch.cat([b.to(x[0].dtype) for b in box_lists]) if box_lists else None
        num = 0 if boxes is None else len(boxes)
        out = x[0].new_zeros((num, x[0].shape[1], *self.output_size))
        if num == 0:
            return out
        index = torch.cat(
            [
                torch.full((len(b), 1), i, dtype=boxes.dtype, device=boxes.device)
                for i, b in enumerate(box_lists)
            ]
        )
        rois = torch.cat([index, boxes], dim=1)
        levels = self.levels(boxes)
        for level, pooler in enumerate(self.level_poolers):
            inds = (levels == level).nonzero().flatten()
            if len(inds):
                out[inds] = pooler(x[level], rois[inds]).to(out.dtype)
        return out
