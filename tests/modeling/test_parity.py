"""Parity with the official GLIP code on the recorded fixture (../shared/reference/parity).

The fixture folder comes from ``GLIP_PARITY_FIXTURE`` (default: the shared reference fixture);
any fixture of the same format works: the glip_d2 config is built from the fixture's official
``config.yaml`` and ``bert_config.json`` through ``tools/convert_glip_config.py``.
"""

import os
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(
    os.environ.get("GLIP_PARITY_FIXTURE", ROOT.parent / "shared" / "reference" / "parity")
).resolve()
TOL = dict(atol=1e-4, rtol=1e-4)

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model.pth").is_file(), reason=f"parity fixture not found at {FIXTURE}"
)


def _load(name):
    return torch.load(FIXTURE / name, map_location="cpu", weights_only=False)


@pytest.fixture(
    scope="module",
    params=[("reassociated", "auto"), ("reference", "reference")],
    ids=["fast", "reference"],
)
def parity(parity_cfg, request):
    """The fixture model on the default (fast) fusion attention and deformable-conv kernels,
    and on the reference ones."""
    cfg = parity_cfg.clone()
    cfg.MODEL.FUSION.ATTENTION_IMPL, cfg.MODEL.GLIP_HEAD.DEFORM_CONV_IMPL = request.param
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    incompatible = model.load_state_dict(_load("model.pth"), strict=False)
    return {
        "cfg": cfg,
        "model": model,
        "incompatible": incompatible,
        "inputs": _load("inputs.pth"),
        "outputs": _load("outputs.pth"),
    }


@pytest.fixture(scope="module")
def raw(parity):
    model, inputs = parity["model"], parity["inputs"]
    with torch.no_grad():
        features = [model.backbone(inputs["image_tensor"])[f] for f in model.in_features]
        logits, deltas, ctr, _ = model.run_head(
            features, inputs["input_ids"], inputs["attention_mask"]
        )
    return features, logits, deltas, ctr


def test_official_state_dict_loads_exactly(parity):
    assert parity["incompatible"].missing_keys == []
    assert parity["incompatible"].unexpected_keys == []


def test_detection_checkpointer_reads_official_file(parity, tmp_path):
    model = build_model(parity["cfg"])
    DetectionCheckpointer(model).load(str(FIXTURE / "model.pth"))
    ref = parity["model"].state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key


def test_anchors_match(parity, raw):
    features = raw[0]
    ours = parity["model"].anchors(features)
    for level, (a, b) in enumerate(zip(ours, parity["outputs"]["anchors"])):
        torch.testing.assert_close(a, b, msg=f"anchors of level {level}", atol=0, rtol=0)


def test_raw_head_outputs_match(parity, raw):
    _, logits, deltas, ctr = raw
    out = parity["outputs"]
    for level in range(len(logits)):
        torch.testing.assert_close(
            logits[level], out["dot_product_logits"][level], **TOL, msg=f"logits P{level + 3}"
        )
        torch.testing.assert_close(
            deltas[level], out["bbox_regression"][level], **TOL, msg=f"deltas P{level + 3}"
        )
        torch.testing.assert_close(
            ctr[level], out["centerness"][level], **TOL, msg=f"centerness P{level + 3}"
        )


def _match_as_sets(boxes, scores, labels, ref_boxes, ref_scores, ref_labels, tol=1e-3):
    assert len(boxes) == len(ref_boxes), (len(boxes), len(ref_boxes))
    unused = set(range(len(boxes)))
    for rb, rs, rl in zip(ref_boxes, ref_scores, ref_labels):
        hit = [
            i
            for i in unused
            if labels[i] == rl
            and (boxes[i] - rb).abs().max() <= tol
            and abs(float(scores[i] - rs)) <= tol
        ]
        assert hit, (
            f"official detection {rb.tolist()} label {int(rl)} score {float(rs):.4f} missing"
        )
        unused.remove(hit[0])


def test_final_detections_match(parity, raw):
    model, inputs, out = parity["model"], parity["inputs"], parity["outputs"]
    features, logits, deltas, ctr = raw
    positive_map = inputs["positive_map_dense"] > 0
    with torch.no_grad():
        boxes, scores, labels = model.detect(
            logits,
            deltas,
            ctr,
            model.anchors(features),
            0,
            positive_map,
            tuple(inputs["image_size_hw"]),
        )
    labels = torch.as_tensor(inputs["positive_map_labels"])[labels]
    ref = out["detections"]
    _match_as_sets(boxes, scores, labels, ref["boxes"], ref["scores"], ref["labels"])


def test_end_to_end_forward_matches(parity):
    """Through ``GLIP.forward`` with a Detectron2 input dict: the official network input is
    un-normalised back to BGR pixels; boxes come out in Detectron2's convention (+1)."""
    model, inputs, out = parity["model"], parity["inputs"], parity["outputs"]
    h, w = inputs["image_size_hw"]
    std = torch.tensor(parity["cfg"].MODEL.PIXEL_STD).view(3, 1, 1)
    mean = torch.tensor(parity["cfg"].MODEL.PIXEL_MEAN).view(3, 1, 1)
    image = inputs["image_tensor"][0, :, :h, :w] * std + mean
    k = len(inputs["positive_map_labels"])
    batch = [
        {
            "image": image,
            "height": h,
            "width": w,
            "input_ids": inputs["input_ids"][0],
            "attention_mask": inputs["attention_mask"][0],
            "positive_map": inputs["positive_map_dense"] > 0,
            "prompt_class_ids": torch.as_tensor(inputs["positive_map_labels"]) - 1,
            "phrases": list(inputs["label_names"][:k]),
        }
    ]
    with torch.no_grad():
        inst = model(batch)[0]["instances"]
    ref = out["detections"]
    boxes = inst.pred_boxes.tensor.clone()
    boxes[:, 2:] -= 1  # back to the official inclusive convention
    _match_as_sets(
        boxes, inst.scores, inst.pred_classes + 1, ref["boxes"], ref["scores"], ref["labels"]
    )
    names = list(inputs["label_names"])
    assert [names[c] for c in inst.pred_classes.tolist()] == list(inst.pred_phrases)
