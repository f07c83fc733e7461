"""GLIPv2 VQA and captioning through the engine: the mapper's fields, the trainer (vocabulary,
training, evaluation), the predictor and the demo, on a small glip_shapes set."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from registered_sets import registered, unique_prefix

from glip_d2.config import add_glip_config
from glip_d2.data.datasets.shapes_vl import register_glip_shapes_vl
from glip_d2.data.datasets.vqa import answer_targets
from glip_d2.data.mappers import VLTaskDatasetMapper
from glip_d2.data.train_loader import STREAM_VISIT_KEY
from glip_d2.engine import GLIPPredictor, GLIPTrainer
from glip_d2.engine.answer_vocab import prepare_answer_vocab
from glip_d2.evaluation.captioning import caption_scores

ROOT = Path(__file__).resolve().parents[2]
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java")


@pytest.fixture
def shapes_vl(tmp_path):
    """A 6 + 3 image glip_shapes set with its VQA and caption sets; yields the name prefix."""
    prefix = unique_prefix("glip_test_vl")
    root = str(tmp_path / "glip_shapes")
    with registered(register_glip_shapes_vl, root, prefix, num_train=6, num_val=3):
        yield prefix


def _cfg(tmp_path, task, prefix, **opts):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    if task == "vqa":
        cfg.MODEL.VQA_ON = True
    else:
        cfg.MODEL.CAPTION_ON = True
        cfg.MODEL.CAPTION.MAX_LENGTH = 4
        cfg.MODEL.CAPTION.BEAM_SIZE = 2
        cfg.INPUT.RANDOM_FLIP = "none"
    cfg.DATASETS.TRAIN = (f"{prefix}_train_{task}",)
    cfg.DATASETS.TEST = (f"{prefix}_val_{task}",)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH = 2, 2
    cfg.TEST.IMS_PER_BATCH = 4
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_vqa_mapper_gives_the_question_and_soft_targets(tmp_path, shapes_vl):
    cfg = prepare_answer_vocab(_cfg(tmp_path, "vqa", shapes_vl))
    answers = json.loads(Path(cfg.MODEL.VQA.ANSWER_VOCAB).read_text())
    mapper = VLTaskDatasetMapper(cfg, is_train=True)
    record = DatasetCatalog.get(f"{shapes_vl}_train_vqa")[0]
    out = mapper(dict(record))
    assert out["task"] == "vqa" and out["image"].dtype == torch.uint8
    tokens = mapper.tokenizer.convert_ids_to_tokens(out["input_ids"][out["attention_mask"] > 0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert mapper.tokenizer.convert_tokens_to_string(tokens[1:-1]) == record["question"]
    expected = answer_targets(record["answers"], {a: i for i, a in enumerate(answers)})
    assert dict(zip(out["answer_target_ids"].tolist(), out["answer_target_scores"].tolist())) == (
        pytest.approx(expected)
    )
    assert answers[int(out["answer_target_ids"][0])] == record["answers"][0]
    test_out = VLTaskDatasetMapper(cfg, is_train=False)(dict(record))
    assert "answer_target_ids" not in test_out and test_out["question_id"] == record["question_id"]


def test_caption_mapper_draws_a_reference_per_visit_reproducibly(tmp_path, shapes_vl):
    cfg = _cfg(tmp_path, "caption", shapes_vl, SEED=7)
    mapper = VLTaskDatasetMapper(cfg, is_train=True)
    record = dict(DatasetCatalog.get(f"{shapes_vl}_train_caption")[0])
    record["captions"] = ["a red circle.", "a blue square.", "two green triangles."]

    def drawn(visit, m=mapper):
        out = m({**record, STREAM_VISIT_KEY: visit})
        ids = out["input_ids"][out["attention_mask"] > 0][1:-1]
        return m.tokenizer.decode(ids.tolist())

    first = [drawn(v) for v in range(12)]
    assert set(first) == {"a red circle.", "a blue square.", "two green triangles."}
    assert first == [drawn(v, VLTaskDatasetMapper(cfg, is_train=True)) for v in range(12)]
    assert "input_ids" not in VLTaskDatasetMapper(cfg, is_train=False)(record)


def test_vqa_short_training_run_builds_the_vocabulary_and_evaluates(tmp_path, shapes_vl):
    cfg = prepare_answer_vocab(_cfg(tmp_path, "vqa", shapes_vl))
    vocab = Path(cfg.MODEL.VQA.ANSWER_VOCAB)
    assert vocab.parent == Path(cfg.OUTPUT_DIR) and vocab.is_file()
    records = DatasetCatalog.get(f"{shapes_vl}_train_vqa")
    assert set(json.loads(vocab.read_text())) == {r["answers"][0] for r in records}
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = json.loads((Path(cfg.OUTPUT_DIR) / "eval_results.json").read_text())
    metrics = results[f"{shapes_vl}_val_vqa"]["vqa"]
    num_val = len(DatasetCatalog.get(f"{shapes_vl}_val_vqa"))
    assert metrics["num_questions"] == num_val
    assert {"question_type/color", "question_type/count", "question_type/exist"} <= set(metrics)
    predictions = json.loads(
        (
            Path(cfg.OUTPUT_DIR) / "inference" / f"{shapes_vl}_val_vqa" / "vqa_predictions.json"
        ).read_text()
    )
    assert len(predictions) == num_val
    # The reported numbers are those of the written answers. The 10 synthetic human answers
    # of a shapes question agree, so an answer scores 1 when it equals them and 0 otherwise.
    answers = {r["question_id"]: r for r in DatasetCatalog.get(f"{shapes_vl}_val_vqa")}
    right = {
        p["question_id"]: p["answer"] == answers[p["question_id"]]["answers"][0]
        for p in predictions
    }
    assert metrics["accuracy"] == pytest.approx(100.0 * sum(right.values()) / num_val)
    for qtype in ("color", "count", "exist"):
        ids = [q for q, r in answers.items() if r["question_type"] == qtype]
        expected = 100.0 * sum(right[q] for q in ids) / len(ids)
        assert metrics[f"question_type/{qtype}"] == pytest.approx(expected)


@needs_java
def test_caption_short_training_run_evaluates(tmp_path, shapes_vl):
    cfg = _cfg(tmp_path, "caption", shapes_vl)
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = json.loads((Path(cfg.OUTPUT_DIR) / "eval_results.json").read_text())
    metrics = results[f"{shapes_vl}_val_caption"]["caption"]
    assert metrics["num_images"] == 3
    predictions = json.loads(
        (
            Path(cfg.OUTPUT_DIR)
            / "inference"
            / f"{shapes_vl}_val_caption"
            / "captions_predictions.json"
        ).read_text()
    )
    records = DatasetCatalog.get(f"{shapes_vl}_val_caption")
    assert sorted(p["image_id"] for p in predictions) == sorted(r["image_id"] for r in records)
    assert all(isinstance(p["caption"], str) for p in predictions)
    # The reported numbers score the written captions against the val references.
    rescored = caption_scores(
        {p["image_id"]: p["caption"] for p in predictions},
        {r["image_id"]: r["captions"] for r in records},
        ("BLEU", "CIDEr"),
    )
    for key in ("BLEU-1", "BLEU-4", "CIDEr-D"):
        assert metrics[key] == pytest.approx(rescored[key], abs=1e-9)


def test_mixed_tasks_in_datasets_train_is_an_error(tmp_path, shapes_vl):
    cfg = _cfg(tmp_path, "vqa", shapes_vl)
    cfg.DATASETS.TRAIN = (f"{shapes_vl}_train_vqa", f"{shapes_vl}_train_caption")
    with pytest.raises(ValueError, match="mixes tasks"):
        GLIPTrainer.build_train_loader(prepare_answer_vocab(cfg))


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)


def test_predictor_answer_and_caption_with_grounding(tmp_path, shapes_vl):
    cfg = prepare_answer_vocab(_cfg(tmp_path, "vqa", shapes_vl, **{"MODEL.CAPTION_ON": True}))
    predictor = GLIPPredictor(cfg)
    out = predictor.answer(_image(), "what color is the circle?", ground=True)
    answers = predictor.model.vqa_head.answers
    assert out["answer"] in answers and out["top_answers"][0][0] == out["answer"]
    assert out["score"] == pytest.approx(out["top_answers"][0][1])
    assert set(out["instances"].pred_phrases) <= {out["answer"]}
    with pytest.raises(ValueError, match="Empty question"):
        predictor.answer(_image(), "  ")
    cap = predictor.caption(_image(), ground=True, beam_size=1)
    assert isinstance(cap["caption"], str) and "instances" in cap
    assert predictor.caption(_image(), beam_size=1)["caption"] == cap["caption"]


def test_demo_question_and_caption(tmp_path, shapes_vl):
    from demo.demo import main

    cfg = prepare_answer_vocab(_cfg(tmp_path, "vqa", shapes_vl, **{"MODEL.CAPTION_ON": True}))
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(cfg.dump())
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), _image())
    common = ["--config-file", str(config_file), "--input", str(image)]
    assert (
        main(common + ["--question", "is there a red square?", "--output", str(tmp_path / "q")])
        == 0
    )
    answers = json.loads((tmp_path / "q" / "answers.json").read_text())
    assert answers[0]["question"] == "is there a red square?" and answers[0]["answer"]
    assert (tmp_path / "q" / "x.png").is_file()
    assert main(common + ["--caption", "--output", str(tmp_path / "c")]) == 0
    captions = json.loads((tmp_path / "c" / "captions.json").read_text())
    assert captions[0]["file_name"] == str(image) and "caption" in captions[0]
