"""ATSS training losses of the GLIP head (reference §7)."""

from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.utils import comm

from .atss import GLIPBoxCoder, atss_assign


def token_sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Element-wise binary focal loss (fvcore form) on (anchor, token) logits, same shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def giou_loss_sum(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of 1 - GIoU for (N, 4) XYXY boxes; no +1 here, 1e-7 guards (official)."""
    px1 = torch.min(pred[:, 0], pred[:, 2])
    py1 = torch.min(pred[:, 1], pred[:, 3])
    px2 = torch.max(pred[:, 0], pred[:, 2])
    py2 = torch.max(pred[:, 1], pred[:, 3])
    pred_area = (px2 - px1) * (py2 - py1)
    target_area = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    ix1 = torch.max(px1, target[:, 0])
    iy1 = torch.max(py1, target[:, 1])
    ix2 = torch.min(px2, target[:, 2])
    iy2 = torch.min(py2, target[:, 3])
    inter = torch.where((ix2 > ix1) & (iy2 > iy1), (ix2 - ix1) * (iy2 - iy1), torch.zeros_like(ix1))
    ex1 = torch.min(px1, target[:, 0])
    ey1 = torch.min(py1, target[:, 1])
    ex2 = torch.max(px2, target[:, 2])
    ey2 = torch.max(py2, target[:, 3])
    enclosing = (ex2 - ex1) * (ey2 - ey1) + 1e-7
    union = pred_area + target_area - inter + 1e-7
    giou = inter / union - (enclosing - union) / enclosing
    return ((1 - giou) * weight).sum()


def centerness_targets(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) x min(t,b)/max(t,b)) of anchor centres in their boxes, (N,)."""
    cx = (anchors[:, 2] + anchors[:, 0]) / 2
    cy = (anchors[:, 3] + anchors[:, 1]) / 2
    left, top = cx - gt[:, 0], cy - gt[:, 1]
    right, bottom = gt[:, 2] - cx, gt[:, 3] - cy
    lr = torch.stack((left, right), 1)
    tb = torch.stack((top, bottom), 1)
    return torch.sqrt((lr.min(1)[0] / lr.max(1)[0]) * (tb.min(1)[0] / tb.max(1)[0]))


def _global_mean(value: torch.Tensor) -> float:
    """Sum over processes divided by the number of processes (the official normaliser)."""
    world = comm.get_world_size()
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
    return float(value) / world


def glip_losses(
    logits: torch.Tensor,
    deltas: torch.Tensor,
    centerness: torch.Tensor,
    anchors_per_level: List[torch.Tensor],
    gt_boxes: List[torch.Tensor],
    gt_token_maps: List[torch.Tensor],
    text_masks: torch.Tensor,
    box_coder: GLIPBoxCoder,
    *,
    topk: int,
    focal_alpha: float,
    focal_gamma: float,
    token_loss_weight: float,
    reg_loss_weight: float,
) -> Dict[str, torch.Tensor]:
    """Token focal loss, GIoU and centerness losses of a batch.

    Args:
        logits (Tensor): (B, A, L) dot-product logits, all levels concatenated (P3 first).
        deltas (Tensor): (B, A, 4) box deltas; ``centerness`` (B, A) logits.
        anchors_per_level: per level (A_l, 4) inclusive XYXY (shared by the batch).
        gt_boxes: per image (G_i, 4) inclusive XYXY in the padded input's pixels.
        gt_token_maps: per image (G_i, L) 0/1 tokens of each box.
        text_masks (Tensor): (B, L) attention mask; the token loss counts only these tokens.

    Returns:
        dict: ``loss_token``, ``loss_giou``, ``loss_centerness``. Normalised by the positive
        count and the centerness-target sum averaged over processes (reference §7).
    """
    anchors = torch.cat(anchors_per_level, dim=0)
    batch, num_anchors, num_tokens = logits.shape
    token_targets, box_targets, pos_masks = [], [], []
    for boxes, token_map in zip(gt_boxes, gt_token_maps):
        matched, is_pos = atss_assign(anchors_per_level, boxes, topk)
        target = torch.zeros(num_anchors, num_tokens, device=logits.device)
        if boxes.shape[0] > 0:
            target[is_pos] = token_map[matched[is_pos]].to(target.dtype)
            box_targets.append(boxes[matched[is_pos]])
        # Unmatched anchors point at the last slot, the official "no object" token.
        target[~is_pos, -1] = 1.0
        token_targets.append(target)
        pos_masks.append(is_pos)
    token_targets = torch.stack(token_targets)
    pos_mask = torch.stack(pos_masks)

    num_pos = pos_mask.sum()
    num_pos_avg = max(_global_mean(num_pos.float()), 1.0)

    focal = token_sigmoid_focal_loss(logits.float(), token_targets, focal_alpha, focal_gamma)
    focal = focal * text_masks[:, None, :].to(focal.dtype)
    loss_token = focal.sum() / num_pos_avg * token_loss_weight

    pos_deltas = deltas[pos_mask].float()
    pos_ctr = centerness[pos_mask].float()
    if pos_deltas.shape[0] > 0:
        pos_anchors = anchors[None].expand(batch, -1, -1)[pos_mask]
        gt = torch.cat(box_targets)
        # Targets are encoded then decoded, as the official loss does.
        gt_decoded = box_coder.decode(box_coder.encode(gt, pos_anchors), pos_anchors)
        ctr_targets = centerness_targets(gt_decoded, pos_anchors)
        ctr_sum_avg = _global_mean(ctr_targets.sum().detach())
        pred = box_coder.decode(pos_deltas, pos_anchors)
        loss_giou = giou_loss_sum(pred, gt_decoded, ctr_targets) / ctr_sum_avg * reg_loss_weight
        loss_ctr = (
            F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, reduction="sum") / num_pos_avg
        )
    else:
        # Keep every output in the graph so that DDP sees gradients for all parameters.
        loss_giou = deltas.sum() * 0.0
        loss_ctr = centerness.sum() * 0.0
        if comm.get_world_size() > 1:
            _global_mean(torch.zeros((), device=logits.device))
    return {"loss_token": loss_token, "loss_giou": loss_giou, "loss_centerness": loss_ctr}
