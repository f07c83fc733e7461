"""VQAv2 loading from tiny official-format jsons, registration, the answer vocabulary and the
soft answer targets."""

import json

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.datasets.vqa import (
    answer_targets,
    build_answer_vocab,
    load_vqa_json,
    register_vqa,
)
from glip_d2.data.vqa_answers import normalize_answer, vqa_accuracy

QUESTIONS = [
    {"image_id": 42, "question": "How many dogs are there?", "question_id": 420},
    {"image_id": 42, "question": "Is it sunny?", "question_id": 421},
    {"image_id": 7, "question": "What color is the car?", "question_id": 70},
]


def _answers(*answers):
    return [
        {"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)
    ]


ANNOTATIONS = [
    {
        "question_id": 420,
        "image_id": 42,
        "answers": _answers("two", "2", "2", "3", "2", "2", "two", "2", "2", "1"),
        "multiple_choice_answer": "2",
        "answer_type": "number",
        "question_type": "how many",
    },
    {
        "question_id": 421,
        "image_id": 42,
        "answers": _answers(*["yes"] * 9, "no"),
        "multiple_choice_answer": "yes",
        "answer_type": "yes/no",
        "question_type": "is it",
    },
    {
        "question_id": 70,
        "image_id": 7,
        "answers": _answers(*["red"] * 6, "Red.", "dark red", "maroon", "red"),
        "multiple_choice_answer": "red",
        "answer_type": "other",
        "question_type": "what color is the",
    },
]


def _write(tmp_path, questions=QUESTIONS, annotations=ANNOTATIONS, subtype="val2014"):
    q_data = {"task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}
    if subtype is not None:
        q_data["data_subtype"] = subtype
    q_file = tmp_path / "questions.json"
    q_file.write_text(json.dumps(q_data))
    a_file = None
    if annotations is not None:
        a_file = tmp_path / "annotations.json"
        a_file.write_text(json.dumps({"data_subtype": subtype, "annotations": annotations}))
        a_file = str(a_file)
    return str(q_file), a_file


def test_load_official_format(tmp_path):
    q_file, a_file = _write(tmp_path)
    records = load_vqa_json(q_file, a_file, "/data/coco/val2014")
    assert [r["question_id"] for r in records] == [420, 421, 70]
    assert records[0] == {
        "file_name": "/data/coco/val2014/COCO_val2014_000000000042.jpg",
        "image_id": 42,
        "question_id": 420,
        "question": "How many dogs are there?",
        "answers": ["two", "2", "2", "3", "2", "2", "two", "2", "2", "1"],
        "answer_type": "number",
        "question_type": "how many",
        "task": "vqa",
    }
    assert records[2]["file_name"].endswith("COCO_val2014_000000000007.jpg")


def test_load_test_dev_without_annotations(tmp_path):
    q_file, _ = _write(tmp_path, annotations=None, subtype="test-dev2015")
    for annotation_file in (None, ""):
        records = load_vqa_json(q_file, annotation_file, "coco/test2015")
        assert len(records) == 3
        # test-dev questions are on test2015 images, named as such.
        assert records[0]["file_name"] == "coco/test2015/COCO_test2015_000000000042.jpg"
        assert all("answers" not in r and "answer_type" not in r for r in records)
        assert all(r["task"] == "vqa" for r in records)


def test_file_name_and_size_from_the_questions(tmp_path):
    questions = [
        dict(q, file_name=f"img_{q['image_id']}.png", height=48, width=64) for q in QUESTIONS
    ]
    q_file, a_file = _write(tmp_path, questions=questions, subtype=None)
    records = load_vqa_json(q_file, a_file, str(tmp_path))
    assert records[0]["file_name"] == str(tmp_path / "img_42.png")
    assert (records[0]["height"], records[0]["width"]) == (48, 64)


def test_register(tmp_path, dataset_name):
    q_file, a_file = _write(tmp_path)
    register_vqa(dataset_name, q_file, a_file, "coco/val2014")
    meta = MetadataCatalog.get(dataset_name)
    assert meta.evaluator_type == "vqa" and meta.task == "vqa"
    assert (meta.question_file, meta.annotation_file, meta.image_root) == (
        q_file,
        a_file,
        "coco/val2014",
    )
    assert len(DatasetCatalog.get(dataset_name)) == 3


def test_missing_file_names_dataset(tmp_path, dataset_name):
    register_vqa(dataset_name, str(tmp_path / "nope.json"), None, "images")
    with pytest.raises(FileNotFoundError, match=rf"Dataset '{dataset_name}'.*nope\.json"):
        DatasetCatalog.get(dataset_name)


@pytest.mark.parametrize(
    "questions, annotations, message",
    [
        (
            [{"image_id": 42, "question_id": 420}],
            None,
            r"question 420 has no 'question'",
        ),
        (
            QUESTIONS + [QUESTIONS[0]],
            None,
            r"question_id 420 appears more than once",
        ),
        (
            QUESTIONS,
            ANNOTATIONS + [dict(ANNOTATIONS[0], question_id=999)],
            r"annotations\.json\): annotation of question_id 999, which is not in the questions",
        ),
        (
            QUESTIONS,
            ANNOTATIONS[:2],
            r"annotations\.json\): 1 questions of .*questions\.json have no annotation "
            r"\(first question_ids: \[70\]\)",
        ),
        (
            QUESTIONS,
            [{k: v for k, v in ANNOTATIONS[0].items() if k != "answer_type"}] + ANNOTATIONS[1:],
            r"annotation 420 has no 'answer_type'",
        ),
        (
            QUESTIONS,
            [dict(ANNOTATIONS[0], image_id=43)] + ANNOTATIONS[1:],
            r"question_id 420 is annotated on image 43, but its question .* is on image 42",
        ),
        (
            QUESTIONS,
            [dict(ANNOTATIONS[0], answers=[])] + ANNOTATIONS[1:],
            r"question_id 420 has no answers",
        ),
        (
            QUESTIONS,
            ANNOTATIONS + [ANNOTATIONS[0]],
            r"question_id 420 is annotated more than once",
        ),
    ],
)
def test_invalid_jsons(tmp_path, questions, annotations, message):
    q_file, a_file = _write(tmp_path, questions=questions, annotations=annotations)
    with pytest.raises(ValueError, match=message):
        load_vqa_json(q_file, a_file, "images", dataset_name="vqa_bad")


def test_no_subtype_and_no_file_name(tmp_path):
    q_file, a_file = _write(tmp_path, subtype=None)
    with pytest.raises(ValueError, match=r"questions\.json\): question 420 has no 'file_name'"):
        load_vqa_json(q_file, a_file, "images", dataset_name="vqa_bad")


def test_not_a_questions_file(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"questions file '.*q\.json' has no 'questions' list"):
        load_vqa_json(str(path), None, "images")


# ---------------------------------------------------------------------------- vocabulary


def test_answer_vocab_ranking(tmp_path):
    q_file, a_file = _write(tmp_path)
    records = load_vqa_json(q_file, a_file, "images")
    # Normalised counts over all 30 answers: "yes" 9, "red" 8 ("Red." included), "2" 8
    # ("two" included), "1", "3", "dark red", "maroon", "no" 1 each. Ties alphabetically.
    vocab = build_answer_vocab(records, 100)
    assert vocab == ["yes", "2", "red", "1", "3", "dark red", "maroon", "no"]
    assert build_answer_vocab(records, 3) == ["yes", "2", "red"]
    # Test-split records (no answers) are skipped.
    assert build_answer_vocab(records + [{"question_id": 1}], 3) == ["yes", "2", "red"]


def test_answer_vocab_errors():
    with pytest.raises(ValueError, match="no record has answers"):
        build_answer_vocab([{"question_id": 1}], 10)
    with pytest.raises(ValueError, match="num_answers must be positive"):
        build_answer_vocab([{"answers": ["yes"]}], 0)


def test_answer_vocab_drops_empty_answers():
    assert build_answer_vocab([{"answers": ["a", "the", "yes", "."]}], 10) == ["yes"]


# ---------------------------------------------------------------------------- soft targets


def test_targets_equal_the_metric(tmp_path):
    q_file, a_file = _write(tmp_path)
    records = load_vqa_json(q_file, a_file, "images")
    vocab = build_answer_vocab(records, 100)
    index = {a: i for i, a in enumerate(vocab)}
    for record in records:
        targets = answer_targets(record["answers"], index)
        for answer, i in index.items():
            assert targets.get(i, 0.0) == pytest.approx(vqa_accuracy(answer, record["answers"]))
    # Question 70: "red" 8 of 10 -> 1.0; "dark red", "maroon" 1 of 10 -> 0.3.
    assert answer_targets(records[2]["answers"], index) == pytest.approx(
        {index["red"]: 1.0, index["dark red"]: 0.3, index["maroon"]: 0.3}
    )


def test_targets_are_the_bottom_up_table_with_ten_answers():
    index = {"cat": 0, "dog": 1, "cow": 2, "hen": 3, "ant": 4}
    answers = ["cat"] + ["dog"] * 2 + ["cow"] * 3 + ["hen"] * 4
    assert answer_targets(answers, index) == pytest.approx({0: 0.3, 1: 0.6, 2: 0.9, 3: 1.0})


def test_targets_outside_the_vocabulary_and_errors():
    assert answer_targets(["zebra"] * 10, {"yes": 0}) == {}
    # Matching is on normalised answers (the vocabulary holds normalised ones).
    assert answer_targets(["Two"] * 10, {normalize_answer("two"): 3}) == {3: 1.0}
    with pytest.raises(ValueError, match="at least one human answer"):
        answer_targets([], {"yes": 0})
    with pytest.raises(TypeError, match="sequence of answers"):
        answer_targets("yes", {"yes": 0})
