"""VQA and caption sets on glip_shapes: every answer and reference follows from the boxes."""

import json
import os
from collections import Counter

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from registered_sets import registered, unique_prefix

from glip_d2.data.datasets.shapes import SHAPES_CLASSES
from glip_d2.data.datasets.shapes_vl import (
    ShapeObject,
    majority_answer_accuracy,
    register_glip_shapes_vl,
    shape_objects,
    shape_questions,
    shape_references,
)

SMALL = {"num_train": 8, "num_val": 4, "seed": 0}
VQA_KEYS = {
    "file_name",
    "height",
    "width",
    "image_id",
    "question_id",
    "question",
    "answers",
    "answer_type",
    "question_type",
    "task",
}


@pytest.fixture
def shapes_vl(tmp_path):
    """A small glip_shapes set with its VL sets registered; yields (prefix, root)."""
    prefix = unique_prefix("glip_test_shapes_vl")
    root = str(tmp_path / "glip_shapes")
    with registered(register_glip_shapes_vl, root, prefix, **SMALL):
        yield prefix, root


def _instances(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        data = json.load(f)
    boxes = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        boxes[ann["image_id"]].append(ann)
    return data["images"], boxes


@pytest.mark.parametrize("split", ["train", "val"])
def test_vqa_answers_follow_from_the_boxes(shapes_vl, split):
    prefix, root = shapes_vl
    assert not os.path.exists(root)  # generated on first use
    records = DatasetCatalog.get(f"{prefix}_{split}_vqa")
    images, boxes = _instances(root, split)
    assert {r["image_id"] for r in records} == set(boxes)
    meta = MetadataCatalog.get(f"{prefix}_{split}_vqa")
    assert meta.evaluator_type == "vqa" and meta.task == "vqa"
    assert meta.image_root == os.path.join(root, split)
    sizes = {img["id"]: (img["height"], img["width"], img["file_name"]) for img in images}
    for r in records:
        assert set(r) == VQA_KEYS and r["task"] == "vqa"
        assert len(r["answers"]) == 10 and len(set(r["answers"])) == 1
        answer = r["answers"][0]
        height, width, file_name = sizes[r["image_id"]]
        assert (r["height"], r["width"]) == (height, width)
        assert r["file_name"] == os.path.join(root, split, file_name)
        names = [SHAPES_CLASSES[a["category_id"] - 1].split() for a in boxes[r["image_id"]]]
        q = r["question"]
        if r["question_type"] == "count":
            kind = q[len("how many ") : -len("s are there?")]
            assert r["answer_type"] == "number"
            assert answer == str(sum(k == kind for _, k in names))
        elif r["question_type"] == "color":
            kind = q[len("what color is the ") : -1]
            matching = [c for c, k in names if k == kind]
            assert r["answer_type"] == "other" and matching == [answer]
        elif r["question_type"] == "shape":
            color = q[len("what shape is the ") : -len(" object?")]
            matching = [k for c, k in names if c == color]
            assert r["answer_type"] == "other" and matching == [answer]
        else:
            assert r["question_type"] == "exist" and r["answer_type"] == "yes/no"
            color, kind = q[len("is there a ") : -1].split()
            assert answer == ("yes" if [color, kind] in names else "no")


def test_yes_no_balanced_and_question_ids_unique(shapes_vl):
    prefix, _ = shapes_vl
    for split in ("train", "val"):
        records = DatasetCatalog.get(f"{prefix}_{split}_vqa")
        ids = [r["question_id"] for r in records]
        assert len(set(ids)) == len(ids)
        assert all(r["question_id"] // 100 == r["image_id"] for r in records)
        exist = Counter(r["answers"][0] for r in records if r["question_type"] == "exist")
        per_image = Counter(r["image_id"] for r in records if r["question_type"] == "exist")
        assert exist == {"yes": SMALL[f"num_{split}"], "no": SMALL[f"num_{split}"]}
        assert set(per_image.values()) == {2}  # one "yes" and one "no" per image


def test_generator_caption_is_a_reference(shapes_vl):
    prefix, root = shapes_vl
    for split in ("train", "val"):
        records = DatasetCatalog.get(f"{prefix}_{split}_caption")
        meta = MetadataCatalog.get(f"{prefix}_{split}_caption")
        assert meta.evaluator_type == "caption" and meta.task == "caption"
        with open(os.path.join(root, "annotations", f"grounding_{split}.json")) as f:
            captions = {img["id"]: img["caption"] for img in json.load(f)["images"]}
        assert len(records) == len(captions) == SMALL[f"num_{split}"]
        for r in records:
            assert set(r) == {"file_name", "height", "width", "image_id", "captions", "task"}
            assert r["task"] == "caption" and os.path.isfile(r["file_name"])
            assert captions[r["image_id"]] in r["captions"]
            assert len(r["captions"]) in (1, 3) and len(set(r["captions"])) == len(r["captions"])
            assert all(c == c.lower() and c.endswith(".") for c in r["captions"])


def test_references_and_questions_by_hand():
    objects = [
        ShapeObject("red", "circle", "small", 50.0),
        ShapeObject("blue", "square", "large", 10.0),
        ShapeObject("red", "circle", "small", 90.0),
    ]
    assert shape_references(objects) == [
        "a large blue square next to two small red circles.",
        "a large blue square and two small red circles.",
        "a picture of a large blue square and two small red circles.",
    ]
    three = objects + [ShapeObject("green", "triangle", "large", 5.0)]
    assert shape_references(three) == [
        "a large green triangle, a large blue square and two small red circles."
    ]
    questions = shape_questions(objects, image_id=7)
    assert questions[:3] == [
        ("what color is the square?", "blue", "other", "color"),
        ("what shape is the blue object?", "square", "other", "shape"),
        ("how many circles are there?", "2", "number", "count"),
    ]
    assert questions[3:5] == [
        ("how many squares are there?", "1", "number", "count"),
        ("how many triangles are there?", "0", "number", "count"),
    ]
    # Present pairs (colour-major order): red circle, blue square -> 7 % 2 = 1; absent: 7 % 7.
    assert questions[5] == ("is there a blue square?", "yes", "yes/no", "exist")
    assert questions[6] == ("is there a red square?", "no", "yes/no", "exist")
    assert shape_questions(objects, image_id=7) == questions  # deterministic


def test_shape_objects_sizes_and_errors():
    anns = [
        {"id": 1, "category_id": 1, "bbox": [3.0, 4.0, 32.0, 32.0]},
        {"id": 2, "category_id": 9, "bbox": [50.0, 4.0, 44.0, 44.0]},
    ]
    assert shape_objects(anns) == [
        ShapeObject("red", "circle", "small", 3.0),
        ShapeObject("blue", "triangle", "large", 50.0),
    ]
    with pytest.raises(ValueError, match="side 40"):
        shape_objects([{"id": 3, "category_id": 1, "bbox": [0, 0, 40, 40]}])
    with pytest.raises(ValueError, match="category 10"):
        shape_objects([{"id": 4, "category_id": 10, "bbox": [0, 0, 20, 20]}])
    with pytest.raises(ValueError):
        shape_references([])


def test_majority_baseline(shapes_vl):
    prefix, _ = shapes_vl
    train = DatasetCatalog.get(f"{prefix}_train_vqa")
    val = DatasetCatalog.get(f"{prefix}_val_vqa")
    result = majority_answer_accuracy(train, val)
    assert set(result) == {r["question_type"] for r in val} | {"overall"}
    # "exist" is balanced per image: a constant answer gets exactly half.
    assert result["exist"] == pytest.approx(50.0)
    assert all(0.0 <= v <= 100.0 for v in result.values())
    hand = [
        {"question_type": "count", "answers": ["1"] * 10},
        {"question_type": "count", "answers": ["1"] * 10},
        {"question_type": "count", "answers": ["2"] * 10},
    ]
    assert majority_answer_accuracy(hand, hand) == pytest.approx(
        {"count": 200 / 3, "overall": 200 / 3}
    )
