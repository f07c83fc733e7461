"""Referring-expression top-k accuracy on synthetic expressions with known answers."""

import json

import pytest
from detectron2.config import get_cfg
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BoxMode

from glip_d2.evaluation import RefExpEvaluator, build_evaluator

GT = [0, 0, 100, 100]
WRONG = [500, 500, 600, 600]
# IoU 0.5065 but GIoU 0.46 with GT (the enclosing box is larger than the union).
OFFSET = [18, 18, 118, 118]


def _record(image_id, box=GT):
    x1, y1, x2, y2 = box
    return {
        "image_id": image_id,
        "caption": "the left dog",
        "annotations": [
            {
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "bbox_mode": BoxMode.XYWH_ABS,
                "tokens_positive": [[0, 12]],
            }
        ],
    }


def test_perfect_predictions(register_records, make_instances):
    name = register_records([_record(1), _record(2, [10, 20, 30, 40])], evaluator_type="refcoco")
    evaluator = RefExpEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process(
        [{"image_id": 1}, {"image_id": 2}],
        [
            {"instances": make_instances([GT, WRONG], [0.9, 0.1], [0, 0])},
            {"instances": make_instances([[10, 20, 30, 40]], [0.3], [0])},
        ],
    )
    assert evaluator.evaluate()["refexp"] == {"P@1": 100.0, "P@5": 100.0, "P@10": 100.0}


def test_hand_made_accuracy(register_records, make_instances, replay_model, tmp_path):
    name = register_records([_record(i) for i in (1, 2, 3)], evaluator_type="refcoco")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, RefExpEvaluator)
    outputs = {
        1: make_instances([WRONG, GT], [0.2, 0.8], [0, 0]),  # right box ranked 1st
        2: make_instances([WRONG, GT, WRONG], [0.9, 0.5, 0.1], [0, 1, 0]),  # ranked 2nd
        3: make_instances([], [], []),  # nothing detected
    }
    loader = [[{"image_id": i}] for i in (1, 2, 3)]
    res = inference_on_dataset(replay_model(outputs), loader, evaluator)["refexp"]
    assert res["P@1"] == pytest.approx(100 / 3)
    assert res["P@5"] == pytest.approx(200 / 3)
    assert res["P@10"] == pytest.approx(200 / 3)
    saved = json.loads((tmp_path / "inference" / name / "refexp_predictions.json").read_text())
    assert len(saved) == 3


def test_giou_option(register_records, make_instances):
    name = register_records([_record(1)], evaluator_type="refcoco")
    inst = make_instances([OFFSET], [0.9], [0])
    p1 = {}
    for kind in ("iou", "giou"):
        evaluator = RefExpEvaluator(name, distributed=False, iou_type=kind)
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": inst}])
        p1[kind] = evaluator.evaluate()["refexp"]["P@1"]
    assert p1 == {"iou": 100.0, "giou": 0.0}


def test_unknown_image_id_is_an_error(register_records, make_instances):
    name = register_records([_record(1)], evaluator_type="refcoco")
    evaluator = RefExpEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"image_id": 99}], [{"instances": make_instances([GT], [0.9], [0])}])
    with pytest.raises(ValueError, match="not in dataset"):
        evaluator.evaluate()
