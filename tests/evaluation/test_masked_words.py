"""Masked-word accuracy of the GLIPv2 LM head (the quick-start table's MLM column)."""

import re
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from glip_d2.config import add_glip_config
from glip_d2.data.mappers import GroundingDatasetMapper
from glip_d2.evaluation.masked_words import masked_word_accuracy

ROOT = Path(__file__).resolve().parents[2]
WORDS = {"colour": ["red", "green", "blue"], "shape": ["circle", "square", "triangle"]}


@pytest.fixture(scope="module")
def setup():
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.GLIPV2.MLM.WEIGHT = 1.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    records = DatasetCatalog.get("glip_shapes_val_grounding")[:4]
    return model, records, GroundingDatasetMapper(cfg, is_train=False)


def test_every_occurrence_is_masked_once_and_scored(setup):
    model, records, mapper = setup
    result = masked_word_accuracy(model, records, mapper, WORDS, batch_size=3)
    for group, words in WORDS.items():
        expected = sum(
            len(re.findall(rf"\b({'|'.join(words)})\b", r["caption"].lower())) for r in records
        )
        assert expected > 0
        assert result[group]["count"] == expected, group
        assert 0.0 <= result[group]["accuracy"] <= 100.0
    assert result["all"]["count"] == result["colour"]["count"] + result["shape"]["count"]


def test_a_perfect_lm_head_scores_100(setup, monkeypatch):
    """Accuracy compares the argmax with the masked word: an oracle head gets 100%."""
    model, records, mapper = setup
    truth = {}

    def oracle(inputs, mask_id):
        out = []
        for x in inputs:
            pos = (x["input_ids"] == mask_id).nonzero().flatten()
            logits = torch.zeros(len(pos), 30522)
            logits[0, truth[id(x)]] = 1.0
            out.append((pos, logits))
        return out

    # The evaluator passes masked copies; recover the true id from the clean mapping.
    clean = {r["image_id"]: mapper(r)["input_ids"] for r in records}

    def oracle_with_truth(inputs, mask_id):
        for x in inputs:
            pos = int((x["input_ids"] == mask_id).nonzero()[0])
            truth[id(x)] = int(clean[x["image_id"]][pos])
        return oracle(inputs, mask_id)

    monkeypatch.setattr(model, "masked_token_logits", oracle_with_truth)
    result = masked_word_accuracy(model, records, mapper, WORDS)
    assert result["all"]["accuracy"] == 100.0


def test_multi_token_word_is_an_error(setup):
    model, records, mapper = setup
    with pytest.raises(ValueError, match="'glipv2ness'"):
        masked_word_accuracy(model, records, mapper, {"odd": ["glipv2ness"]})
