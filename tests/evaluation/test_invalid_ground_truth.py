"""Evaluation never scores invalid ground truth or zero phrases: errors that name them, and
phrases derived for MDETR sets without ``tokens_positive_eval``."""

import importlib.util
import json

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.structures import BoxMode

from glip_d2.data.datasets import register_mdetr_grounding
from glip_d2.evaluation import FlickrEvaluator, RefExpEvaluator, build_evaluator

NAN = float("nan")
IMAGES = [
    {"id": 1, "file_name": "1.jpg", "height": 480, "width": 640},
    {"id": 2, "file_name": "2.jpg", "height": 480, "width": 640},
]
GOOD = {1: (1, [10, 10, 100, 80]), 2: (1, [300, 200, 50, 60]), 3: (2, [20, 30, 200, 100])}


def _cfg(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    return cfg


def _write_coco(path, boxes):
    anns = [
        {
            "id": i,
            "image_id": img,
            "category_id": 3,
            "bbox": box,
            "area": 100.0,
            "iscrowd": 0,
        }
        for i, (img, box) in boxes.items()
    ]
    data = {"images": IMAGES, "annotations": anns, "categories": [{"id": 3, "name": "cat"}]}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    "bad,problem",
    [
        ({2: (1, [NAN, NAN, NAN, NAN])}, "NaN or infinite coordinate"),
        ({2: (1, [300, 200, 0, 60])}, "zero or negative width or height"),
        ({2: (1, [300, 200, -5, 60])}, "zero or negative width or height"),
        ({2: (1, [700, 200, 50, 60])}, "outside the image"),
    ],
)
def test_coco_ground_truth_with_an_invalid_box_is_an_error(tmp_path, dataset_name, bad, problem):
    json_file = _write_coco(tmp_path / "val.json", {**GOOD, **bad})
    register_coco_instances(dataset_name, {}, json_file, str(tmp_path))
    with pytest.raises(ValueError) as info:
        build_evaluator(_cfg(tmp_path), dataset_name)
    message = str(info.value)
    assert dataset_name in message and json_file in message
    assert f"1 invalid boxes (of 3); first: annotation 2 of image 1 ({problem})" in message


def test_all_nan_coco_ground_truth_is_an_error_not_an_ap(tmp_path, dataset_name):
    """Before: COCOEvaluator scored these predictions against NaN boxes and reported an AP."""
    json_file = _write_coco(
        tmp_path / "val.json", {i: (img, [NAN] * 4) for i, (img, _) in GOOD.items()}
    )
    register_coco_instances(dataset_name, {}, json_file, str(tmp_path))
    with pytest.raises(ValueError, match=r"3 invalid boxes \(of 3\).*annotation 1 of image 1"):
        build_evaluator(_cfg(tmp_path), dataset_name)


def test_valid_coco_ground_truth_builds(tmp_path, dataset_name):
    # Partly outside the image is evaluated as annotated (documented rule), not an error.
    json_file = _write_coco(tmp_path / "val.json", {**GOOD, 4: (2, [600, 400, 100, 100])})
    register_coco_instances(dataset_name, {}, json_file, str(tmp_path))
    assert isinstance(build_evaluator(_cfg(tmp_path), dataset_name), COCOEvaluator)


def test_coco_records_without_json_file_are_checked(tmp_path, register_records):
    records = [
        {
            "image_id": 1,
            "file_name": "1.jpg",
            "height": 480,
            "width": 640,
            "annotations": [
                {"id": 9, "bbox": [NAN, 1, 2, 3], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
            ],
        }
    ]
    name = register_records(records, evaluator_type="coco", thing_classes=["cat"])
    with pytest.raises(ValueError, match=rf"records of DatasetCatalog '{name}'.*annotation 9"):
        build_evaluator(_cfg(tmp_path), name)


@pytest.mark.skipif(importlib.util.find_spec("lvis") is None, reason="needs the 'lvis' package")
def test_lvis_ground_truth_with_an_invalid_box_is_an_error(tmp_path, register_records):
    images = [{**img, "neg_category_ids": [], "not_exhaustive_category_ids": []} for img in IMAGES]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500.0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, NAN, 50], "area": 2500.0},
    ]
    cats = [{"id": 1, "name": "cat", "synonyms": ["cat"], "frequency": "f"}]
    json_file = tmp_path / "lvis.json"
    json_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    name = register_records([], evaluator_type="lvis", json_file=str(json_file))
    with pytest.raises(
        ValueError, match=r"lvis.json\) has 1 invalid boxes.*annotation 2 of image 2"
    ):
        build_evaluator(_cfg(tmp_path), name)


# ---------------------------------------------------------------------------- grounding

CAPTION = "a man walks a dog past two cars"
SPANS = [[[0, 5]], [[12, 17]], [[23, 31]]]  # "a man", "a dog", "two cars"
MAN, DOG = [10, 10, 110, 210], [300, 300, 400, 380]
CAR1, CAR2 = [500, 100, 600, 200], [700, 100, 800, 200]
WRONG = [900, 900, 950, 950]


def _outputs(make_instances):
    # phrase 0 "a man": right box first; 1 "a dog": second; 2 "two cars": a car first.
    return make_instances(
        [MAN, WRONG, DOG, CAR2], [0.9, 0.8, 0.7, 0.6], [0, 1, 1, 2], image_size=(1000, 1000)
    )


def test_mdetr_set_without_tokens_positive_eval_is_evaluated(
    tmp_path, dataset_name, make_instances, replay_model
):
    """Before: the phrases were empty and every recall NaN ("0 phrases")."""
    image = {"id": 20, "file_name": "x.jpg", "height": 1000, "width": 1000, "caption": CAPTION}
    boxes = [(CAR1, SPANS[2]), (CAR2, SPANS[2]), (DOG, SPANS[1]), (MAN, SPANS[0])]
    annotations = [
        {
            "id": i + 1,
            "image_id": 20,
            "category_id": 1,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
            "tokens_positive": spans,
        }
        for i, (b, spans) in enumerate(boxes)
    ]
    json_file = tmp_path / "own_val.json"
    json_file.write_text(json.dumps({"images": [image], "annotations": annotations}))
    register_mdetr_grounding(dataset_name, {}, str(json_file), str(tmp_path))
    assert DatasetCatalog.get(dataset_name)[0]["tokens_positive_eval"] == SPANS
    evaluator = build_evaluator(_cfg(tmp_path), dataset_name)
    results = inference_on_dataset(
        replay_model({20: _outputs(make_instances)}), [[{"image_id": 20}]], evaluator
    )
    separate = results["grounding_separate"]
    assert separate["R@1"] == pytest.approx(200.0 / 3)  # man and cars; the dog is second
    assert separate["R@5"] == pytest.approx(100.0)


def test_records_without_tokens_positive_eval_get_derived_phrases(register_records, make_instances):
    def ann(box, spans):
        x1, y1, x2, y2 = box
        return {"bbox": [x1, y1, x2, y2], "bbox_mode": BoxMode.XYXY_ABS, "tokens_positive": spans}

    record = {
        "image_id": 20,
        "caption": CAPTION,
        "annotations": [ann(DOG, SPANS[1]), ann(MAN, SPANS[0]), ann(CAR2, SPANS[2])],
    }
    name = register_records([record], evaluator_type="grounding")
    evaluator = FlickrEvaluator(name, distributed=False, task_name="grounding")
    evaluator.reset()
    evaluator.process([{"image_id": 20}], [{"instances": _outputs(make_instances)}])
    assert evaluator.evaluate()["grounding_separate"]["R@1"] == pytest.approx(200.0 / 3)


@pytest.mark.parametrize("case", ["no phrases", "no predictions"])
def test_recall_over_zero_phrases_is_an_error(case, register_records, make_instances):
    """Before: R@1 was NaN."""
    record = {
        "image_id": 20,
        "caption": CAPTION,
        "tokens_positive_eval": [] if case == "no phrases" else SPANS,
        "annotations": [{"bbox": MAN, "bbox_mode": BoxMode.XYXY_ABS, "tokens_positive": SPANS[0]}],
    }
    other = {"image_id": 21, "caption": "a cat", "tokens_positive_eval": [], "annotations": []}
    name = register_records([record, other], evaluator_type="flickr30k")
    evaluator = FlickrEvaluator(name, distributed=False)
    evaluator.reset()
    image_id = 20 if case == "no phrases" else 21
    evaluator.process([{"image_id": image_id}], [{"instances": _outputs(make_instances)}])
    with pytest.raises(ValueError, match=rf"dataset '{name}': no phrase to evaluate"):
        evaluator.evaluate()


def test_refexp_over_zero_expressions_is_an_error(register_records, make_instances):
    record = {"image_id": 5, "annotations": []}
    name = register_records([record], evaluator_type="refcoco")
    evaluator = RefExpEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([{"image_id": 5}], [{"instances": _outputs(make_instances)}])
    with pytest.raises(ValueError, match=rf"dataset '{name}': no expression to evaluate"):
        evaluator.evaluate()
