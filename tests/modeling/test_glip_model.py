"""The GLIP meta-architecture on the tiny config: training step, inference, conventions."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from synthetic_inputs import model_input, prompt_tensors

from glip_d2.config import add_glip_config
from glip_d2.modeling.fusion import VLFuse
from glip_d2.utils.checkpoint import PREFIX_TABLE, is_official_glip_state_dict

ROOT = Path(__file__).resolve().parents[2]
L = 256


@pytest.fixture(scope="module")
def tiny_model_cfg():
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _prompt(num_entries=2):
    """'[CLS] red circle . blue square [SEP]' style ids: entry k covers tokens 3k+1..3k+2."""
    return prompt_tensors(num_entries, first_id=1000)


def _item(boxes, classes, h=128, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, mask, pmap = _prompt()
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    inst.gt_positive_map = pmap[inst.gt_classes] if len(classes) else pmap[:0]
    return model_input(
        g,
        h,
        w,
        ids,
        mask,
        pmap,
        prompt_class_ids=torch.tensor([4, 7]),
        phrases=["red circle", "blue square"],
        instances=inst,
    )


def test_train_step_finite_losses_and_gradients(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    model.train()
    batch = [
        _item([[10, 20, 60, 90], [80, 30, 150, 120]], [0, 1], seed=1),
        _item([], [], h=96, w=128, seed=2),  # an image without boxes
    ]
    losses = model(batch)
    assert set(losses) == {"loss_token", "loss_giou", "loss_centerness"}
    for name, value in losses.items():
        assert torch.isfinite(value), name
        assert value > 0, name
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert no_grad == []
    nonfinite = [
        n
        for n, p in model.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert nonfinite == []
    # The unused official cls_logits conv is frozen (reference §5.3).
    assert not model.head.cls_logits.weight.requires_grad


@pytest.mark.parametrize(
    "dot_product, num_convs, fusion",
    [
        ("backbone", 1, "MHA-B"),
        ("backbone", 2, "MHA-B"),
        ("fused", 2, "MHA-B"),
        ("fused", 2, "none"),
    ],
)
def test_every_trainable_parameter_gets_a_gradient(tiny_model_cfg, dot_product, num_convs, fusion):
    """DistributedDataParallel (without find_unused_parameters) needs a gradient for every
    trainable parameter in every step; with the backbone's features in the dot product the
    last fusion block's text update would reach no loss."""
    cfg = tiny_model_cfg.clone()
    cfg.MODEL.FUSION.DOT_PRODUCT_FEATURES = dot_product
    cfg.MODEL.FUSION.TYPE = fusion
    cfg.MODEL.GLIP_HEAD.NUM_CONVS = num_convs
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = [_item([[10, 20, 60, 90]], [0], seed=1), _item([], [], h=96, w=128, seed=2)]
    sum(model(batch).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


@pytest.mark.parametrize("layout", ["official", "glip_d2"])
def test_checkpoint_with_unused_text_update_loads(tiny_model_cfg, layout, caplog):
    """A checkpoint of a backbone-dot-product model that has the last fusion's text update
    (the official model builds it; so did glip_d2 before) loads strictly into the model that
    leaves it out."""
    cfg = tiny_model_cfg.clone()
    cfg.MODEL.FUSION.DOT_PRODUCT_FEATURES = "backbone"
    cfg.MODEL.GLIP_HEAD.NUM_CONVS = 2
    source_cfg = cfg.clone()
    source_cfg.MODEL.FUSION.DOT_PRODUCT_FEATURES = "fused"
    torch.manual_seed(0)
    source = build_model(source_cfg)
    # The official tower has no parameters at the last BERT-layer slot (a DummyLayer).
    state = {
        k: v for k, v in source.state_dict().items() if not k.startswith("head.dyhead_tower.4.")
    }
    assert {f"head.dyhead_tower.3.{k}" for k in VLFuse.TEXT_UPDATE_KEYS} <= set(state)
    if layout == "official":
        renamed = {}
        for key, value in state.items():
            for official, ours in PREFIX_TABLE:
                if key.startswith(ours):
                    key = official + key[len(ours) :]
                    break
            renamed[key] = value
        state = renamed
        assert is_official_glip_state_dict(state)
    torch.manual_seed(1)
    model = build_model(cfg)
    with caplog.at_level("INFO", logger="glip_d2.modeling.fusion.bi_attention"):
        model.load_state_dict(state, strict=True)
    assert "head.dyhead_tower.3.b_attn.gamma_l" in caplog.text
    loaded = model.state_dict()
    for key, value in source.state_dict().items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key


def test_train_step_with_only_empty_images(tiny_model_cfg):
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg)
    model.train()
    losses = model([_item([], [], seed=3)])
    assert losses["loss_giou"] == 0 and losses["loss_centerness"] == 0
    assert torch.isfinite(losses["loss_token"]) and losses["loss_token"] > 0
    sum(losses.values()).backward()


def test_inference_returns_instances_in_original_pixels(tiny_model_cfg):
    torch.manual_seed(0)
    cfg = tiny_model_cfg.clone()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0  # keep candidates from a random model
    model = build_model(cfg)
    model.eval()
    item = _item([], [], h=128, w=160)
    item.pop("instances")
    item["height"], item["width"] = 256, 320  # the original image was twice as large
    with torch.no_grad():
        inst = model([item])[0]["instances"]
    assert isinstance(inst, Instances)
    assert inst.image_size == (256, 320)
    assert 0 < len(inst) <= cfg.MODEL.ATSS.DETECTIONS_PER_IMG
    assert set(inst.pred_classes.tolist()) <= {4, 7}
    names = {4: "red circle", 7: "blue square"}
    assert list(inst.pred_phrases) == [names[c] for c in inst.pred_classes.tolist()]
    boxes = inst.pred_boxes.tensor
    # Inclusive boxes clipped to [0, w-1] in the 160-wide input, x2 then +1, scaled by 2.
    assert boxes[:, 0].min() >= 0 and boxes[:, 2].max() <= 2 * 159 + 1 + 1e-4
    assert (inst.scores <= 1).all() and (inst.scores > 0).all()
    sub = inst[inst.scores > inst.scores.median()]  # Instances indexing keeps phrases aligned
    assert len(sub.pred_phrases) == len(sub)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 2)])
def test_boxes_stay_inside_an_upscaled_original_image(tiny_model_cfg, height, width):
    """An original image smaller than the network input (a 1x1 image resized to 128x160):
    the boxes stay inside it on both axes."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg.clone()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    model = build_model(cfg).eval()
    item = _item([], [], h=128, w=160)
    item.pop("instances")
    item["height"], item["width"] = height, width
    with torch.no_grad():
        inst = model([item])[0]["instances"]
    assert len(inst) > 0 and inst.image_size == (height, width)
    boxes = inst.pred_boxes.tensor
    assert boxes.min() >= 0
    assert boxes[:, 0::2].max() <= width and boxes[:, 1::2].max() <= height
    # Boxes at the edge of the input still reach the image's edge.
    assert boxes[:, 2].max() == width


def test_chunked_vocabulary_equals_running_each_chunk(tiny_model_cfg):
    """Backbone once + head per chunk gives what the full model gives per chunk."""
    torch.manual_seed(0)
    cfg = tiny_model_cfg.clone()
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    model = build_model(cfg)
    model.eval()

    def chunk(offset, class_ids, phrases):
        ids, mask, pmap = _prompt(len(class_ids))
        ids[1 : mask.sum() - 1] += offset
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "positive_map": pmap,
            "prompt_class_ids": torch.tensor(class_ids),
            "phrases": phrases,
        }

    chunks = [chunk(0, [0, 1], ["a", "b"]), chunk(50, [2, 3, 4], ["c", "d", "e"])]
    # Same size: a smaller image is zero-padded in the batch, and the padding changes what the
    # Swin windows, the DyHead normalisation and pooling and the fusion see.
    images = [_item([], [], seed=5), _item([], [], seed=6)]
    for im in images:
        im.pop("instances")
    with torch.no_grad():
        chunked = model(
            [dict(images[0], prompt_chunks=chunks), dict(images[1], prompt_chunks=chunks[:1])]
        )
        single = [[model([dict(im, **c)])[0]["instances"] for c in chunks] for im in images]
    for i, expected_parts in enumerate([single[0], single[1][:1]]):
        got = chunked[i]["instances"]
        expected = Instances.cat(expected_parts) if len(expected_parts) > 1 else expected_parts[0]
        assert len(got) == len(expected) > 0
        torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        torch.testing.assert_close(got.scores, expected.scores)
        assert torch.equal(got.pred_classes, expected.pred_classes)
        assert list(got.pred_phrases) == list(expected.pred_phrases)
    assert set(chunked[0]["instances"].pred_classes.tolist()) == {0, 1, 2, 3, 4}


def test_resnet_body_variant_trains(tiny_model_cfg):
    """The R50 backbone variant (Detectron2 ResNet + GLIP FPN) in the tiny model."""
    cfg = tiny_model_cfg.clone()
    cfg.merge_from_list(
        [
            "MODEL.BACKBONE.NAME",
            "build_glip_resnet_fpn_backbone",
            "MODEL.RESNETS.DEPTH",
            50,
            "MODEL.RESNETS.NORM",
            "BN",
            "MODEL.RESNETS.OUT_FEATURES",
            ["res3", "res4", "res5"],
            "MODEL.GLIP_FPN.IN_FEATURES",
            ["res3", "res4", "res5"],
            "MODEL.BACKBONE.FREEZE_AT",
            2,
        ]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    shapes = model.backbone.output_shape()
    assert [shapes[f].stride for f in model.in_features] == [8, 16, 32, 64, 128]
    losses = model([_item([[10, 20, 60, 90]], [0], seed=1)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.body.res3[0].conv1.weight.grad is not None
    assert not model.backbone.body.stem.conv1.weight.requires_grad
