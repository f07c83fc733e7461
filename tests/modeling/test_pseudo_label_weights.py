"""Pseudo-label score weighting in the criterion: per-anchor weights follow the ATSS
assignment, the weighted token and box losses equal an independent per-anchor computation, and
unit weights leave a training step exactly unchanged."""

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from synthetic_inputs import model_input, prompt_tensors, tiny_model

from glip_d2.modeling.criterion.base import CriterionInputs
from glip_d2.modeling.head.atss import ATSSAssignment, GLIPBoxCoder, grid_anchors
from glip_d2.modeling.head.loss import box_losses, centerness_targets, token_loss


def _assignment():
    matched = torch.tensor([[0, 1, 1, 0, 0, 2], [0, 0, 1, 0, 1, 0]])
    is_pos = torch.tensor([[1, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)
    return ATSSAssignment(matched=matched, is_pos=is_pos)


def _targets(weights):
    out = []
    for w in weights:
        inst = Instances((64, 64))
        if w is not None:
            inst.gt_weights = torch.tensor(w)
        out.append({"instances": inst})
    return out


def _inputs(targets):
    return CriterionInputs(None, _assignment(), None, [], [], targets, 1.0)


def test_anchor_weights_follow_the_assignment():
    assert _inputs(_targets([None, None])).anchor_weights() is None
    w = _inputs(_targets([[0.5, 0.8, 0.25], None])).anchor_weights()
    expected = torch.tensor([[0.5, 0.8, 0.8, 1, 1, 0.25], [1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(w, expected)


def test_weighted_losses_equal_a_per_anchor_computation():
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat(grid_anchors([(4, 4)], [8], [16], torch.device("cpu")))  # (16, 4)
    A = anchors.shape[0]
    gt = [
        torch.tensor([[2.0, 3.0, 20.0, 25.0], [10.0, 8.0, 30.0, 30.0]]),
        torch.tensor([[0.0, 0.0, 31.0, 15.0]]),
    ]
    matched = torch.zeros(2, A, dtype=torch.long)
    is_pos = torch.zeros(2, A, dtype=torch.bool)
    is_pos[0, [0, 1, 5]] = True
    matched[0, 5] = 1
    is_pos[1, [2, 3]] = True
    assignment = ATSSAssignment(matched=matched, is_pos=is_pos)
    weights = torch.ones(2, A)
    weights[0, [0, 1]] = 0.7
    weights[0, 5] = 0.2
    weights[1, [2, 3]] = 0.4
    L = 6
    logits = torch.randn(2, A, L, generator=g)
    targets = (torch.rand(2, A, L, generator=g) > 0.7).float()
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    got = token_loss(
        logits, targets, mask, 3.0, focal_alpha=0.25, focal_gamma=2.0, anchor_weights=weights
    )
    expected = 0.0
    for b in range(2):
        for a in range(A):
            for t in range(L):
                if mask[b, t]:
                    p = torch.sigmoid(logits[b, a, t])
                    y = targets[b, a, t]
                    p_t = p * y + (1 - p) * (1 - y)
                    alpha = 0.25 * y + 0.75 * (1 - y)
                    expected += weights[b, a] * alpha * -torch.log(p_t) * (1 - p_t) ** 2
    torch.testing.assert_close(got, expected / 3.0, rtol=1e-5, atol=1e-6)

    coder = GLIPBoxCoder()
    deltas = 0.1 * torch.randn(2, A, 4, generator=g)
    ctr = torch.randn(2, A, generator=g)
    plain = box_losses(deltas, ctr, anchors, assignment, gt, coder, 3.0)
    got = box_losses(deltas, ctr, anchors, assignment, gt, coder, 3.0, anchor_weights=weights)
    giou_sum, ctr_sum, ctr_loss = 0.0, 0.0, 0.0
    for b in range(2):
        for a in torch.nonzero(is_pos[b]).flatten().tolist():
            box = gt[b][matched[b, a]][None]
            anc = anchors[a][None]
            box = coder.decode(coder.encode(box, anc), anc)
            c = centerness_targets(box, anc)[0]
            pred = coder.decode(deltas[b, a][None], anc)[0]
            ix1, iy1 = torch.max(pred[0], box[0, 0]), torch.max(pred[1], box[0, 1])
            ix2, iy2 = torch.min(pred[2], box[0, 2]), torch.min(pred[3], box[0, 3])
            inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
            area_p = (pred[2] - pred[0]) * (pred[3] - pred[1])
            area_g = (box[0, 2] - box[0, 0]) * (box[0, 3] - box[0, 1])
            union = area_p + area_g - inter + 1e-7
            ex = (torch.max(pred[2], box[0, 2]) - torch.min(pred[0], box[0, 0])) * (
                torch.max(pred[3], box[0, 3]) - torch.min(pred[1], box[0, 1])
            ) + 1e-7
            giou = inter / union - (ex - union) / ex
            giou_sum += weights[b, a] * c * (1 - giou)
            ctr_sum += c
            ctr_loss += weights[b, a] * F.binary_cross_entropy_with_logits(ctr[b, a], c)
    torch.testing.assert_close(got["loss_giou"], giou_sum / ctr_sum, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_centerness"], ctr_loss / 3.0, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got["loss_giou"], plain["loss_giou"])


def _batch(weights):
    out = []
    for seed, (boxes, classes) in enumerate(
        [([[10, 20, 60, 90], [80, 30, 150, 120]], [0, 1]), ([[30, 30, 90, 100]], [1])]
    ):
        g = torch.Generator().manual_seed(seed)
        ids, mask, pmap = prompt_tensors(2, first_id=1000)
        inst = Instances((128, 160))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        inst.gt_positive_map = pmap[inst.gt_classes]
        if weights is not None:
            inst.gt_weights = torch.full((len(boxes),), float(weights))
        out.append(model_input(g, 128, 160, ids, mask, pmap, instances=inst))
    return out


def test_unit_weights_leave_a_training_step_unchanged_and_box_losses_scale():
    model = tiny_model(**{"MODEL.FUSION.DROPOUT": 0.0}).train()
    out = {}
    with torch.no_grad():
        for w in (None, 1.0, 0.5):
            torch.manual_seed(0)  # the same DropBlock draws
            out[w] = model(_batch(w))
    plain, ones, half = out[None], out[1.0], out[0.5]
    for k in plain:
        assert torch.equal(plain[k], ones[k]), k
    for k in ("loss_giou", "loss_centerness"):
        torch.testing.assert_close(half[k], 0.5 * plain[k], rtol=1e-6, atol=0)
    assert half["loss_token"] < plain["loss_token"]
