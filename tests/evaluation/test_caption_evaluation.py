"""Caption metrics: CaptionEvaluator gives pycocoevalcap's own numbers; errors name the input."""

import json
import logging
import shutil

import pytest

from glip_d2.evaluation import captioning
from glip_d2.evaluation.captioning import (
    CaptionEvaluator,
    caption_scores,
    unavailable_caption_metrics,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs java (pycocoevalcap)")

# Hand-written: 4 images, 2-5 references each; predictions good, partial and poor.
REFERENCES = {
    11: [
        "A man riding a horse on the beach.",
        "A person rides a brown horse along the shore.",
        "a man on horseback near the ocean",
    ],
    12: [
        "Two dogs playing in the grass.",
        "Dogs run across a green lawn.",
        "Two puppies play on the grass.",
        "a pair of dogs playing outside",
        "Two dogs chase each other in a field.",
    ],
    13: ["A plate of food with broccoli and rice.", "Rice, broccoli and chicken on a plate."],
    14: [
        "A red double decker bus on a city street.",
        "A bus driving down the road.",
        "A large red bus parked next to a sidewalk.",
        "The double-decker bus is red.",
    ],
}
PREDICTIONS = {
    11: "a man riding a horse on the beach",
    12: "two dogs are playing in the grass.",
    13: "a plate with rice and vegetables",
    14: "a cat sitting on a sofa",
}


def _records():
    return [
        {"file_name": f"{i}.jpg", "image_id": i, "captions": refs, "task": "caption"}
        for i, refs in REFERENCES.items()
    ]


def _pycocoevalcap(predictions, references, meteor=False):
    """pycocoevalcap's own pipeline (as its COCOEvalCap.evaluate): tokenize, then score."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in references[i]] for i in predictions})
    res = tokenizer.tokenize({i: [{"caption": c}] for i, c in predictions.items()})
    if meteor:
        return {"METEOR": Meteor().compute_score(gts, res)[0]}
    return {
        "BLEU": Bleu(4).compute_score(gts, res, verbose=0)[0],
        "ROUGE_L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }


def _run(evaluator, predictions):
    evaluator.reset()
    items = list(predictions.items())
    # Two batches, as inference_on_dataset would send them.
    for batch in (items[:2], items[2:]):
        evaluator.process([{"image_id": i} for i, _ in batch], [{"caption": c} for _, c in batch])
    return evaluator.evaluate()


@needs_java
def test_evaluator_equals_pycocoevalcap(register_records, tmp_path):
    name = register_records(_records(), evaluator_type="caption")
    # METEOR (a Java process loading its paraphrase table, ~10 s) has its own test below.
    # distributed=True in one process: comm.gather of a world of one.
    evaluator = CaptionEvaluator(
        name, output_dir=str(tmp_path), metrics=("BLEU", "ROUGE_L", "CIDEr")
    )
    result = _run(evaluator, PREDICTIONS)["caption"]
    expected = _pycocoevalcap(PREDICTIONS, REFERENCES)
    assert set(result) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D"} | {
        "num_images"
    }
    assert result["num_images"] == 4
    for n in range(4):
        assert result[f"BLEU-{n + 1}"] == pytest.approx(100 * expected["BLEU"][n], abs=1e-9)
    assert result["CIDEr-D"] == pytest.approx(100 * expected["CIDEr"], abs=1e-9)
    assert result["ROUGE-L"] == pytest.approx(100 * expected["ROUGE_L"], abs=1e-9)
    assert 0 < result["BLEU-4"] < result["BLEU-1"] < 100 and result["CIDEr-D"] > 0
    with open(tmp_path / "captions_predictions.json") as f:
        written = json.load(f)
    assert written == [{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()]


@needs_java
def test_meteor_equals_pycocoevalcap():
    scores = caption_scores(PREDICTIONS, REFERENCES, ["METEOR"])
    expected = _pycocoevalcap(PREDICTIONS, REFERENCES, meteor=True)
    assert scores["METEOR"] == pytest.approx(100 * expected["METEOR"], abs=1e-9)
    assert 0 < scores["METEOR"] < 100


@needs_java
def test_identical_prediction_scores_bleu_100():
    # pycocoevalcap's BleuScorer smooths each precision as (correct + 1e-15) / (guess + 1e-9),
    # so identical captions give 1 - ~1e-10, not exactly 1.0.
    refs = {1: ["A small red circle next to a blue square."] * 3}
    scores = caption_scores({1: "a small red circle next to a blue square"}, refs, ["BLEU"])
    assert set(scores) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}
    for value in scores.values():
        assert value == pytest.approx(100.0, abs=1e-6) and value < 100.0


def test_unavailable_metrics_without_java(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    missing = unavailable_caption_metrics()
    assert set(missing) == {"METEOR", "SPICE"} and "default-jre-headless" in missing["METEOR"]
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        caption_scores(PREDICTIONS, REFERENCES)
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        CaptionEvaluator("any_caption_set", distributed=False)


def test_spice_needs_the_corenlp_jars(monkeypatch, tmp_path):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: "/usr/bin/java")
    monkeypatch.setattr(captioning, "_spice_lib", lambda: str(tmp_path))
    missing = unavailable_caption_metrics(["BLEU", "SPICE"])
    assert set(missing) == {"SPICE"} and "stanford-corenlp-3.6.0.jar" in missing["SPICE"]
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / jar).write_bytes(b"")
    assert unavailable_caption_metrics() == {}


@needs_java
def test_spice_skip_is_logged(caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(captioning, "_spice_lib", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING, logger=captioning.__name__):
        scores = caption_scores({1: "a dog"}, {1: ["a dog.", "a brown dog"]}, ["CIDEr", "SPICE"])
    assert set(scores) == {"CIDEr-D"}
    assert "Skipping the SPICE caption metric" in caplog.text
    assert "stanford-corenlp-3.6.0" in caplog.text


def test_caption_scores_rejects_bad_input():
    with pytest.raises(ValueError, match="Unknown caption metrics"):
        caption_scores(PREDICTIONS, REFERENCES, ["BLEU", "CIDEr-D"])
    with pytest.raises(ValueError, match="No predictions"):
        caption_scores({}, REFERENCES)
    with pytest.raises(ValueError, match="have no references.*99"):
        caption_scores({99: "a cat"}, REFERENCES)
    with pytest.raises(ValueError, match="Image 11 needs a non-empty list"):
        caption_scores({11: "a cat"}, {11: []})


@needs_java
def test_evaluator_errors_name_the_input(register_records):
    name = register_records(_records(), evaluator_type="caption")
    evaluator = CaptionEvaluator(name, distributed=False)
    with pytest.raises(KeyError, match="image 11.*'caption'"):
        evaluator.process([{"image_id": 11}], [{"instances": None}])
    evaluator.reset()
    with pytest.raises(ValueError, match=f"no predictions for dataset '{name}'"):
        evaluator.evaluate()
    evaluator.process([{"image_id": 77}], [{"caption": "a cat"}])
    with pytest.raises(ValueError, match=f"not in dataset '{name}'.*77"):
        evaluator.evaluate()


@needs_java
def test_evaluator_rejects_records_without_references(register_records):
    records = _records()
    records[2]["captions"] = []
    name = register_records(records, evaluator_type="caption")
    evaluator = CaptionEvaluator(name, distributed=False)
    evaluator.process([{"image_id": 11}], [{"caption": "a man"}])
    with pytest.raises(ValueError, match=f"Image 13 .*'{name}' has no reference captions"):
        evaluator.evaluate()
