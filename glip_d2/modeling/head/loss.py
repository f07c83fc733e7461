"""ATSS training losses of the GLIP head (reference §7)."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.utils import comm

from .atss import ATSSAssigner, ATSSAssignment, GLIPBoxCoder


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


def token_targets(
    assignment: ATSSAssignment, gt_token_maps: List[torch.Tensor], num_tokens: int
) -> torch.Tensor:
    """(B, A, L) 0/1 targets of the token loss: the token map of each positive anchor's box;
    unmatched anchors point at the last slot, the official "no object" token."""
    targets = []
    for matched, is_pos, token_map in zip(assignment.matched, assignment.is_pos, gt_token_maps):
        target = torch.zeros(matched.shape[0], num_tokens, device=matched.device)
        if token_map.shape[0] > 0:
            target[is_pos] = token_map[matched[is_pos]].to(target.dtype)
        target[~is_pos, -1] = 1.0
        targets.append(target)
    return torch.stack(targets)


def num_pos_average(assignment: ATSSAssignment) -> float:
    """The official normaliser: positives summed over the batch, averaged over processes, >= 1."""
    return max(_global_mean(assignment.num_pos.float()), 1.0)


def token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    text_masks: torch.Tensor,
    num_pos_avg: float,
    *,
    focal_alpha: float,
    focal_gamma: float,
    anchor_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Focal loss summed over (anchor, real token) pairs, divided by ``num_pos_avg``.

    Args:
        logits (Tensor): (B, A, L) dot-product logits; ``targets`` the same shape.
        text_masks (Tensor): (B, L) attention mask; only these tokens count.
        anchor_weights (Tensor): optional (B, A) weight of each anchor's terms.
    """
    focal = token_sigmoid_focal_loss(logits.float(), targets, focal_alpha, focal_gamma)
    focal = focal * text_masks[:, None, :].to(focal.dtype)
    if anchor_weights is not None:
        focal = focal * anchor_weights[:, :, None].to(focal.dtype)
    return focal.sum() / num_pos_avg


def box_losses(
    deltas: torch.Tensor,
    centerness: torch.Tensor,
    anchors: torch.Tensor,
    assignment: ATSSAssignment,
    gt_boxes: List[torch.Tensor],
    box_coder: GLIPBoxCoder,
    num_pos_avg: float,
    anchor_weights: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """GIoU (weighted by the centerness targets) and centerness losses of the positives.

    Args:
        deltas (Tensor): (B, A, 4); ``centerness`` (B, A) logits; ``anchors`` (A, 4).
        gt_boxes: per image (G_i, 4) inclusive XYXY.
        anchor_weights (Tensor): optional (B, A) weights; each positive's GIoU and centerness
            terms are multiplied by its weight (the normalisers are unchanged).

    Returns:
        dict: ``loss_giou`` (unweighted), ``loss_centerness``.
    """
    pos_mask = assignment.is_pos
    pos_deltas = deltas[pos_mask].float()
    pos_ctr = centerness[pos_mask].float()
    if pos_deltas.shape[0] == 0:
        # Keep every output in the graph so that DDP sees gradients for all parameters, and
        # join the other processes' all-reduce of the centerness sum.
        if comm.get_world_size() > 1:
            _global_mean(torch.zeros((), device=deltas.device))
        return {"loss_giou": deltas.sum() * 0.0, "loss_centerness": centerness.sum() * 0.0}
    batch = deltas.shape[0]
    pos_anchors = anchors[None].expand(batch, -1, -1)[pos_mask]
    gt = torch.cat(
        [b[m[p]] for b, m, p in zip(gt_boxes, assignment.matched, pos_mask) if b.shape[0] > 0]
    )
    # Targets are encoded then decoded, as the official loss does.
    gt_decoded = box_coder.decode(box_coder.encode(gt, pos_anchors), pos_anchors)
    ctr_targets = centerness_targets(gt_decoded, pos_anchors)
    ctr_sum_avg = _global_mean(ctr_targets.sum().detach())
    pred = box_coder.decode(pos_deltas, pos_anchors)
    pos_w = None if anchor_weights is None else anchor_weights[pos_mask].to(ctr_targets.dtype)
    giou_w = ctr_targets if pos_w is None else ctr_targets * pos_w
    loss_giou = giou_loss_sum(pred, gt_decoded, giou_w) / ctr_sum_avg
    loss_ctr = (
        F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, weight=pos_w, reduction="sum")
        / num_pos_avg
    )
    return {"loss_giou": loss_giou, "loss_centerness": loss_ctr}


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
    """GLIP's three training losses of a batch in one call (ATSS assignment included); the
    model computes the same through :class:`glip_d2.modeling.criterion.GLIPCriterion`.

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
    assignment = ATSSAssigner(topk)(anchors_per_level, gt_boxes)
    num_pos_avg = num_pos_average(assignment)
    targets = token_targets(assignment, gt_token_maps, logits.shape[-1])
    loss_token = token_loss(
        logits, targets, text_masks, num_pos_avg, focal_alpha=focal_alpha, focal_gamma=focal_gamma
    )
    box = box_losses(
        deltas,
        centerness,
        torch.cat(anchors_per_level),
        assignment,
        gt_boxes,
        box_coder,
        num_pos_avg,
    )
    return {
        "loss_token": loss_token * token_loss_weight,
        "loss_giou": box["loss_giou"] * reg_loss_weight,
        "loss_centerness": box["loss_centerness"],
    }
