"""Training-mode parity with the official GLIP code (../shared/reference/train_parity/glip).

The fixture records one official training step (train-mode forward, loss dict, ``backward()``
of the summed loss) of a small random GLIP; its README describes the files. The folder comes
from ``GLIP_TRAIN_PARITY_FIXTURE`` (default: the shared reference fixture) and any fixture of
the same format works: the glip_d2 config is converted from the fixture's ``config.yaml`` and
``bert_config.json`` by ``tools/convert_glip_config.py``, the weights are the official
``model.pth``, and every shape, count and value below comes from the files.

The recorded batch goes through ``GLIP.forward_train``, what ``GLIP.forward`` runs in train
mode (as the trainer calls it), which also returns the assignment and head outputs. The
recording has every stochastic part off (dropout, drop-path, DropBlock, flips, prompt
shuffling), so nothing is injected; the fusion attention dropout, which the official code
hard-codes and the recording zeroed after construction, is switched off through our config.
Tolerances are the README's for an independent float32 CPU implementation.
"""

import os
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model
from official_fixtures import (
    assert_gradients_match,
    convert_fixture_config,
    official_gradients,
    train_parity_batch,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(
    os.environ.get(
        "GLIP_TRAIN_PARITY_FIXTURE",
        ROOT.parent / "shared" / "reference" / "train_parity" / "glip",
    )
).resolve()

#: our loss key -> official loss key
LOSS_NAMES = {
    "loss_token": "loss_dot_product_token",
    "loss_giou": "loss_reg",
    "loss_centerness": "loss_centerness",
}
LOSS_RTOL = 1e-5
HEAD_TOL = dict(atol=1e-4, rtol=1e-4)
#: per tensor: atol = GRAD_ATOL x the largest gradient magnitude of the model, plus GRAD_RTOL
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-3
#: relative L2 error bound for tensors whose max |grad| is >= GRAD_SIGNIFICANT x the global max
GRAD_REL_L2, GRAD_SIGNIFICANT = 1e-3, 1e-3

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model.pth").is_file(),
    reason=f"training parity fixture not found at {FIXTURE} (set GLIP_TRAIN_PARITY_FIXTURE)",
)


def _load(name):
    return torch.load(FIXTURE / name, map_location="cpu", weights_only=False)


def _converted_cfg(tmp_path):
    cfg = convert_fixture_config(FIXTURE, tmp_path)
    # The recording ran with every stochastic part off (README "How to feed it", step 1).
    cfg.MODEL.FUSION.DROPOUT = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.GLIP_FPN.DROP_BLOCK = False
    cfg.freeze()
    return cfg


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """One training step of our model on the recorded batch: losses, the ATSS assignment and
    head outputs the loss saw (recorded on the way), and the parameter gradients."""
    cfg = _converted_cfg(tmp_path_factory.mktemp("train_parity"))
    torch.manual_seed(0)
    model = build_model(cfg)
    incompatible = model.load_state_dict(_load("model.pth"), strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == [], incompatible
    model.train()
    active = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert active == [], f"dropout left on, the recording has none: {active}"

    inputs = _load("inputs.pth")
    out = model.forward_train(train_parity_batch(cfg, inputs, inputs["image_tensor"]))
    losses = out.losses
    assignments = list(zip(out.assignment.matched, out.assignment.is_pos))
    head = {
        "logits": out.head.flat_logits(),
        "deltas": out.head.flat_deltas(),
        "centerness": out.head.flat_centerness(),
        "anchors": torch.cat(out.anchors),
    }
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "assignments": assignments,
        "head": {k: v.detach() for k, v in head.items()},
        "grads": grads,
        "inputs": inputs,
        "outputs": _load("outputs.pth"),
    }


def test_atss_assignment_identical_on_every_anchor(step):
    atss = step["outputs"]["atss"]
    ref_matched = atss["matched_gt_index"]
    assert len(step["assignments"]) == len(ref_matched), "one assignment per image"
    for i, (matched, is_pos) in enumerate(step["assignments"]):
        ours = torch.where(is_pos, matched, torch.full_like(matched, -1))
        assert ours.shape == ref_matched[i].shape, f"anchor count of image {i}"
        diff = (ours != ref_matched[i]).nonzero().flatten()
        assert len(diff) == 0, (
            f"image {i}: {len(diff)} anchors assigned differently, first {diff[:10].tolist()}: "
            f"ours {ours[diff[:10]].tolist()}, official {ref_matched[i][diff[:10]].tolist()}"
        )
        assert torch.equal(is_pos, atss["cls_labels"][i] > 0), f"positives of image {i}"
    pos_flat = torch.stack([p for _, p in step["assignments"]]).flatten().nonzero().flatten()
    assert torch.equal(pos_flat, atss["pos_inds_flat"])
    assert len(pos_flat) == atss["num_pos"]


def test_anchors_and_head_outputs_match(step):
    out, head = step["outputs"], step["head"]
    torch.testing.assert_close(head["anchors"], out["anchors"], atol=0, rtol=0)
    text_len = step["inputs"]["text_len_max"]
    # The recorded token axis is cut to the longest unpadded prompt.
    ours = dict(head, logits=head["logits"][:, :, :text_len])
    for name, official in [
        ("logits", "dot_product_logits"),
        ("deltas", "bbox_regression"),
        ("centerness", "centerness"),
    ]:
        torch.testing.assert_close(
            ours[name], out["head"][official], **HEAD_TOL, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_losses_match(step):
    ref = step["outputs"]["losses"]
    # The official dict always holds loss_cls = 0 x focal(cls_logits) (frozen, no gradient).
    assert float(ref["loss_cls"]) == 0.0
    assert set(ref) - {"loss_cls"} == set(LOSS_NAMES.values())
    assert set(step["losses"]) == set(LOSS_NAMES)
    for ours, official in LOSS_NAMES.items():
        torch.testing.assert_close(
            step["losses"][ours],
            ref[official].to(step["losses"][ours].dtype),
            atol=0,
            rtol=LOSS_RTOL,
            msg=lambda m, o=ours, r=official: f"{o} vs official {r}: {m}",
        )
    total = sum(step["losses"].values())
    torch.testing.assert_close(total, step["outputs"]["total_loss"], atol=0, rtol=LOSS_RTOL)


def test_gradients_match(step):
    ref, no_grad = official_gradients(FIXTURE / "grads.pth", allow_low_rank=False)
    ours = step["grads"]
    assert set(ref) | set(no_grad) == set(ours), (
        f"only official: {sorted(set(ref) | set(no_grad) - set(ours))}; "
        f"only ours: {sorted(set(ours) - set(ref) - set(no_grad))}"
    )
    assert_gradients_match(
        ours,
        ref,
        no_grad,
        atol_factor=GRAD_ATOL,
        rtol=GRAD_RTOL,
        rel_l2=GRAD_REL_L2,
        significant=GRAD_SIGNIFICANT,
    )
