"""Training on pseudo-labels: box scores loaded and checked, low scores dropped, scores carried
to the instances as loss weights; gold boxes (without a score) untouched."""

import pytest
import torch
from grounding_fixtures import mdetr_data

from glip_d2.data.datasets.mdetr_grounding import load_mdetr_grounding_json


def _scored():
    data = mdetr_data()
    scores = {11: 0.9, 12: 0.3}  # 13 has no score: a gold box
    for a in data["annotations"]:
        if a["id"] in scores:
            a["score"] = scores[a["id"]]
    return data


def test_scores_are_loaded_and_bad_ones_named(mdetr_files):
    path, root = mdetr_files(_scored())
    anns = load_mdetr_grounding_json(path, root)[0]["annotations"]
    assert [(a["id"], a.get("score")) for a in anns] == [(11, 0.9), (12, 0.3), (13, None)]
    for bad in (1.5, "high", float("nan")):
        data = _scored()
        data["annotations"][1]["score"] = bad
        path, root = mdetr_files(data)
        with pytest.raises(ValueError, match="annotation 12 has score"):
            load_mdetr_grounding_json(path, root)


def test_min_score_drops_pseudo_boxes_and_keeps_gold(mdetr_files, make_mapper):
    path, root = mdetr_files(_scored())
    record = load_mdetr_grounding_json(path, root)[0]
    plain = make_mapper(True)(record)["instances"]
    assert len(plain) == 3 and not plain.has("gt_weights")
    kept = make_mapper(True, pseudo_min_score=0.5)(record)["instances"]
    # box 12 (score 0.3) dropped; 11 (0.9) and gold 13 kept, in order
    assert kept.gt_boxes.tensor.tolist() == [
        plain.gt_boxes.tensor[0].tolist(),
        plain.gt_boxes.tensor[2].tolist(),
    ]
    weighted = make_mapper(True, pseudo_score_weighting=True)(record)["instances"]
    assert torch.equal(weighted.gt_weights, torch.tensor([0.9, 0.3, 1.0]))
    both = make_mapper(True, pseudo_min_score=0.5, pseudo_score_weighting=True)(record)["instances"]
    assert torch.equal(both.gt_weights, torch.tensor([0.9, 1.0]))
    with pytest.raises(ValueError, match="MIN_SCORE"):
        make_mapper(True, pseudo_min_score=2.0)


def test_config_reaches_the_mapper_and_the_labeller():
    from detectron2.config import get_cfg

    from glip_d2.autolabel import LabelSettings
    from glip_d2.config import add_glip_config
    from glip_d2.data import GroundingDatasetMapper

    cfg = get_cfg()
    add_glip_config(cfg)
    assert LabelSettings.from_config(cfg) == LabelSettings()  # one set of defaults
    cfg.INPUT.PSEUDO_LABELS.MIN_SCORE = 0.4
    cfg.INPUT.PSEUDO_LABELS.SCORE_WEIGHTING = True
    args = GroundingDatasetMapper.from_config(cfg, is_train=True)
    assert (args["pseudo_min_score"], args["pseudo_score_weighting"]) == (0.4, True)
