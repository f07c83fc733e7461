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
from detectron2.structures import Boxes, Instances
from official_fixtures import convert_fixture_config

from glip_d2.utils.checkpoint import convert_official_state_dict

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


def _batch(cfg, inputs):
    """Detectron2 input dicts of the recorded batch: the official network input un-normalised
    back to pixels, the inclusive boxes in Detectron2's continuous convention (+1)."""
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    box_image = torch.as_tensor(inputs["positive_map_box_to_image"])
    batch = []
    for i, target in enumerate(inputs["targets"]):
        h, w = (int(v) for v in inputs["image_sizes_hw"][i])
        image = inputs["image_tensor"][i, :, :h, :w] * std + mean
        if cfg.INPUT.FORMAT == "RGB":
            image = image.flip(0)
        boxes = target["boxes_xyxy"].clone()
        boxes[:, 2:] += 1
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_positive_map = inputs["positive_map"][box_image == i] > 0
        assert len(inst.gt_positive_map) == len(boxes), f"positive_map rows of image {i}"
        batch.append(
            {
                "image": image,
                "height": h,
                "width": w,
                "input_ids": inputs["input_ids"][i],
                "attention_mask": inputs["attention_mask"][i],
                "instances": inst,
            }
        )
    return batch


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
    out = model.forward_train(_batch(cfg, inputs))
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


def _official_grads():
    """Official gradients as dense tensors under our parameter names, and the official names
    of the parameters without gradient."""
    recorded = _load("grads.pth")
    dense = dict(recorded["dense"])
    for name, sparse in recorded["row_sparse"].items():
        full = torch.zeros(sparse["shape"], dtype=sparse["values"].dtype)
        full[torch.as_tensor(sparse["rows"])] = sparse["values"]
        dense[name] = full
    assert not recorded.get("low_rank"), "low-rank gradients are not part of plain GLIP"
    converted, regenerated, dropped = convert_official_state_dict(dense)
    assert not regenerated and not dropped, (list(regenerated), dropped)
    no_grad, _, _ = convert_official_state_dict(dict.fromkeys(recorded["none_grad_params"]))
    return converted, list(no_grad)


def test_gradients_match(step):
    ref, no_grad = _official_grads()
    ours = step["grads"]
    assert set(ref) | set(no_grad) == set(ours), (
        f"only official: {sorted(set(ref) | set(no_grad) - set(ours))}; "
        f"only ours: {sorted(set(ours) - set(ref) - set(no_grad))}"
    )
    for name in no_grad:
        assert ours[name] is None, f"{name} has a gradient; the official model freezes it"
    global_max = max(float(g.abs().max()) for g in ref.values())
    atol = GRAD_ATOL * global_max
    for name, expected in ref.items():
        got = ours[name]
        assert got is not None, f"{name} got no gradient"
        # BERT key biases have a mathematically zero gradient (softmax shift invariance);
        # the recorded values are rounding noise, so only the absolute bound applies.
        rtol = 0.0 if name.endswith("key.bias") else GRAD_RTOL
        torch.testing.assert_close(
            got, expected, atol=atol, rtol=rtol, msg=lambda m, n=name: f"grad of {n}: {m}"
        )
        if rtol and float(expected.abs().max()) >= GRAD_SIGNIFICANT * global_max:
            rel = float((got - expected).norm() / expected.norm())
            assert rel <= GRAD_REL_L2, f"grad of {name}: relative L2 error {rel:.2e}"
