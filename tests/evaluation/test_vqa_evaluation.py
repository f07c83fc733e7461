"""VQA answer normalisation, the 10-choose-9 accuracy and VQAEvaluator, with hand-computed
scores."""

import json
import logging
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.utils import comm

from glip_d2.evaluation.vqa import VQAEvaluator, normalize_answer, vqa_accuracy

# ---------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),
        ("  yes\n", "yes"),
        ("a dog", "dog"),
        ("The Red Car", "red car"),
        ("two", "2"),
        ("None", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none, zero ... ten are mapped
        ("dont", "don't"),
        ("don't", "don't"),  # the apostrophe is not punctuation
        ("3.5", "3.5"),  # a period before a digit is kept
        ("1,000", "1000"),  # a digit-comma-digit: punctuation is removed, not spaced
        ("yes,no", "yes no"),  # no number and no space around ",": replaced by a space
        ("yes, no", "yes no"),  # "," touches a space: removed
        ("black/white", "black white"),
        ("(left)", "left"),
        ("10:30", "10:30"),  # the colon is kept
        ("red\tand\twhite", "red and white"),
        ("a", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_normalize_answer_is_idempotent():
    for raw in ("Yes.", "a dog", "two", "1,000", "yes,no", "dont", "3.5", "the (left) one!"):
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


# ---------------------------------------------------------------------------- accuracy


def test_two_of_ten_humans_agree():
    # Normalised, "two" and "2" match. Each leave-one-out subset of the 10 answers:
    # - the 2 subsets without one of the "two"s have 1 matching answer: min(1, 1/3) = 1/3;
    # - the 8 subsets without another answer have 2: min(1, 2/3) = 2/3.
    # Mean: (2 * 1/3 + 8 * 2/3) / 10 = (18/3) / 10 = 0.6.
    answers = ["two", "two"] + ["3"] * 8
    assert vqa_accuracy("2", answers) == pytest.approx(0.6)


@pytest.mark.parametrize(
    "num_matching, expected",
    [
        (0, 0.0),
        # 1 subset (the matching answer held out) 0, 9 subsets 1/3: 9/3/10 = 0.3.
        (1, 0.3),
        # 3 subsets 2/3, 7 subsets 1: (2 + 7) / 10 = 0.9.
        (3, 0.9),
        # 4 subsets 3/3, 6 subsets 1: 1.
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_accuracy_by_number_of_matching_humans(num_matching, expected):
    answers = ["cat"] * num_matching + ["dog"] * (10 - num_matching)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_accuracy_with_five_answers():
    # m = 3 of N = 5 match: 3 subsets with 2 matches (2/3), 2 subsets with 3 (1):
    # (3 * 2/3 + 2 * 1) / 5 = 4/5.
    assert vqa_accuracy("red", ["red", "red", "blue", "green", "red"]) == pytest.approx(0.8)


def test_single_answer_can_never_be_matched():
    # Holding out the only answer leaves nothing to match.
    assert vqa_accuracy("yes", ["yes"]) == 0.0


def test_official_matching_normalises_only_when_humans_disagree():
    unanimous = ["yes"] * 10
    assert vqa_accuracy("Yes", unanimous, matching="official") == 0.0
    assert vqa_accuracy("Yes", unanimous) == 1.0
    assert vqa_accuracy(" yes\n", unanimous, matching="official") == 1.0
    disagree = ["yes"] * 9 + ["no"]
    assert vqa_accuracy("Yes.", disagree, matching="official") == 1.0
    # 2 of 10 "two" after normalisation, as in test_two_of_ten_humans_agree.
    assert vqa_accuracy("2", ["two", "two"] + ["3"] * 8, matching="official") == pytest.approx(0.6)


def test_accuracy_errors():
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("yes", [])
    with pytest.raises(TypeError, match="sequence of answers"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(ValueError, match="matching must be one of"):
        vqa_accuracy("yes", ["yes"], matching="exact")


# ---------------------------------------------------------------------------- evaluator


def _records():
    return [
        # Prediction "2": 0.6 (two of ten say "two").
        {
            "question_id": 10,
            "answers": ["two", "two"] + ["3"] * 8,
            "answer_type": "number",
        },
        # Prediction "yes": 1.0.
        {"question_id": 11, "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no"},
        # Prediction "no": 0.3 (one of ten).
        {"question_id": 12, "answers": ["yes"] * 9 + ["no"], "answer_type": "yes/no"},
        # Prediction "a cat": 0.0.
        {"question_id": 13, "answers": ["dog"] * 10, "answer_type": "other"},
    ]


PREDICTIONS = {10: "2", 11: "yes", 12: "no", 13: "a cat"}


def _run(evaluator, predictions):
    evaluator.reset()
    for question_id, answer in predictions.items():
        evaluator.process([{"question_id": question_id}], [{"answer": answer}])
    return evaluator.evaluate()


def test_evaluator_known_accuracy(register_records, tmp_path):
    name = register_records(_records(), evaluator_type="vqa")
    results = _run(VQAEvaluator(name, distributed=False, output_dir=str(tmp_path)), PREDICTIONS)
    vqa = results["vqa"]
    assert vqa["accuracy"] == pytest.approx(100 * (0.6 + 1.0 + 0.3 + 0.0) / 4)
    assert vqa["accuracy/number"] == pytest.approx(60.0)
    assert vqa["accuracy/yes/no"] == pytest.approx(100 * (1.0 + 0.3) / 2)
    assert vqa["accuracy/other"] == pytest.approx(0.0)
    assert vqa["num_questions"] == 4
    written = json.loads((tmp_path / "vqa_predictions.json").read_text())
    assert written == [{"question_id": q, "answer": a} for q, a in sorted(PREDICTIONS.items())]


def test_evaluator_matching_choice(register_records):
    name = register_records([{"question_id": 1, "answers": ["yes"] * 10, "answer_type": "yes/no"}])
    official = _run(VQAEvaluator(name, distributed=False), {1: "Yes"})
    normalized = _run(VQAEvaluator(name, distributed=False, matching="normalized"), {1: "Yes"})
    assert official["vqa"]["accuracy"] == 0.0
    assert normalized["vqa"]["accuracy"] == 100.0
    with pytest.raises(ValueError, match="matching must be one of"):
        VQAEvaluator(name, matching="exact")


def test_evaluator_scores_only_predicted_questions(register_records, caplog):
    name = register_records(_records())
    with caplog.at_level(logging.WARNING, logger="glip_d2.evaluation.vqa"):
        results = _run(VQAEvaluator(name, distributed=False), {10: "2", 11: "yes"})
    assert "2 of 4 questions" in caplog.text and "no prediction" in caplog.text
    assert results["vqa"]["accuracy"] == pytest.approx(100 * (0.6 + 1.0) / 2)
    assert results["vqa"]["num_questions"] == 2


def test_evaluator_without_answers_writes_predictions_only(register_records, tmp_path, caplog):
    name = register_records([{"question_id": 5}, {"question_id": 6}])
    with caplog.at_level(logging.INFO, logger="glip_d2.evaluation.vqa"):
        results = _run(
            VQAEvaluator(name, distributed=False, output_dir=str(tmp_path)), {6: "no", 5: "yes"}
        )
    assert results == {}
    assert "nothing to score" in caplog.text
    written = json.loads((tmp_path / "vqa_predictions.json").read_text())
    assert written == [{"question_id": 5, "answer": "yes"}, {"question_id": 6, "answer": "no"}]


def test_evaluator_errors(register_records):
    name = register_records(_records())
    evaluator = VQAEvaluator(name, distributed=False)
    with pytest.raises(KeyError, match="question_id 10 has no 'answer'"):
        evaluator.process([{"question_id": 10}], [{"logits": None}])
    evaluator.reset()
    evaluator.process([{"question_id": 99}], [{"answer": "yes"}])
    with pytest.raises(ValueError, match=rf"not in dataset '{name}' \(first: \[99\]\)"):
        evaluator.evaluate()
    evaluator.reset()
    with pytest.raises(ValueError, match=rf"dataset '{name}': no question was processed"):
        evaluator.evaluate()


# ---------------------------------------------------------------------------- two processes


def _worker(tmp_dir: str):
    DatasetCatalog.register("dist_vqa", _records)
    MetadataCatalog.get("dist_vqa").set(evaluator_type="vqa")
    evaluator = VQAEvaluator("dist_vqa", output_dir=tmp_dir)
    rank = comm.get_rank()
    # Questions 10, 11 on rank 0; 12, 13 on rank 1.
    mine = {q: a for k, (q, a) in enumerate(sorted(PREDICTIONS.items())) if k // 2 == rank}
    results = _run(evaluator, mine)
    if comm.is_main_process():
        (Path(tmp_dir) / "results.json").write_text(json.dumps(results))
    else:
        assert results == {}
    comm.synchronize()
    torch.distributed.destroy_process_group()


def test_two_processes_gather_every_prediction(tmp_path):
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["vqa"]["accuracy"] == pytest.approx(100 * (0.6 + 1.0 + 0.3 + 0.0) / 4)
    assert results["vqa"]["num_questions"] == 4
    written = json.loads((tmp_path / "vqa_predictions.json").read_text())
    assert [p["question_id"] for p in written] == [10, 11, 12, 13]
