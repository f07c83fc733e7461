"""VQA and captioning sets on ``glip_shapes`` (GLIPv2's VL tasks on the synthetic images).

Everything follows from the COCO json ``annotations/instances_{split}.json`` of
:mod:`.shapes` (each box's category gives its colour and shape, its side the size word), so no
extra file is written:

- ``<prefix>_{train,val}_vqa``: per image, deterministic questions with one answer each
  (:func:`shape_questions`): the colour of each shape present once, the shape of each colour
  present once, the count of every shape, and one "is there ...?" question answered "yes" and
  one answered "no".
- ``<prefix>_{train,val}_caption``: per image, every caption the generator could have written
  for it (:func:`shape_references`; the generator's own caption is always one of them).

:func:`majority_answer_accuracy` gives the answer-prior baseline (the train-set majority answer
per question type, scored on val) that a VQA model must beat.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

from detectron2.utils.file_io import PathManager

from .shapes import (
    _COLORS,
    _COUNT_WORDS,
    _KINDS,
    _ONE_PHRASE,
    _SIZES,
    _SPLITS,
    _TWO_PHRASES,
    SHAPES_CLASSES,
    register_generated_shapes,
)

__all__ = [
    "ShapeObject",
    "load_shapes_captions",
    "load_shapes_vqa",
    "majority_answer_accuracy",
    "register_glip_shapes_vl",
    "shape_objects",
    "shape_questions",
    "shape_references",
]

_COLOR_NAMES = tuple(name for name, _ in _COLORS)
#: VQA-style records repeat the single answer 10 times (VQA v2 has 10 human answers).
_NUM_ANSWERS = 10


class ShapeObject(NamedTuple):
    """One drawn shape: ``color`` (``"red"`` ...), ``kind`` (``"circle"`` ...), ``size``
    (``"small"`` or ``"large"``) and ``x`` (the box's left edge, pixels)."""

    color: str
    kind: str
    size: str
    x: float


def shape_objects(annotations: Sequence[Mapping[str, Any]]) -> List[ShapeObject]:
    """The shapes of one image from its ``instances_*.json`` annotations, in json order.

    Args:
        annotations (Sequence[dict]): COCO annotations with ``category_id`` (1..9, colour-major
            as :data:`SHAPES_CLASSES`) and ``bbox`` ``[x, y, side, side]`` (``XYWH_ABS``).

    Returns:
        list[ShapeObject]: size ``"small"`` for a side <= 32 px, ``"large"`` for >= 44 px.

    Raises:
        ValueError: a category id outside 1..9 or a side between the two size ranges.
    """
    objects = []
    small_max, large_min = _SIZES["small"][1], _SIZES["large"][0]
    for ann in annotations:
        cid = int(ann["category_id"])
        if not 1 <= cid <= len(SHAPES_CLASSES):
            raise ValueError(f"Annotation {ann.get('id')} has category {cid}, not a glip_shapes id")
        side = float(ann["bbox"][2])
        if side <= small_max:
            size = "small"
        elif side >= large_min:
            size = "large"
        else:
            raise ValueError(
                f"Annotation {ann.get('id')} has side {side}, in neither size range {_SIZES}"
            )
        color, kind = _COLOR_NAMES[(cid - 1) // len(_KINDS)], _KINDS[(cid - 1) % len(_KINDS)]
        objects.append(ShapeObject(color, kind, size, float(ann["bbox"][0])))
    return objects


def _phrases(objects: Sequence[ShapeObject]) -> List[str]:
    # As shapes._caption: identical descriptions grouped, groups ordered by their leftmost box
    # (a stable sort by x, so equal x keep json order).
    groups: Dict[str, int] = {}
    for obj in sorted(objects, key=lambda o: o.x):
        desc = f"{obj.size} {obj.color} {obj.kind}"
        groups[desc] = groups.get(desc, 0) + 1
    return [
        ("a " if n == 1 else _COUNT_WORDS[n] + " ") + desc + ("s" if n > 1 else "")
        for desc, n in groups.items()
    ]


def shape_references(objects: Sequence[ShapeObject]) -> List[str]:
    """Every caption the ``glip_shapes`` generator could have written for these objects.

    The generator groups identical descriptions (``"two small red circles"``), orders the
    groups left to right and picks one template at random: one of ``_ONE_PHRASE`` for one
    group, of ``_TWO_PHRASES`` for two, and the list ``"p1, p2 and p3."`` for three or more.

    Args:
        objects (Sequence[ShapeObject]): the image's shapes (:func:`shape_objects`).

    Returns:
        list[str]: lower-case captions ending with a period: 3 for one or two groups, 1 for
        more.

    Raises:
        ValueError: no objects.
    """
    phrases = _phrases(objects)
    if not phrases:
        raise ValueError("An image without shapes has no caption")
    if len(phrases) == 1:
        return [t.format(*phrases) for t in _ONE_PHRASE]
    if len(phrases) == 2:
        return [t.format(*phrases) for t in _TWO_PHRASES]
    return [", ".join(phrases[:-1]) + f" and {phrases[-1]}."]


def shape_questions(
    objects: Sequence[ShapeObject], image_id: int
) -> List[Tuple[str, str, str, str]]:
    """Deterministic questions about one image, each with its single correct answer.

    In this order: ``"what color is the {kind}?"`` for each shape kind present exactly once
    (question type ``color``); ``"what shape is the {color} object?"`` for each colour present
    exactly once (``shape``); ``"how many {kind}s are there?"`` for every kind, answered with
    a digit ``"0"`` .. ``"4"`` (``count``, answer type ``number``); ``"is there a {color}
    {kind}?"`` once for a present pair (``"yes"``) and once for an absent one (``"no"``), both
    picked from the image id (``exist``, answer type ``yes/no``).

    Args:
        objects (Sequence[ShapeObject]): the image's shapes (:func:`shape_objects`).
        image_id (int): picks the yes/no pairs (``image_id`` modulo their number, in
            :data:`SHAPES_CLASSES` order).

    Returns:
        list[tuple[str, str, str, str]]: ``(question, answer, answer_type, question_type)``.

    Raises:
        ValueError: no objects.
    """
    if not objects:
        raise ValueError(f"Image {image_id} has no shapes to ask about")
    kinds = Counter(o.kind for o in objects)
    colors = Counter(o.color for o in objects)
    questions = []
    for kind in _KINDS:
        if kinds[kind] == 1:
            color = next(o.color for o in objects if o.kind == kind)
            questions.append((f"what color is the {kind}?", color, "other", "color"))
    for color in _COLOR_NAMES:
        if colors[color] == 1:
            kind = next(o.kind for o in objects if o.color == color)
            questions.append((f"what shape is the {color} object?", kind, "other", "shape"))
    for kind in _KINDS:
        questions.append((f"how many {kind}s are there?", str(kinds[kind]), "number", "count"))
    pairs = [(c, k) for c in _COLOR_NAMES for k in _KINDS]
    present = {(o.color, o.kind) for o in objects}
    for answer, options in (
        ("yes", [p for p in pairs if p in present]),
        ("no", [p for p in pairs if p not in present]),
    ):
        color, kind = options[int(image_id) % len(options)]
        questions.append((f"is there a {color} {kind}?", answer, "yes/no", "exist"))
    return questions


def _read_split(json_file: str) -> Tuple[List[Dict[str, Any]], Dict[int, List[Dict[str, Any]]]]:
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    by_image: Dict[int, List[Dict[str, Any]]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    return data["images"], by_image


def load_shapes_vqa(json_file: str, image_root: str) -> List[Dict[str, Any]]:
    """VQA records of one ``glip_shapes`` split (:func:`shape_questions` of every image).

    Args:
        json_file (str): the split's ``instances_{split}.json``.
        image_root (str): the split's image folder.

    Returns:
        list[dict]: one record per question: ``{"file_name", "height", "width", "image_id",
        "question_id"`` (``image_id * 100 + k`` for the image's k-th question), ``"question"``,
        ``"answers"`` (the answer 10 times, as VQA v2's 10 human answers), ``"answer_type"``,
        ``"question_type"``, ``"task": "vqa"}``.
    """
    images, by_image = _read_split(json_file)
    records = []
    for img in images:
        objects = shape_objects(by_image[img["id"]])
        for k, (question, answer, answer_type, question_type) in enumerate(
            shape_questions(objects, img["id"])
        ):
            records.append(
                {
                    "file_name": os.path.join(image_root, img["file_name"]),
                    "height": img["height"],
                    "width": img["width"],
                    "image_id": img["id"],
                    "question_id": img["id"] * 100 + k,
                    "question": question,
                    "answers": [answer] * _NUM_ANSWERS,
                    "answer_type": answer_type,
                    "question_type": question_type,
                    "task": "vqa",
                }
            )
    return records


def load_shapes_captions(json_file: str, image_root: str) -> List[Dict[str, Any]]:
    """Caption records of one ``glip_shapes`` split (:func:`shape_references` per image).

    Args:
        json_file (str): the split's ``instances_{split}.json``.
        image_root (str): the split's image folder.

    Returns:
        list[dict]: ``{"file_name", "height", "width", "image_id", "captions", "task":
        "caption"}`` per image.
    """
    images, by_image = _read_split(json_file)
    return [
        {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "captions": shape_references(shape_objects(by_image[img["id"]])),
            "task": "caption",
        }
        for img in images
    ]


def _vqa_score(prediction: str, answers: Sequence[str]) -> float:
    # VQA accuracy min(1, #annotators who gave it / 3); with 10 equal answers, exact match.
    return min(1.0, sum(a == prediction for a in answers) / 3.0)


def _majority(answers: Sequence[str]) -> str:
    counts = Counter(answers)
    # Ties broken by the answer text, so the baseline does not depend on record order.
    return min(counts, key=lambda a: (-counts[a], a))


def majority_answer_accuracy(
    train_records: Sequence[Mapping[str, Any]], val_records: Sequence[Mapping[str, Any]]
) -> Dict[str, float]:
    """The answer-prior baseline: each question type's most frequent train answer, on val.

    A record's answer is the majority of its ``answers``; a question type absent from train
    gets the most frequent train answer overall.

    Args:
        train_records, val_records (Sequence[dict]): VQA records (``"answers"``,
            ``"question_type"``), e.g. of ``glip_shapes_train_vqa`` and ``glip_shapes_val_vqa``.

    Returns:
        dict[str, float]: VQA accuracy in percent per question type of val, and ``"overall"``.

    Raises:
        ValueError: empty ``train_records`` or ``val_records``.
    """
    if not train_records or not val_records:
        raise ValueError("majority_answer_accuracy needs train and val records")
    by_type: Dict[str, List[str]] = {}
    for r in train_records:
        by_type.setdefault(r["question_type"], []).append(_majority(r["answers"]))
    prior = {qtype: _majority(answers) for qtype, answers in by_type.items()}
    fallback = _majority([a for answers in by_type.values() for a in answers])
    scores: Dict[str, List[float]] = {}
    for r in val_records:
        guess = prior.get(r["question_type"], fallback)
        scores.setdefault(r["question_type"], []).append(_vqa_score(guess, r["answers"]))
    result = {qtype: 100.0 * sum(s) / len(s) for qtype, s in sorted(scores.items())}
    every = [s for values in scores.values() for s in values]
    result["overall"] = 100.0 * sum(every) / len(every)
    return result


def register_glip_shapes_vl(
    root: str,
    *,
    prefix: str = "glip_shapes",
    num_train: int = 256,
    num_val: int = 64,
    seed: int = 0,
) -> List[str]:
    """Register ``<prefix>_{train,val}_vqa`` (evaluator ``"vqa"``) and
    ``<prefix>_{train,val}_caption`` (evaluator ``"caption"``) on the ``glip_shapes`` set.

    The set is generated in ``root`` the first time one of them is loaded (as
    :func:`.shapes.register_glip_shapes` does; pass the same sizes and seed).

    Args:
        root (str): the dataset folder, e.g. ``$DETECTRON2_DATASETS/glip_shapes``.
        prefix (str): dataset name prefix.
        num_train, num_val, seed: passed to :func:`.shapes.generate_glip_shapes`.

    Returns:
        list[str]: the registered names.
    """
    params = {"num_train": num_train, "num_val": num_val, "seed": seed}
    names = []
    for split in _SPLITS:
        image_root = os.path.join(root, split)
        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        for task, loader in (("vqa", load_shapes_vqa), ("caption", load_shapes_captions)):
            name = f"{prefix}_{split}_{task}"
            register_generated_shapes(
                name,
                root,
                params,
                lambda f=loader, j=json_file, r=image_root: f(j, r),
                json_file=json_file,
                image_root=image_root,
                evaluator_type=task,
                task=task,
            )
            names.append(name)
    return names
