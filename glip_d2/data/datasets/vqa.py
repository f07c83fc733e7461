"""VQAv2 (visual question answering) from its official question and annotation jsons.

Format (visualqa.org, VQAv2): the questions file holds ``{"data_subtype": "val2014", ...,
"questions": [{"image_id", "question", "question_id"}]}``, the annotations file ``{...,
"annotations": [{"question_id", "image_id", "answers": [{"answer", "answer_confidence",
"answer_id"}] (10 per question), "multiple_choice_answer", "answer_type", "question_type"}]}``.
Test splits (test-dev, test) have no annotations file. Images are COCO's, named
``COCO_<split>_<image_id:012d>.jpg`` with the split from ``data_subtype`` (test-dev2015
questions are on test2015 images).

GLIPv2 treats VQA as classification over an answer vocabulary built from the training
answers (:func:`build_answer_vocab`, 3,129 answers by the VQAv2 convention) with soft targets
(:func:`answer_targets`) and binary cross-entropy. The targets are the VQA accuracy of each
candidate answer (:func:`glip_d2.data.vqa_answers.vqa_accuracy`), so training aims at the
score the evaluator (``evaluator_type`` ``"vqa"``) gives.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from ..vqa_answers import normalize_answer, vqa_accuracy
from .coco_grounding import require_file

__all__ = ["answer_targets", "build_answer_vocab", "load_vqa_json", "register_vqa"]

logger = logging.getLogger(__name__)

_QUESTION_KEYS = ("image_id", "question", "question_id")
_ANNOTATION_KEYS = ("question_id", "image_id", "answers", "answer_type", "question_type")


def _read_json(path: str, list_key: str, dataset_name: Optional[str], what: str) -> Dict:
    require_file(path, dataset_name, what)
    with PathManager.open(path, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get(list_key), list):
        raise ValueError(f"{what} '{path}' has no '{list_key}' list (is it a VQAv2 {what}?)")
    return data


def _require_keys(entry: Any, keys: Sequence[str], where: str, what: str, index: int) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: {what} {index} is not an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        ident = entry.get("question_id", f"at index {index}")
        raise ValueError(f"{where}: {what} {ident} has no {', '.join(map(repr, missing))}")


def _coco_split(data_subtype: str) -> str:
    # test-dev is a subset of the test2015 images, which keep the test2015 file names.
    return data_subtype.replace("test-dev", "test")


def load_vqa_json(
    question_file: str,
    annotation_file: Optional[str],
    image_root: str,
    dataset_name: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """Load VQAv2 questions (and, where given, their human answers) as Detectron2 dicts.

    Args:
        question_file (str): e.g. ``v2_OpenEnded_mscoco_val2014_questions.json``.
        annotation_file (str, optional): e.g. ``v2_mscoco_val2014_annotations.json``; None or
            ``""`` for test splits (records then have no answers).
        image_root (str): the image folder (``coco/val2014``).
        dataset_name (str, optional): the registered name, for the messages.

    Returns:
        list[dict]: one record per question, in the questions file's order: ``file_name``
        (``image_root`` joined with the question's ``file_name`` where it has one, else the
        COCO name ``COCO_<split>_<image_id:012d>.jpg`` with the split from the file's
        ``data_subtype``), ``image_id``, ``question_id``, ``question``, ``task`` (``"vqa"``),
        ``height``/``width`` where the question has both and, with annotations, ``answers``
        (the raw human answer strings, 10 in VQAv2), ``answer_type`` and ``question_type``.

    Raises:
        FileNotFoundError: a json file is missing.
        ValueError: names the file and the question id: a question or annotation without a
            required key, a repeated question id, no ``data_subtype`` for a question without
            ``file_name``, an annotation of an unknown question or of another image than its
            question's, an annotation without answers, or a question without annotation
            (when an annotations file is given).
    """
    where_q = (
        question_file if dataset_name is None else f"Dataset '{dataset_name}' ({question_file})"
    )
    data = _read_json(question_file, "questions", dataset_name, "questions file")
    split = data.get("data_subtype")
    records: Dict[int, Dict[str, Any]] = {}
    for k, q in enumerate(data["questions"]):
        _require_keys(q, _QUESTION_KEYS, where_q, "question", k)
        qid = int(q["question_id"])
        if qid in records:
            raise ValueError(f"{where_q}: question_id {qid} appears more than once")
        image_id = int(q["image_id"])
        if "file_name" in q:
            file_name = q["file_name"]
        elif isinstance(split, str) and split:
            file_name = f"COCO_{_coco_split(split)}_{image_id:012d}.jpg"
        else:
            raise ValueError(
                f"{where_q}: question {qid} has no 'file_name' and the file has no "
                "'data_subtype' (e.g. 'val2014') to name its COCO image"
            )
        record = {
            "file_name": os.path.join(image_root, file_name),
            "image_id": image_id,
            "question_id": qid,
            "question": str(q["question"]),
            "task": "vqa",
        }
        if "height" in q and "width" in q:
            record["height"], record["width"] = int(q["height"]), int(q["width"])
        records[qid] = record

    if annotation_file:
        where_a = (
            annotation_file
            if dataset_name is None
            else f"Dataset '{dataset_name}' ({annotation_file})"
        )
        anns = _read_json(annotation_file, "annotations", dataset_name, "annotations file")
        for k, ann in enumerate(anns["annotations"]):
            _require_keys(ann, _ANNOTATION_KEYS, where_a, "annotation", k)
            qid = int(ann["question_id"])
            record = records.get(qid)
            if record is None:
                raise ValueError(
                    f"{where_a}: annotation of question_id {qid}, which is not in the "
                    f"questions file {question_file}"
                )
            if "answers" in record:
                raise ValueError(f"{where_a}: question_id {qid} is annotated more than once")
            if int(ann["image_id"]) != record["image_id"]:
                raise ValueError(
                    f"{where_a}: question_id {qid} is annotated on image {ann['image_id']}, "
                    f"but its question ({question_file}) is on image {record['image_id']}"
                )
            answers = ann["answers"]
            if not isinstance(answers, list) or not answers:
                raise ValueError(f"{where_a}: question_id {qid} has no answers")
            for a in answers:
                if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                    raise ValueError(
                        f"{where_a}: question_id {qid} has an answer without an 'answer' "
                        f"string: {a!r}"
                    )
            record["answers"] = [a["answer"] for a in answers]
            record["answer_type"] = str(ann["answer_type"])
            record["question_type"] = str(ann["question_type"])
        unannotated = [qid for qid, r in records.items() if "answers" not in r]
        if unannotated:
            raise ValueError(
                f"{where_a}: {len(unannotated)} questions of {question_file} have no annotation "
                f"(first question_ids: {unannotated[:5]})"
            )
    logger.info(
        f"Loaded {len(records)} VQA questions from {question_file}"
        + (f" with answers from {annotation_file}" if annotation_file else " (no answers)")
    )
    return list(records.values())


def register_vqa(
    name: str, question_file: str, annotation_file: Optional[str], image_root: str
) -> None:
    """Register a VQAv2-format split in Detectron2's catalogs (reads no file now).

    Args:
        name (str): the dataset name, e.g. ``vqa_v2_val``.
        question_file (str): the questions json.
        annotation_file (str, optional): the annotations json; None or ``""`` for test splits.
        image_root (str): the image folder.

    The metadata gets ``evaluator_type="vqa"``, ``task="vqa"``, ``question_file``,
    ``annotation_file`` and ``image_root``.
    """
    DatasetCatalog.register(
        name, lambda: load_vqa_json(question_file, annotation_file, image_root, name)
    )
    MetadataCatalog.get(name).set(
        evaluator_type="vqa",
        task="vqa",
        question_file=question_file,
        annotation_file=annotation_file,
        image_root=image_root,
    )


def build_answer_vocab(records: Iterable[Mapping[str, Any]], num_answers: int) -> List[str]:
    """The answer vocabulary: the most frequent normalised human answers.

    Every human answer of every record counts (all 10 of a VQAv2 question, not only its
    ``multiple_choice_answer``); answers are normalised with
    :func:`glip_d2.data.vqa_answers.normalize_answer`, and an answer that normalises to the
    empty string is left out.

    Args:
        records (Iterable[Mapping]): records of :func:`load_vqa_json` (those without
            ``answers`` are skipped), usually the training split.
        num_answers (int): vocabulary size (3,129 by the VQAv2 convention); fewer when the
            records have fewer distinct answers.

    Returns:
        list[str]: normalised answers by decreasing count, ties in alphabetical order; an
        answer's index in this list is its class index.

    Raises:
        ValueError: ``num_answers`` is not positive, or no record has an answer.
    """
    if num_answers <= 0:
        raise ValueError(f"num_answers must be positive, got {num_answers}")
    counts: Counter = Counter()
    for r in records:
        answers = r.get("answers")
        if answers:
            counts.update(normalize_answer(a) for a in answers)
    counts.pop("", None)
    if not counts:
        raise ValueError(
            "Cannot build a VQA answer vocabulary: no record has answers (a test split?)"
        )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in ranked[:num_answers]]


def answer_targets(answers: Sequence[str], vocab_index: Mapping[str, int]) -> Dict[int, float]:
    """Soft classification targets of a question: the VQA accuracy of each vocabulary answer.

    The target of vocabulary answer ``c`` is exactly ``vqa_accuracy(c, answers)`` (the
    default ``"normalized"`` matching), so a model trained with binary cross-entropy on these
    targets is trained towards the evaluator's score. With 10 human answers this equals the
    table of the bottom-up VQA code (1, 2, 3, >= 4 humans -> 0.3, 0.6, 0.9, 1.0), which is the
    special case N = 10 of this rule.

    Args:
        answers (Sequence[str]): the question's raw human answers (a record's ``answers``).
        vocab_index (Mapping[str, int]): normalised answer -> class index (the inverse of
            :func:`build_answer_vocab`'s list).

    Returns:
        dict[int, float]: class index -> target in (0, 1], for the distinct normalised human
        answers that are in the vocabulary (the others have target 0 and are absent; a
        question whose answers are all outside the vocabulary gets ``{}``).

    Raises:
        ValueError: ``answers`` is empty.
        TypeError: ``answers`` is a single string.
    """
    if isinstance(answers, str):
        raise TypeError(f"answers must be a sequence of answers, got the string {answers!r}")
    if len(answers) == 0:
        raise ValueError("VQA answer targets need at least one human answer, got none")
    targets: Dict[int, float] = {}
    for answer in dict.fromkeys(normalize_answer(a) for a in answers):
        index = vocab_index.get(answer)
        if index is not None:
            targets[int(index)] = vqa_accuracy(answer, answers)
    return targets
