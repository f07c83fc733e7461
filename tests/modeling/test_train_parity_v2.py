"""Training-mode parity of the GLIPv2 losses with the dormant official code
(../shared/reference/train_parity/v2_contrastive_mlm).

The fixture records one official training step of the reduced GLIP-T (C) with the shallow
contrastive loss (our L_inter in ``code`` mode) and MLM on. The folder is the sibling
``v2_contrastive_mlm`` of ``GLIP_TRAIN_PARITY_FIXTURE`` (default: the shared reference), and
any fixture of the same format works: the config is converted from its ``config.yaml``, the
weights are ``../glip/model.pth`` updated with ``model_extra.pth``, and the recorded random
choices (the MLM corruption and labels, the contrastive anchor draw) are injected as its
README prescribes. Tolerances are the README's.
"""

import os
from pathlib import Path

import pytest
import torch
from official_fixtures import (
    assert_gradients_match,
    convert_fixture_config,
    extra_fixture_step_inputs,
    official_gradients,
)

ROOT = Path(__file__).resolve().parents[2]
GLIP_FIXTURE = Path(
    os.environ.get(
        "GLIP_TRAIN_PARITY_FIXTURE",
        ROOT.parent / "shared" / "reference" / "train_parity" / "glip",
    )
).resolve()
FIXTURE = GLIP_FIXTURE.parent / "v2_contrastive_mlm"

LOSS_NAMES = {
    "loss_token": "loss_dot_product_token",
    "loss_giou": "loss_reg",
    "loss_centerness": "loss_centerness",
    "loss_region_word": "loss_shallow_contrastive",
    "loss_mlm": "mlm_loss",
}
LOSS_RTOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-5, 1e-3
GRAD_REL_L2, GRAD_SIGNIFICANT = 1e-3, 1e-3

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model_extra.pth").is_file(),
    reason=f"GLIPv2 training parity fixture not found at {FIXTURE}",
)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    cfg = convert_fixture_config(FIXTURE, tmp_path_factory.mktemp("train_parity_v2"))
    assert cfg.MODEL.GLIPV2.REGION_WORD.MODE == "code" and cfg.MODEL.GLIPV2.MLM.WEIGHT > 0
    model, inputs, batch = extra_fixture_step_inputs(FIXTURE, cfg)
    injected = inputs["injected"]
    for i, x in enumerate(batch):
        x["mlm_input_ids"] = injected["mlm_input_ids"][i]
        x["mlm_labels"] = injected["mlm_labels"][i]
    term = model.criterion.terms["region_word"]
    term.selection_override = [
        (torch.as_tensor(p).long(), torch.as_tensor(q).long())
        for p, q in zip(
            injected["shallow_selected_positive_indices"], injected["shallow_negative_pad_indices"]
        )
    ]
    term.record_state = True
    out = model.forward_train(batch)
    sum(out.losses.values()).backward()
    return {
        "losses": {k: v.detach() for k, v in out.losses.items()},
        "assignment": out.assignment,
        "state": term.last_state,
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "outputs": _load(FIXTURE / "outputs.pth"),
        "inputs": inputs,
    }


def test_atss_assignment_identical(step):
    ref = step["outputs"]["atss"]["matched_gt_index"]
    a = step["assignment"]
    for i in range(len(ref)):
        ours = torch.where(a.is_pos[i], a.matched[i], torch.full_like(a.matched[i], -1))
        assert torch.equal(ours, ref[i]), f"image {i}"


def test_contrastive_targets_exact(step):
    ref, state = step["outputs"]["shallow_contrastive"], step["state"]
    torch.testing.assert_close(
        state.anchor_indices, ref["selected_anchor_indices"].long(), atol=0, rtol=0
    )
    torch.testing.assert_close(state.region_concepts, ref["region_labels"].long(), atol=0, rtol=0)
    torch.testing.assert_close(state.token_labels, ref["token_labels"].long(), atol=0, rtol=0)
    assert torch.equal(state.target, ref["target_matrix"].bool())
    torch.testing.assert_close(state.logits, ref["logits"], atol=1e-4, rtol=1e-4)


def test_losses_match(step):
    ref = step["outputs"]["losses"]
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
    ref, no_grad = official_gradients(FIXTURE / "grads.pth")
    # The official head keeps the decoder bias twice (``bias`` and ``decoder.bias``, one tensor).
    ours = {k: v for k, v in step["grads"].items() if k in ref or k in no_grad}
    missing = sorted(set(ref) - set(ours))
    assert not missing, f"parameters with an official gradient that we lack: {missing}"
    assert_gradients_match(
        ours,
        ref,
        no_grad,
        atol_factor=GRAD_ATOL,
        rtol=GRAD_RTOL,
        rel_l2=GRAD_REL_L2,
        significant=GRAD_SIGNIFICANT,
    )
