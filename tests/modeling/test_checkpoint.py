"""Official GLIP state dicts (names and shapes from ../shared/reference/*_state_dict.tsv) load
into the matching glip_d2 configs: no missing or unexpected keys, every tensor in its place."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg

from glip_d2.config import add_glip_config
from glip_d2.modeling import GLIP
from glip_d2.utils.checkpoint import GLIPCheckpointer

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(
    os.environ.get("GLIP_REFERENCE_DIR", ROOT.parent / "shared" / "reference")
).resolve()

CASES = [
    ("glip_swin_t.yaml", "glip_Swin_T_O365_GoldG_state_dict.tsv", 231_780_222),
    ("glip_a_swin_t.yaml", "glip_A_Swin_T_O365_state_dict.tsv", 151_430_526),
    ("glip_swin_l.yaml", "glip_Swin_L_state_dict.tsv", 430_422_384),
]

# Where the reference says each official part lives in glip_d2 (written out here, separately
# from glip_d2.utils.checkpoint, so that a wrong conversion table fails this test).
EXPECTED_PREFIX = {
    "backbone.body.": "backbone.body.",
    "backbone.fpn.": "backbone.fpn.",
    "language_backbone.body.model.": "language_backbone.model.",
    "rpn.head.": "head.",
}


def _read_tsv(name):
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference inventory {path} not found")
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _cfg(config_name):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / config_name))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _meta_model(cfg):
    with torch.device("meta"):
        return GLIP(cfg)


def _official_state_dict(rows):
    """Each tensor is filled with its row number (a zero-stride view, no memory)."""
    sd = {}
    for i, row in enumerate(rows):
        shape = [int(s) for s in row["shape"].split("x")] if row["shape"] else []
        if row["name"].startswith("rpn.anchor_generator.cell_anchors."):
            level = int(row["name"].rsplit(".", 1)[1])
            stride, size = 8 * 2**level, 64 * 2**level
            # Reference §6: centre (s-1)/2, x2 - x1 + 1 = size.
            c, h = (stride - 1) / 2, (size - 1) / 2
            sd[row["name"]] = torch.tensor([[c - h, c - h, c + h, c + h]])
            continue
        dtype = getattr(torch, row["dtype"].replace("torch.", ""))
        sd[row["name"]] = torch.tensor(i, dtype=dtype).expand(shape)
    return sd


def _expected_key(official):
    for old, new in EXPECTED_PREFIX.items():
        if official.startswith(old):
            return new + official[len(old) :]
    return None


@pytest.mark.parametrize("config_name, tsv, num_params", CASES, ids=[c[0] for c in CASES])
def test_official_inventory_loads_into_config(config_name, tsv, num_params):
    rows = _read_tsv(tsv)
    model = _meta_model(_cfg(config_name))
    assert sum(p.numel() for p in model.parameters()) == num_params
    sd = _official_state_dict(rows)
    result = model.load_state_dict(sd, strict=False, assign=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    ours = model.state_dict()
    checked = 0
    for i, row in enumerate(rows):
        key = _expected_key(row["name"])
        if key is None:
            assert row["name"].startswith("rpn.anchor_generator."), row["name"]
            continue
        value = ours[key]
        assert list(value.shape) == list(sd[row["name"]].shape), key
        assert value.numel() == 0 or int(value.reshape(-1)[0]) == i, (
            f"{row['name']} did not land in {key}"
        )
        checked += 1
    assert checked == len(ours)


def test_shape_mismatch_is_an_error_naming_key_and_shapes(tmp_path):
    cfg = _cfg("glip_a_swin_t.yaml")
    cfg.MODEL.SWIN.EMBED_DIM = 48  # make the Swin narrower than the checkpoint
    cfg.MODEL.SWIN.NUM_HEADS = [2, 3, 6, 12]
    model = GLIP(cfg)
    rows = _read_tsv("glip_A_Swin_T_O365_state_dict.tsv")
    sd = {k: v.clone() for k, v in _official_state_dict(rows).items()}
    path = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    with pytest.raises(ValueError, match=r"backbone\.body\.patch_embed\.proj\.weight.*96.*48"):
        GLIPCheckpointer(model).load(str(path))


def test_convert_checkpoint_tool_round_trip(tmp_path):
    """The official file (module. prefix, model key, old position_ids, prompt-tuning layer)
    converts, and the result loads with the same values as the official file."""
    cfg = _cfg("glip_a_swin_t.yaml")
    cfg.SOLVER.TUNING_MODE = "prompt_tuning"
    rows = _read_tsv("glip_A_Swin_T_O365_state_dict.tsv")
    sd = {k: v.clone() for k, v in _official_state_dict(rows).items()}
    sd["language_backbone.body.model.embeddings.position_ids"] = torch.arange(512)[None]
    sd["rpn.tunable_linear.weight"] = torch.randn(1000, 768)
    official = tmp_path / "official.pth"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "iteration": 7}, official)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(cfg.dump())
    out = tmp_path / "converted.pth"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "convert_glip_checkpoint.py"),
            str(official),
            str(out),
            "--config-file",
            str(config_file),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "dropped" in res.stderr and "position_ids" in res.stderr
    assert "missing" not in res.stderr and "not used" not in res.stderr
    a, b = GLIP(cfg), GLIP(cfg)
    GLIPCheckpointer(a).load(str(official))
    GLIPCheckpointer(b).load(str(out))
    sa, sb = a.state_dict(), b.state_dict()
    assert torch.equal(sa["tunable_linear.weight"], sd["rpn.tunable_linear.weight"])
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
