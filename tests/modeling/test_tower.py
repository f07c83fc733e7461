"""VL-DyHead tower: parity with the official GLIP, official key names, gradients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from glip_d2.modeling.fusion import VLFuse
from glip_d2.modeling.head import build_vldyhead_tower

_SHARED = (Path(__file__).resolve().parents[2] / ".." / "shared" / "reference").resolve()
FIXTURE_DIR = Path(os.environ.get("GLIP_PARITY_FIXTURE", _SHARED / "parity")).resolve()
REFERENCE_DIR = Path(os.environ.get("GLIP_REFERENCE_DIR", _SHARED)).resolve()
TOWER_PREFIX = "rpn.head.dyhead_tower."


def _tiny_bert_config() -> BertConfig:
    return BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64)


def _tiny_tower(**overrides) -> torch.nn.Sequential:
    kwargs = dict(
        num_convs=2,
        channels=32,
        lang_dim=32,
        bert_config=_tiny_bert_config(),
        fusion_type="MHA-B",
        fused_dot_product=True,
        fusion_embed_dim=64,
        fusion_num_heads=4,
        fusion_dropout=0.1,
        num_groups=4,
        use_dyrelu=True,
        use_dyfuse=True,
        use_deform=True,
        use_checkpoint=True,
    )
    kwargs.update(overrides)
    return build_vldyhead_tower(**kwargs)


def _tiny_state(batch: int = 2, channels: int = 32, lang_dim: int = 32, tokens: int = 7):
    # Level sizes as a /32-padded 128x160 image gives them (P6/P7 rounded up).
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    masks = torch.ones(batch, tokens, dtype=torch.long)
    masks[:, tokens - 2 :] = 0
    hidden = torch.randn(batch, tokens, lang_dim)
    return {
        "visual": [torch.randn(batch, channels, h, w) for h, w in sizes],
        "lang": {"hidden": hidden, "masks": masks, "embedded": hidden * masks[..., None]},
    }


@pytest.fixture(scope="module")
def parity():
    if not (FIXTURE_DIR / "intermediates.pth").is_file():
        pytest.skip(f"parity fixture not found in {FIXTURE_DIR}")
    import yaml

    with open(FIXTURE_DIR / "config.yaml") as f:
        cfg = yaml.safe_load(f)["MODEL"]
    return {
        "cfg": cfg,
        "bert_config": BertConfig.from_json_file(str(FIXTURE_DIR / "bert_config.json")),
        "model": torch.load(FIXTURE_DIR / "model.pth", map_location="cpu", weights_only=True),
        "inter": torch.load(
            FIXTURE_DIR / "intermediates.pth", map_location="cpu", weights_only=True
        ),
    }


def test_tower_matches_official_after_every_module(parity):
    cfg, inter = parity["cfg"], parity["inter"]
    dy, fuse = cfg["DYHEAD"], cfg["DYHEAD"]["FUSE_CONFIG"]
    tower = build_vldyhead_tower(
        num_convs=dy["NUM_CONVS"],
        channels=dy["CHANNELS"],
        lang_dim=cfg["LANGUAGE_BACKBONE"]["LANG_DIM"],
        bert_config=parity["bert_config"],
        fusion_type=fuse["TYPE"] if fuse["EARLY_FUSE_ON"] else "none",
        fused_dot_product=fuse["USE_FUSED_FEATURES_DOT_PRODUCT"],
        fusion_embed_dim=2048,
        fusion_num_heads=8,
        fusion_dropout=0.1,
        num_groups=cfg["GROUP_NORM"]["NUM_GROUPS"],
        use_dyrelu=dy["USE_DYRELU"],
        use_dyfuse=dy["USE_DYFUSE"],
        use_deform=dy["USE_DFCONV"],
        use_checkpoint=dy["USE_CHECKPOINT"],
    )
    weights = {
        k[len(TOWER_PREFIX) :]: v for k, v in parity["model"].items() if k.startswith(TOWER_PREFIX)
    }
    tower.load_state_dict(weights, strict=True)
    tower.eval()

    lang = {k: inter["lang"][k] for k in ("hidden", "embedded", "masks")}
    state = {"visual": list(inter["fpn"]), "lang": lang}
    with torch.no_grad():
        for index, module in enumerate(tower):
            state = module(state)
            (key,) = [k for k in inter if k.startswith(f"tower.{index}.")]
            expected = inter[key]
            assert len(state["visual"]) == len(expected["visual"])
            for level, (got, ref) in enumerate(zip(state["visual"], expected["visual"])):
                where = f"{key} visual P{level + 3}"
                torch.testing.assert_close(
                    got, ref, atol=1e-4, rtol=1e-4, msg=lambda m, where=where: f"{where}: {m}"
                )
            torch.testing.assert_close(
                state["lang"]["hidden"],
                expected["lang_hidden"],
                atol=1e-4,
                rtol=1e-4,
                msg=lambda m, key=key: f"{key} lang hidden: {m}",
            )
            # Only the hidden text features are updated by the tower.
            assert state["lang"]["embedded"] is lang["embedded"]
            assert state["lang"]["masks"] is lang["masks"]


def _read_tsv_shapes(path: Path) -> dict:
    shapes = {}
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        name_col, shape_col = header.index("name"), header.index("shape")
        for line in f:
            row = line.rstrip("\n").split("\t")
            if row[name_col].startswith(TOWER_PREFIX):
                shapes[row[name_col][len(TOWER_PREFIX) :]] = row[shape_col]
    return shapes


@pytest.mark.parametrize(
    "tsv, num_convs, fusion_type, fused_dot_product",
    [
        ("glip_Swin_T_O365_GoldG_state_dict.tsv", 6, "MHA-B", True),  # GLIP-T (C)
        ("glip_A_Swin_T_O365_state_dict.tsv", 6, "none", False),  # GLIP-T (A)
        ("glip_Swin_L_state_dict.tsv", 8, "MHA-B", True),  # GLIP-L
    ],
)
def test_full_size_tower_keys_match_official(tsv, num_convs, fusion_type, fused_dot_product):
    path = REFERENCE_DIR / tsv
    if not path.is_file():
        pytest.skip(f"{path} not found")
    # The meta device gives names and shapes without allocating ~100M parameters.
    with torch.device("meta"):
        tower = build_vldyhead_tower(
            num_convs=num_convs,
            channels=256,
            lang_dim=768,
            bert_config=BertConfig(),
            fusion_type=fusion_type,
            fused_dot_product=fused_dot_product,
            fusion_embed_dim=2048,
            fusion_num_heads=8,
            fusion_dropout=0.1,
            num_groups=16,
            use_dyrelu=True,
            use_dyfuse=True,
            use_deform=True,
            use_checkpoint=True,
        )
    ours = {k: "x".join(str(s) for s in v.shape) for k, v in tower.state_dict().items()}
    official = _read_tsv_shapes(path)
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert ours == official


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"fused_dot_product": False, "use_checkpoint": False},
        {"fusion_type": "none", "use_deform": False, "use_dyrelu": False, "use_dyfuse": False},
    ],
    ids=["fusion", "fusion-identity-last", "dyhead-only-plain-conv"],
)
def test_gradients_reach_every_parameter(overrides):
    torch.manual_seed(0)
    tower = _tiny_tower(**overrides).train()
    for module in tower.modules():
        if hasattr(module, "AttnConv") and module.AttnConv is not None:
            # Keep the ReLU in front of the hard sigmoid active so its conv gets a gradient.
            torch.nn.init.constant_(module.AttnConv[1].bias, 0.5)
    state = _tiny_state()
    out = tower(state)
    # Random weights: a plain sum would have zero gradient through the normalisations.
    loss = sum((x * torch.randn_like(x)).sum() for x in out["visual"])
    loss = loss + (out["lang"]["hidden"] * torch.randn_like(out["lang"]["hidden"])).sum()
    loss.backward()
    missing = [
        name
        for name, p in tower.named_parameters()
        if p.grad is None or not torch.any(p.grad != 0) or not torch.isfinite(p.grad).all()
    ]
    assert missing == []
    for got, ref in zip(out["visual"], state["visual"]):
        assert got.shape == ref.shape


def test_identity_layer_when_dot_product_uses_backbone_features():
    tower = _tiny_tower(num_convs=3, fused_dot_product=False)
    kinds = [type(m).__name__ for m in tower]
    assert kinds == ["VLFuse", "BertFusionLayer", "DyConv"] * 2 + ["VLFuse", "Identity", "DyConv"]
    assert [type(m).__name__ for m in _tiny_tower(fusion_type="none")] == ["DyConv"] * 2
    # Only the last fusion loses its text update (its output would reach no loss); the
    # official indices and every other key stay.
    full = _tiny_tower(num_convs=3, fused_dot_product=True).state_dict()
    dead = {f"6.{k}" for k in VLFuse.TEXT_UPDATE_KEYS} | {k for k in full if k.startswith("7.")}
    assert len(dead) == 5 + len([k for k in full if k.startswith("7.")])
    assert set(tower.state_dict()) == set(full) - dead


def test_fusion_without_text_update_keeps_image_outputs_and_loads_full_weights(caplog):
    torch.manual_seed(0)
    full = VLFuse(v_dim=32, l_dim=32, embed_dim=64, num_heads=4, init_values=0.5).eval()
    image_only = VLFuse(
        v_dim=32, l_dim=32, embed_dim=64, num_heads=4, init_values=0.5, update_lang=False
    ).eval()
    assert sorted(set(full.state_dict()) - set(image_only.state_dict())) == sorted(
        VLFuse.TEXT_UPDATE_KEYS
    )
    # A checkpoint of the full block (official, or glip_d2 before the text update was left
    # out) loads strictly: the text-update entries are dropped with a log line.
    with caplog.at_level("INFO", logger="glip_d2.modeling.fusion.bi_attention"):
        image_only.load_state_dict(full.state_dict(), strict=True)
    assert "b_attn.gamma_l" in caplog.text and "b_attn.attn.out_l_proj.weight" in caplog.text
    state = _tiny_state()
    with torch.no_grad():
        expected, got = full(state), image_only(state)
    for level, (a, b) in enumerate(zip(expected["visual"], got["visual"])):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=lambda m, lv=level: f"P{lv + 3}: {m}")
    # The tokens pass through unchanged.
    assert got["lang"]["hidden"] is state["lang"]["hidden"]
    assert not torch.equal(expected["lang"]["hidden"], state["lang"]["hidden"])


def test_text_attention_spans_all_levels_jointly():
    torch.manual_seed(0)
    fuse = VLFuse(v_dim=32, l_dim=32, embed_dim=64, num_heads=4, init_values=0.5).eval()
    state = _tiny_state()
    changed = {"visual": list(state["visual"]), "lang": state["lang"]}
    changed["visual"][4] = state["visual"][4] + torch.randn_like(state["visual"][4])
    with torch.no_grad():
        base, other = fuse(state), fuse(changed)
    # Tokens attend over the concatenation of all levels, so P7 alone moves every token ...
    delta = (base["lang"]["hidden"] - other["lang"]["hidden"]).abs().amax(dim=-1)
    assert bool((delta > 1e-6).all())
    # ... while image positions attend over tokens only, so P3 is unaffected.
    torch.testing.assert_close(base["visual"][0], other["visual"][0], atol=1e-6, rtol=0)
    # The input state is not modified.
    assert changed["lang"] is state["lang"] and state["visual"][4] is not changed["visual"][4]
