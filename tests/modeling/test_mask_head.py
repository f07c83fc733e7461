"""The GLIPv2 VL mask head: the official parameter inventory, the official level rule, the
mask loss against an independent computation, training steps on images without masks or
boxes, and ``pred_masks`` at inference."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.poolers import assign_boxes_to_levels
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Boxes, Instances, PolygonMasks
from synthetic_inputs import model_input, prompt_tensors
from torchvision.ops import roi_align

from glip_d2.config import add_glip_config
from glip_d2.modeling.mask_head import assign_levels_inclusive

ROOT = Path(__file__).resolve().parents[2]
L = 256


def _cfg(**overrides):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.FUSION.DROPOUT = 0.0
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def _head(channels, lang_dim, **overrides):
    cfg = _cfg(**overrides)
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(
        cfg, ShapeSpec(channels=channels), lang_dim=lang_dim
    )


def test_parameter_inventory_is_the_official_one():
    """GLIPv2 reference §4.2: official CONV_LAYERS 4 x 256, BERT-base tokens; every conv 3x3
    (the builder's third argument is the dilation: 1, 3, 1), official names."""
    head = _head(256, 768, **{"MODEL.ROI_MASK_HEAD.NUM_HOURGLASS": 4})
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = {}
    for i in range(1, 5):
        for block in ("up1", "low1", "low2", "low3"):
            prefix = f"feature_extractor.mask_hg{i}.{block}."
            for conv, shape in (
                ("conv1", (128, 256)),
                ("conv2", (128, 128)),
                ("conv3", (256, 128)),
            ):
                expected[prefix + conv + ".weight"] = shape + (3, 3)
                expected[prefix + conv + ".bias"] = shape[:1]
    expected.update(
        {
            "predictor.conv5_mask.weight": (256, 256, 2, 2),
            "predictor.conv5_mask.bias": (256,),
            "predictor.dot_product_projection_text.weight": (256, 768),
            "predictor.dot_product_projection_text.bias": (256,),
            "predictor.log_scale": (1,),
            "predictor.bias_lang": (768,),
        }
    )
    assert shapes == expected
    res = head.feature_extractor.mask_hg1.low2
    assert [c.dilation for c in (res.conv1, res.conv2, res.conv3)] == [(1, 1), (3, 3), (1, 1)]
    assert [c.padding for c in (res.conv1, res.conv2, res.conv3)] == [(1, 1), (3, 3), (1, 1)]
    # 14x14 ROIs -> 28x28 logits
    feats = [torch.randn(1, 256, 16, 16)] + [torch.randn(1, 256, n, n) for n in (8, 4, 2, 1)]
    out = head(
        feats,
        [torch.tensor([[4.0, 4.0, 60.0, 40.0]])],
        torch.randn(1, 5, 768),
        [torch.tensor([[False, True, True, False, False]])],
    )
    assert out.shape == (1, 28, 28)


def test_hourglass_scale_must_fit_the_roi_size():
    with pytest.raises(ValueError, match="HG_SCALE"):
        _head(16, 8, **{"MODEL.ROI_MASK_HEAD.HG_SCALE": 2})


def test_levels_use_the_official_plus_one_area():
    """An inclusive box 224 pixels wide (x2 - x1 = 223) is level 4 by the official rule;
    Detectron2's continuous rule applied to the same numbers would say level 3."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 223.0, 223.0],  # +1 area 224^2 -> level 4
            [0.0, 0.0, 222.0, 222.0],  # 223^2 -> level 3
            [0.0, 0.0, 2000.0, 2000.0],  # clamped to 7
            [5.0, 5.0, 5.0, 5.0],  # a 1-pixel box -> clamped to 3
            [0.0, 0.0, 447.0, 447.0],  # 448^2 -> level 5
        ]
    )
    assert assign_levels_inclusive(boxes, 3, 7).tolist() == [1, 0, 4, 0, 2]
    assert assign_boxes_to_levels([Boxes(boxes[:1])], 3, 7, 224, 4).tolist() == [0]


def _rect(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


@pytest.mark.parametrize("box_only", ["skip", "box"])
def test_mask_loss_equals_an_independent_computation(box_only):
    torch.manual_seed(0)
    c, d, n_tok = 8, 6, 7
    head = _head(c, d)
    feats = [torch.randn(1, c, 64 // s, 64 // s) for s in (8, 16, 32, 64)] + [
        torch.randn(1, c, 1, 1)
    ]
    feats[0] = torch.randn(1, c, 32, 32)  # P3 of a 256 x 256 input (stride 8)
    text = torch.randn(1, n_tok, d)
    # GT A (inclusive [8, 8, 36, 36], 29 px) with a polygon on its left part; GT B box-only.
    gt_boxes = torch.tensor([[8.0, 8.0, 36.0, 36.0], [40.0, 0.0, 60.0, 30.0]])
    token_maps = torch.zeros(2, n_tok, dtype=torch.bool)
    token_maps[0, [1, 2]] = True
    token_maps[1, 4] = True
    if box_only == "skip":
        masks = PolygonMasks([_rect(8, 8, 22, 36), _rect(0, 0, 1, 1)])
        valid = torch.tensor([True, False])
    else:  # what the mapper gives a box-only annotation in "box" mode: its rectangle
        masks = PolygonMasks([_rect(8, 8, 22, 36), _rect(40, 0, 61, 31)])
        valid = torch.tensor([True, True])
    rois = torch.tensor(
        [
            [8.0, 8.0, 36.0, 36.0],  # = A: IoU 1
            [10.0, 8.0, 38.0, 36.0],  # IoU 27/31 with A
            [40.0, 40.0, 60.0, 60.0],  # IoU 0 with both
            [40.0, 0.0, 60.0, 30.0],  # = B
            [8.0, 8.0, 60.0, 60.0],  # IoU < 0.5 with both
        ]
    )
    step = head.training_step(feats, [rois], text, [gt_boxes], [token_maps], [masks], [valid])

    # Independent computation. ROI widths (x2 - x1) are 28, so the crop scale is 1 and the
    # targets are known: A's polygon spans x 8..22, i.e. columns [0, 14) of ROI 0 and [0, 12)
    # of ROI 1 (shifted by 2); B's rectangle covers its whole ROI.
    positives = [0, 1] + ([3] if box_only == "box" else [])
    assert step.matched.tolist() == [0, 0, -1, 1, -1]
    assert step.positive.tolist() == positives
    targets = torch.zeros(len(positives), 28, 28)
    targets[0, :, :14] = 1
    targets[1, :, :12] = 1
    if box_only == "box":
        targets[2] = 1
    assert torch.equal(step.targets, targets)
    # All these ROIs are level 3 (P3, stride 8): sqrt(+1 area) < 224.
    pooled = roi_align(
        feats[0], torch.cat([torch.zeros(5, 1), rois], 1)[positives], 14, 1 / 8, 0, aligned=False
    )
    pixels = F.relu(head.predictor.conv5_mask(head.feature_extractor(pooled)))
    e = F.normalize(text[0], dim=-1)
    tokens = (e / 2) @ head.predictor.dot_product_projection_text.weight.t()
    tokens = tokens + head.predictor.dot_product_projection_text.bias
    bias = e @ head.predictor.bias_lang
    per_token = torch.einsum("rchw,lc->rlhw", pixels, tokens) / head.predictor.log_scale.exp()
    per_token = per_token + bias[None, :, None, None]
    gt_of = [0, 0, 1][: len(positives)]
    logits = torch.stack([per_token[k, token_maps[g]].mean(0) for k, g in enumerate(gt_of)])
    p = logits.sigmoid()
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    torch.testing.assert_close(step.logits, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.loss, expected, rtol=1e-5, atol=1e-6)


def _item(boxes, n_entries=2, h=96, w=128, seed=0, masks=None, valid=None):
    g = torch.Generator().manual_seed(seed)
    ids, attn, pmap = prompt_tensors(n_entries, first_id=2000)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    entries = torch.arange(len(boxes)) % n_entries
    inst.gt_classes = entries
    inst.gt_positive_map = pmap[entries]
    if masks is not None:
        inst.gt_masks = masks
    if valid is not None:
        inst.gt_mask_valid = valid
    return model_input(
        g,
        h,
        w,
        ids,
        attn,
        pmap,
        image_id=seed,
        prompt_class_ids=torch.arange(n_entries),
        phrases=[f"thing {k}" for k in range(n_entries)],
        instances=inst,
    )


@pytest.mark.parametrize("proposals", ["atss+gt", "gt"])
def test_training_step_on_images_without_masks_or_boxes_is_finite(proposals):
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.ROI_MASK_HEAD.TRAIN_PROPOSALS": proposals})).train()
    boxes = [[10, 10, 50, 60], [60, 20, 120, 90]]
    polys = PolygonMasks([_rect(10, 10, 50, 60), _rect(60, 20, 120, 90)])
    no_masks = _item(boxes, seed=1, masks=polys, valid=torch.tensor([False, False]))
    no_boxes = _item([], seed=2, masks=PolygonMasks([]), valid=torch.zeros(0, dtype=torch.bool))
    losses = model([no_masks, no_boxes])
    assert "loss_mask" in losses
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert float(losses["loss_mask"]) == 0.0
    sum(losses.values()).backward()
    head_grads = [p.grad for n, p in model.named_parameters() if n.startswith("mask_head.")]
    assert head_grads and all(g is not None for g in head_grads)

    with_masks = _item(boxes, seed=1, masks=polys)  # no gt_mask_valid: every mask counts
    step = model.forward_train([with_masks, no_boxes])
    assert float(step.losses["loss_mask"]) > 0
    assert len(step.mask.positive) >= 2  # at least the GT boxes themselves
    if proposals == "gt":
        assert [len(r) for r in step.mask_rois] == [2, 0]


def test_missing_gt_masks_names_the_field():
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    with pytest.raises(KeyError, match="gt_masks"):
        model([_item([[10, 10, 50, 60]])])


def test_unknown_train_proposals_is_an_error():
    with pytest.raises(ValueError, match="TRAIN_PROPOSALS"):
        build_model(_cfg(**{"MODEL.ROI_MASK_HEAD.TRAIN_PROPOSALS": "rpn"}))


def test_inference_gives_pasted_masks_for_every_detection_and_chunk():
    torch.manual_seed(0)
    cfg = _cfg(**{"MODEL.ATSS.INFERENCE_TH": 0.0})
    model = build_model(cfg).eval()
    x = _item([[10, 10, 50, 60]], h=96, w=128)
    del x["instances"]
    x["height"], x["width"] = 192, 256  # the original image is twice the network input
    with torch.no_grad():
        inst = model([x])[0]["instances"]
        chunks = dict(x, prompt_chunks=[dict(x), dict(x, prompt_class_ids=torch.tensor([5, 6]))])
        both = model([chunks])[0]["instances"]
    assert len(inst) > 0
    assert inst.pred_masks.dtype == torch.bool
    assert tuple(inst.pred_masks.shape) == (len(inst), 192, 256)
    # A pasted mask lies inside its (slightly enlarged) box.
    for box, m in zip(inst.pred_boxes.tensor, inst.pred_masks):
        ys, xs = m.nonzero(as_tuple=True)
        if len(xs):
            assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
            assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2
    assert len(both) == 2 * len(inst)
    assert torch.equal(both.pred_masks[: len(inst)], inst.pred_masks)
