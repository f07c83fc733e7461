"""The three official configs build and run one CPU inference at 800x1333 (random weights)."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Instances

from glip_d2.config import add_glip_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "config_name",
    [
        "glip_swin_t.yaml",
        pytest.param("glip_a_swin_t.yaml", marks=pytest.mark.slow),
        pytest.param("glip_swin_l.yaml", marks=pytest.mark.slow),
    ],
)
def test_full_size_inference_800x1333(config_name):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / config_name))
    cfg.MODEL.DEVICE = "cpu"
    # Random weights score every token near the prior (0.01): admit candidates so that the
    # post-processing path runs too.
    cfg.MODEL.ATSS.INFERENCE_TH = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.zeros(256, dtype=torch.long)
    ids[:5] = torch.tensor([101, 2711, 1012, 3899, 102])  # [CLS] person . dog [SEP]
    mask = (torch.arange(256) < 5).long()
    positive_map = torch.zeros(2, 256, dtype=torch.bool)
    positive_map[0, 1] = positive_map[1, 3] = True
    x = {
        "image": torch.randint(0, 255, (3, 800, 1333), dtype=torch.uint8),
        "height": 800,
        "width": 1333,
        "input_ids": ids,
        "attention_mask": mask,
        "positive_map": positive_map,
    }
    with torch.no_grad():
        inst = model([x])[0]["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (800, 1333)
    assert len(inst) == cfg.MODEL.ATSS.DETECTIONS_PER_IMG
    assert set(inst.pred_classes.tolist()) <= {0, 1}
    assert torch.isfinite(inst.pred_boxes.tensor).all()
