"""Swin + FPN backbone: parity with the official GLIP, checkpoint keys, shapes, freezing, grads."""

import csv
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone

from glip_d2.config import add_glip_config
from glip_d2.modeling.backbone import (
    DropBlock2d,
    GLIPSwinFPN,
    GLIPSwinTransformer,
    build_glip_swin_fpn_backbone,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (ROOT / ".." / "shared" / "reference").resolve()
FIXTURE = Path(os.environ.get("GLIP_PARITY_FIXTURE", REFERENCE / "parity")).resolve()
TOL = dict(atol=1e-4, rtol=1e-4)


def _cfg(**swin):
    """glip_d2 config of the reduced parity backbone (random weights unless loaded)."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.MODEL.SWIN.EMBED_DIM = 48
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 2, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [2, 3, 6, 12]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.GLIP_FPN.OUT_CHANNELS = 96
    for key, value in swin.items():
        setattr(cfg.MODEL.SWIN, key, value)
    return cfg


def _build(cfg):
    return build_glip_swin_fpn_backbone(cfg, ShapeSpec(channels=3))


def _fixture_cfg():
    """glip_d2 config from the fixture's resolved official config."""
    official = yaml.safe_load((FIXTURE / "config.yaml").read_text())["MODEL"]
    swint, bb, fpn = official["SWINT"], official["BACKBONE"], official["FPN"]
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.MODEL.SWIN.EMBED_DIM = swint["EMBED_DIM"]
    cfg.MODEL.SWIN.DEPTHS = list(swint["DEPTHS"])
    cfg.MODEL.SWIN.NUM_HEADS = list(swint["NUM_HEADS"])
    cfg.MODEL.SWIN.WINDOW_SIZE = swint["WINDOW_SIZE"]
    cfg.MODEL.SWIN.MLP_RATIO = float(swint["MLP_RATIO"])
    cfg.MODEL.SWIN.DROP_PATH_RATE = swint["DROP_PATH_RATE"]
    # The official body returns stage2 too (through the identity norm0); compare it as well.
    cfg.MODEL.SWIN.OUT_FEATURES = list(bb["OUT_FEATURES"])
    cfg.MODEL.BACKBONE.FREEZE_AT = bb["FREEZE_CONV_BODY_AT"]
    cfg.MODEL.GLIP_FPN.OUT_CHANNELS = bb["OUT_CHANNELS"]
    cfg.MODEL.GLIP_FPN.DROP_BLOCK = fpn["DROP_BLOCK"]
    cfg.MODEL.GLIP_FPN.DROP_PROB = fpn["DROP_PROB"]
    cfg.MODEL.GLIP_FPN.DROP_SIZE = fpn["DROP_SIZE"]
    return cfg


def test_parity_with_official_backbone():
    if not (FIXTURE / "model.pth").is_file():
        pytest.skip(f"parity fixture not found at {FIXTURE}")

    def load(name):
        return torch.load(FIXTURE / name, map_location="cpu", weights_only=False)

    model = _build(_fixture_cfg()).eval()
    state = {
        k[len("backbone.") :]: v for k, v in load("model.pth").items() if k.startswith("backbone.")
    }
    model.load_state_dict(state, strict=True)
    image = load("inputs.pth")["image_tensor"]
    expected = load("intermediates.pth")

    with torch.no_grad():
        stages = model.body(image)
        pyramid = model(image)

    for name, ref in zip(["stage2", "stage3", "stage4", "stage5"], expected["swin"]):
        torch.testing.assert_close(stages[name], ref, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    assert list(pyramid) == ["p3", "p4", "p5", "p6", "p7"]
    for name, ref in zip(pyramid, expected["fpn"]):
        torch.testing.assert_close(pyramid[name], ref, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def _reference_rows(tsv_name):
    with open(REFERENCE / tsv_name, newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["name"].startswith("backbone.")]
    return {
        r["name"][len("backbone.") :]: (
            tuple(int(d) for d in r["shape"].split("x")),
            r["kind"],
            r["dtype"],
        )
        for r in rows
    }


@pytest.mark.parametrize(
    "tsv_name, swin",
    [
        ("glip_Swin_T_O365_GoldG_state_dict.tsv", {}),
        (
            "glip_Swin_L_state_dict.tsv",
            dict(EMBED_DIM=192, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[6, 12, 24, 48], WINDOW_SIZE=12),
        ),
    ],
    ids=["swin_t", "swin_l"],
)
def test_state_dict_matches_official(tsv_name, swin):
    if not (REFERENCE / tsv_name).is_file():
        pytest.skip(f"{tsv_name} not found in {REFERENCE}")
    cfg = get_cfg()
    add_glip_config(cfg)
    for key, value in swin.items():
        setattr(cfg.MODEL.SWIN, key, value)
    # Shapes only: the meta device skips allocating and initialising the full-size weights.
    with torch.device("meta"):
        model = _build(cfg)
    params = {n for n, _ in model.named_parameters()}
    ours = {
        name: (tuple(t.shape), "param" if name in params else "buffer", str(t.dtype)[6:])
        for name, t in model.state_dict().items()
    }
    expected = _reference_rows(tsv_name)
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}


def test_registry_and_output_shape():
    cfg = _cfg()
    assert cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY
    model = build_backbone(cfg)
    assert isinstance(model, GLIPSwinFPN)
    assert isinstance(model.body, GLIPSwinTransformer)
    shapes = model.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p3": (96, 8),
        "p4": (96, 16),
        "p5": (96, 32),
        "p6": (96, 64),
        "p7": (96, 128),
    }
    assert model.size_divisibility == 32
    body_shapes = model.body.output_shape()
    assert {k: (v.channels, v.stride) for k, v in body_shapes.items()} == {
        "stage3": (96, 8),
        "stage4": (192, 16),
        "stage5": (384, 32),
    }


@pytest.mark.parametrize("hw", [(100, 150), (97, 61), (32, 32)])
def test_odd_input_sizes(hw):
    torch.manual_seed(0)
    model = _build(_cfg(OUT_FEATURES=["stage2", "stage3", "stage4", "stage5"])).eval()
    with torch.no_grad():
        stages = model.body(torch.randn(1, 3, *hw))
        pyramid = model(torch.randn(2, 3, *hw))
    h, w = math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)
    for i, name in enumerate(["stage2", "stage3", "stage4", "stage5"]):
        assert stages[name].shape == (1, 48 * 2**i, h, w), name
        if i >= 1:
            assert pyramid[f"p{i + 2}"].shape == (2, 96, h, w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    for name in ["p6", "p7"]:
        assert pyramid[name].shape == (2, 96, h, w), name
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    assert all(torch.isfinite(v).all() for v in pyramid.values())


@pytest.mark.parametrize("freeze_at", [-1, 0, 1, 2, 3])
def test_freeze_at(freeze_at):
    cfg = _cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = _build(cfg)
    model.train()
    body = model.body
    frozen_stages = max(freeze_at - 1, 0)
    embed_frozen = freeze_at >= 0
    assert all(p.requires_grad != embed_frozen for p in body.patch_embed.parameters())
    assert body.patch_embed.training != embed_frozen
    for i, stage in enumerate(body.layers):
        frozen = i < frozen_stages
        assert all(p.requires_grad != frozen for p in stage.parameters()), i
        assert all(m.training != frozen for m in stage.modules()), i
    assert all(p.requires_grad for p in model.fpn.parameters())
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith("norm"))


def test_gradients_reach_all_trainable_params():
    torch.manual_seed(0)
    # No stochastic depth: with one image it can drop a whole block and zero its gradients.
    cfg = _cfg(DROP_PATH_RATE=0.0)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    model = _build(cfg).train()
    outputs = model(torch.randn(1, 3, 96, 130))
    sum(v.square().mean() for v in outputs.values()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("body.layers.0.") for n in trainable)
    missing = [n for n, p in trainable.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_activation_checkpointing_gives_same_values_and_grads():
    cfg = _cfg(DROP_PATH_RATE=0.0)
    cfg.MODEL.GLIP_FPN.DROP_BLOCK = False
    torch.manual_seed(0)
    plain = _build(cfg).train()
    cfg.MODEL.SWIN.USE_CHECKPOINT = True
    ckpt = _build(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 64, 96)
    grads = []
    for model in (plain, ckpt):
        out = model(image)
        sum(v.sum() for v in out.values()).backward()
        grads.append(model.body.layers[1].blocks[1].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_drop_block_only_in_training():
    torch.manual_seed(0)
    model = _build(_cfg(DROP_PATH_RATE=0.0))
    image = torch.randn(1, 3, 128, 160)

    def run(seed):
        torch.manual_seed(seed)
        with torch.no_grad():
            return model(image)

    model.train()
    a, b = run(1), run(2)
    # DropBlock acts on the merged P4 and P3 maps only; P5 and P6/P7 (from P5) never see it.
    assert not torch.equal(a["p3"], b["p3"])
    assert not torch.equal(a["p4"], b["p4"])
    for name in ["p5", "p6", "p7"]:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)

    model.eval()
    c, d = run(1), run(2)
    for name in c:
        torch.testing.assert_close(c[name], d[name], atol=0, rtol=0)
    assert not torch.equal(a["p3"], c["p3"])


def test_drop_block_module():
    block = DropBlock2d(drop_prob=0.3, block_size=3)
    x = torch.ones(2, 4, 40, 40)
    block.eval()
    assert block(x) is x
    block.train()
    torch.manual_seed(0)
    y = block(x)
    # One mask per image shared by all channels, rescaled so the batch mean is preserved.
    assert torch.equal(y[:, :1].expand_as(y), y)
    dropped = y == 0
    assert 0 < dropped.float().mean() < 0.6
    torch.testing.assert_close(y.mean(), torch.tensor(1.0))
    kept = y[~dropped]
    torch.testing.assert_close(kept, torch.full_like(kept, kept[0].item()))
    # Dropped regions are unions of 3x3 squares: every zero has a 3x3 all-zero square around
    # some position containing it (erosion then dilation recovers the mask).
    zeros = dropped[:, :1].float()
    opened = -torch.nn.functional.max_pool2d(-zeros, 3, 1, 1)
    opened = torch.nn.functional.max_pool2d(opened, 3, 1, 1)
    assert torch.equal(opened, zeros)
