"""The GLIP criterion: named loss terms over one head pass and one ATSS assignment.

Modelled on Mask2Former's ``SetCriterion``: the meta-architecture computes the head outputs
and the ATSS assignment once; each :class:`LossTerm` reads them (and the per-image targets)
and returns its unweighted losses; the criterion multiplies each by its weight. A new loss is
one small ``LossTerm`` subclass and one weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..fusion.tower import DenseHeadOutputs
from ..head.atss import ATSSAssignment, GLIPBoxCoder
from ..head.loss import box_losses, num_pos_average, token_loss, token_targets

__all__ = ["CriterionInputs", "LossTerm", "TokenAlignmentLoss", "BoxLoss", "GLIPCriterion"]


@dataclass
class CriterionInputs:
    """What every loss term may read.

    Attributes:
        head (DenseHeadOutputs): the head pass.
        assignment (ATSSAssignment): the ATSS assignment of the batch.
        anchors (Tensor): (A, 4) inclusive XYXY anchors, levels concatenated.
        gt_boxes: per image (G_i, 4) inclusive XYXY boxes.
        gt_token_maps: per image (G_i, L) bool token map of each box.
        targets: per image, the input dict (prompt fields, ``instances``, GLIPv2 fields).
        num_pos_avg (float): the official normaliser (ATSS positives averaged over processes).
        cache (dict): values shared between terms within one step.
    """

    head: DenseHeadOutputs
    assignment: ATSSAssignment
    anchors: torch.Tensor
    gt_boxes: List[torch.Tensor]
    gt_token_maps: List[torch.Tensor]
    targets: List[Mapping[str, Any]]
    num_pos_avg: float
    cache: Dict[str, Any] = field(default_factory=dict)

    def anchor_weights(self) -> Optional[torch.Tensor]:
        """(B, A) loss weight of each anchor where the targets' instances carry ``gt_weights``
        (pseudo-label scores, ``INPUT.PSEUDO_LABELS.SCORE_WEIGHTING``): a positive anchor gets
        its assigned box's weight, every other anchor 1. None when no image has weights (the
        official, unweighted losses)."""
        if "anchor_weights" not in self.cache:
            insts = [t["instances"] for t in self.targets]
            per_image = [i.gt_weights if i.has("gt_weights") else None for i in insts]
            weights = None
            if any(w is not None for w in per_image):
                matched, is_pos = self.assignment.matched, self.assignment.is_pos
                weights = torch.ones(matched.shape, dtype=torch.float32, device=matched.device)
                for i, w in enumerate(per_image):
                    if w is not None:
                        w = w.to(device=matched.device, dtype=torch.float32)
                        weights[i, is_pos[i]] = w[matched[i, is_pos[i]]]
            self.cache["anchor_weights"] = weights
        return self.cache["anchor_weights"]


class LossTerm(nn.Module):
    """One named term; ``forward(inputs: CriterionInputs) -> {name: unweighted loss}``.

    ``names`` lists the keys it returns (each gets a weight in :class:`GLIPCriterion`).
    """

    names: Tuple[str, ...] = ()


class TokenAlignmentLoss(LossTerm):
    """GLIP's region-token alignment (L_intra): sigmoid focal loss on the dot-product logits
    against the positive anchors' token maps, summed over real tokens, / positives (§7); with
    pseudo-label weights, each anchor's terms times its weight."""

    names = ("loss_token",)

    def __init__(self, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(self, inputs: CriterionInputs) -> Dict[str, torch.Tensor]:
        logits = inputs.head.flat_logits()
        targets = token_targets(inputs.assignment, inputs.gt_token_maps, logits.shape[-1])
        loss = token_loss(
            logits,
            targets,
            inputs.head.text_masks,
            inputs.num_pos_avg,
            focal_alpha=self.focal_alpha,
            focal_gamma=self.focal_gamma,
            anchor_weights=inputs.anchor_weights(),
        )
        return {"loss_token": loss}


class BoxLoss(LossTerm):
    """GLIP's localisation loss (L_loc): GIoU weighted by the centerness targets, and the
    centerness BCE, on the positive anchors (§7); with pseudo-label weights, each positive's
    terms times its box's weight (the normalisers stay the official ones)."""

    names = ("loss_giou", "loss_centerness")

    def __init__(self, box_coder: GLIPBoxCoder):
        super().__init__()
        self.box_coder = box_coder

    def forward(self, inputs: CriterionInputs) -> Dict[str, torch.Tensor]:
        return box_losses(
            inputs.head.flat_deltas(),
            inputs.head.flat_centerness(),
            inputs.anchors,
            inputs.assignment,
            inputs.gt_boxes,
            self.box_coder,
            inputs.num_pos_avg,
            anchor_weights=inputs.anchor_weights(),
        )


class GLIPCriterion(nn.Module):
    """Weighted sum of named loss terms (a dict of losses, as Detectron2 trainers expect).

    Args:
        terms: ordered ``{term name: LossTerm}``; they run in this order (their collectives
            too, which must be the same on every process).
        weights: ``{loss key: weight}`` for every key a term returns.
    """

    def __init__(self, terms: Mapping[str, LossTerm], weights: Mapping[str, float]):
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(weights)
        for name, term in self.terms.items():
            missing = [k for k in term.names if k not in self.weights]
            if missing:
                raise ValueError(f"loss term '{name}' returns {missing}, which have no weight")

    def forward(
        self,
        head: DenseHeadOutputs,
        assignment: ATSSAssignment,
        anchors: torch.Tensor,
        gt_boxes: List[torch.Tensor],
        gt_token_maps: List[torch.Tensor],
        targets: List[Mapping[str, Any]],
        cache: Mapping[str, Any] = None,
    ) -> Dict[str, torch.Tensor]:
        """``cache`` seeds :attr:`CriterionInputs.cache` (e.g. ``"mlm_head"``: the head pass
        over the masked prompt, when the grounding losses saw the clean one)."""
        inputs = CriterionInputs(
            head=head,
            assignment=assignment,
            anchors=anchors,
            gt_boxes=gt_boxes,
            gt_token_maps=gt_token_maps,
            targets=targets,
            num_pos_avg=num_pos_average(assignment),
            cache=dict(cache or {}),
        )
        losses: Dict[str, torch.Tensor] = {}
        for term in self.terms.values():
            for key, value in term(inputs).items():
                losses[key] = value * self.weights[key]
        return losses
