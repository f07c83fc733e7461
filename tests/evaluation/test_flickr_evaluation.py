"""Flickr30K Recall@k on synthetic sentences whose recalls are known by construction."""

import json
import math

import pytest
from detectron2.data import DatasetCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import BoxMode

from glip_d2.evaluation import FlickrEvaluator
from glip_d2.evaluation.flickr_evaluation import (
    merge_boxes,
    parse_flickr30k_sentences,
    phrase_recall_hits,
)

CAPTION = "a man walks a dog past two cars"
SPANS = [[[0, 5]], [[12, 17]], [[23, 31]]]  # "a man", "a dog", "two cars"
MAN = [10, 10, 110, 210]
DOG = [300, 300, 400, 380]
CAR1 = [500, 100, 600, 200]
CAR2 = [700, 100, 800, 200]
CARS_UNION = [500, 100, 800, 200]  # IoU 1/3 with each car
WRONG = [900, 900, 950, 950]
SENTENCE_LINE = "[/EN#1/people a man] walks [/EN#2/animals a dog] past [/EN#3/vehicles two cars]"


def _ann(box, spans):
    x1, y1, x2, y2 = box
    return {
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "bbox_mode": BoxMode.XYWH_ABS,
        "tokens_positive": spans,
    }


def _records():
    sentence = {
        "image_id": 20,
        "caption": CAPTION,
        "tokens_positive_eval": SPANS,
        "phrase_types": [["people"], "animals", ["vehicles"]],
        "annotations": [
            _ann(MAN, SPANS[0]),
            _ann(DOG, SPANS[1]),
            _ann(CAR1, SPANS[2]),
            _ann(CAR2, SPANS[2]),
        ],
    }
    cat = {
        "image_id": 21,
        "caption": "a cat",
        "tokens_positive_eval": [[[0, 5]]],
        "phrase_types": [["animals"]],
        "annotations": [_ann([0, 0, 50, 50], [[0, 5]])],
    }
    return [sentence, cat]


def _hand_made_outputs(make_instances):
    return {
        # "a man": right box 3rd; "a dog": nothing; "two cars": one car 1st, the union 2nd;
        # a detection with a phrase index past the phrases is ignored.
        20: make_instances(
            [WRONG, WRONG, MAN, CAR1, CARS_UNION, MAN],
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.99],
            [0, 0, 0, 2, 2, 7],
        ),
        # "a cat": right box 11th.
        21: make_instances([WRONG] * 10 + [[0, 0, 50, 50]], [0.9] * 10 + [0.1], [0] * 11),
    }


def test_merge_boxes():
    assert merge_boxes([CAR1, CAR2]).tolist() == [CARS_UNION]
    assert merge_boxes([MAN]).tolist() == [MAN]


def test_phrase_recall_hits_rank_three():
    hits = phrase_recall_hits([WRONG, WRONG, MAN], [MAN])
    assert hits == {1: False, 5: True, 10: True, -1: True}
    # No prediction: only the dummy box, never a hit.
    assert not any(phrase_recall_hits([], [MAN]).values())


def test_perfect_predictions(register_records, make_instances):
    records = _records()
    records[0]["annotations"] = records[0]["annotations"][:3]  # one box per phrase
    name = register_records(records, evaluator_type="flickr30k")
    evaluator = FlickrEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process(
        [{"image_id": 20}, {"image_id": 21}],
        [
            {"instances": make_instances([MAN, DOG, CAR1], [0.9, 0.8, 0.7], [0, 1, 2])},
            {"instances": make_instances([[0, 0, 50, 50]], [0.5], [0])},
        ],
    )
    results = evaluator.evaluate()
    for protocol in ("separate", "merged"):
        res = results[f"flickr30k_{protocol}"]
        for key in ("R@1", "R@5", "R@10", "UB", "R@1_people", "R@1_animals", "UB_vehicles"):
            assert res[key] == pytest.approx(100.0), (protocol, key)


def test_hand_made_recalls(register_records, make_instances, tmp_path):
    name = register_records(_records(), evaluator_type="flickr30k")
    evaluator = FlickrEvaluator(name, distributed=True, output_dir=str(tmp_path))
    evaluator.reset()
    for image_id, inst in _hand_made_outputs(make_instances).items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()

    sep, mer = results["flickr30k_separate"], results["flickr30k_merged"]
    # 4 phrases: man (rank 3), dog (none), cars (one car 1st, union 2nd), cat (rank 11).
    assert sep["R@1"] == pytest.approx(25.0)  # cars
    assert sep["R@5"] == pytest.approx(50.0)  # man, cars
    assert sep["R@10"] == pytest.approx(50.0)
    assert sep["UB"] == pytest.approx(75.0)  # man, cars, cat
    assert mer["R@1"] == pytest.approx(0.0)  # the top car has IoU 1/3 with the union box
    assert mer["R@5"] == pytest.approx(50.0)
    assert mer["UB"] == pytest.approx(75.0)
    # Per type.
    assert sep["R@1_people"] == 0.0 and sep["R@5_people"] == 100.0
    assert sep["R@1_vehicles"] == 100.0 and mer["R@1_vehicles"] == 0.0
    assert mer["R@5_vehicles"] == 100.0
    assert sep["R@10_animals"] == 0.0 and sep["UB_animals"] == 50.0

    saved = json.loads((tmp_path / "flickr30k_predictions.json").read_text())
    assert {p["image_id"] for p in saved} == {20, 21}
    scores = next(p for p in saved if p["image_id"] == 20)["scores"]
    assert scores == sorted(scores, reverse=True)


def test_parse_flickr30k_sentences():
    text = SENTENCE_LINE + "\n[/EN#4/other/scene The street] is empty .\n"
    parsed = parse_flickr30k_sentences(text)
    assert parsed[0] == [((0, 5), ["people"]), ((12, 17), ["animals"]), ((23, 31), ["vehicles"])]
    assert parsed[1] == [((0, 10), ["other", "scene"])]


def test_mdetr_json_through_builder(dataset_name, make_instances, replay_model, tmp_path):
    """The real MDETR loader, phrase types from a Sentences folder, ``inference_on_dataset``."""
    from detectron2.config import get_cfg

    from glip_d2.data.datasets.mdetr_grounding import register_mdetr_grounding
    from glip_d2.evaluation import build_evaluator

    images = [
        {
            "id": 20,
            "file_name": "12345.jpg",
            "height": 1000,
            "width": 1000,
            "caption": CAPTION,
            "tokens_positive_eval": SPANS,
            "sentence_id": 0,
            "original_img_id": "12345",
            "dataset_name": "flickr",
        },
    ]
    boxes = [(MAN, SPANS[0]), (DOG, SPANS[1]), (CAR1, SPANS[2]), (CAR2, SPANS[2])]
    annotations = [
        {
            "id": i + 1,
            "image_id": 20,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "tokens_positive": spans,
        }
        for i, (b, spans) in enumerate(boxes)
    ]
    json_file = tmp_path / "final_flickr_separateGT_test.json"
    json_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "object"}],
            }
        )
    )
    sentences = tmp_path / "Sentences"
    sentences.mkdir()
    (sentences / "12345.txt").write_text(SENTENCE_LINE + "\n")
    register_mdetr_grounding(
        dataset_name,
        {"evaluator_type": "flickr30k", "flickr30k_sentences_dir": str(sentences)},
        str(json_file),
        str(tmp_path),
    )
    assert len(DatasetCatalog.get(dataset_name)) == 1

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    evaluator = build_evaluator(cfg, dataset_name)
    assert isinstance(evaluator, FlickrEvaluator)
    outputs = {20: _hand_made_outputs(make_instances)[20]}
    results = inference_on_dataset(replay_model(outputs), [[{"image_id": 20}]], evaluator)

    sep, mer = results["flickr30k_separate"], results["flickr30k_merged"]
    assert sep["R@1"] == pytest.approx(100 / 3) and sep["R@5"] == pytest.approx(200 / 3)
    assert mer["R@1"] == 0.0 and mer["UB"] == pytest.approx(200 / 3)
    assert sep["R@5_people"] == 100.0 and sep["UB_animals"] == 0.0
    assert math.isclose(mer["R@5_vehicles"], 100.0)
    assert (tmp_path / "out" / "inference" / dataset_name / "flickr30k_predictions.json").exists()
