"""The data side of the quick-start self-training reproduction (``tools/self_training.py``).

``glip_shapes_train`` is split into a small *gold* part (boxes, detection and grounding
annotations, as the teacher's training data) and a larger *caption-only* part whose boxes are
hidden and whose captions are rewritten as noisily as web alt-text: an object group the
caption would name is left out with probability ``omit_prob`` (at least one phrase stays), and
with probability ``absent_prob`` the caption also names an object that is not in the image.
The hidden boxes are kept aside only to measure the pseudo-labels' precision and recall.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

from ..data.datasets.shapes import SHAPES_CLASSES
from .core import _atomic_write_json

__all__ = [
    "COLORS",
    "KINDS",
    "noisy_caption",
    "phrase_class",
    "pseudo_label_quality",
    "split_shapes_for_self_training",
    "subset_grounding_json",
]

COLORS = tuple(sorted({name.split()[0] for name in SHAPES_CLASSES}))
KINDS = tuple(sorted({name.split()[1] for name in SHAPES_CLASSES}))
_COUNTS = {1: "a", 2: "two", 3: "three", 4: "four"}
# The generator's sizes are 20-32 px ("small") and 44-64 px ("large").
_SMALL_MAX_SIDE = 38


def _size_word(bbox: Sequence[float]) -> str:
    return "small" if max(bbox[2], bbox[3]) <= _SMALL_MAX_SIDE else "large"


def _phrase(desc: str, n: int) -> str:
    return f"{_COUNTS.get(n, str(n))} {desc}{'s' if n > 1 else ''}"


def noisy_caption(
    objects: Sequence[Mapping[str, Any]],
    rng: np.random.Generator,
    omit_prob: float,
    absent_prob: float,
) -> Tuple[str, Dict[str, Any]]:
    """A web-like caption of an image's objects, with omissions and an absent mention.

    Args:
        objects: ``{"category": "red circle", "bbox": [x, y, w, h]}`` per object.
        rng: the random source.
        omit_prob (float): probability that each object group (same size, colour and kind) is
            not mentioned; at least one group is always kept.
        absent_prob (float): probability that the caption also names an object of a
            category the image does not have.

    Returns:
        (str, dict): the caption, and what it does: ``mentioned`` / ``omitted`` object counts
        and the ``absent`` phrase (or None).
    """
    groups: Dict[str, int] = {}
    for obj in sorted(objects, key=lambda o: o["bbox"][0]):
        desc = f"{_size_word(obj['bbox'])} {obj['category']}"
        groups[desc] = groups.get(desc, 0) + 1
    descs = list(groups)
    kept = [d for d in descs if rng.random() >= omit_prob]
    if not kept:
        kept = [descs[int(rng.integers(len(descs)))]]
    phrases = [_phrase(d, groups[d]) for d in kept]
    absent = None
    if rng.random() < absent_prob:
        present = {obj["category"] for obj in objects}
        choices = [c for c in SHAPES_CLASSES if c not in present]
        if choices:
            size = "small" if rng.random() < 0.5 else "large"
            absent = f"a {size} {choices[int(rng.integers(len(choices)))]}"
            phrases.insert(int(rng.integers(len(phrases) + 1)), absent)
    if len(phrases) == 1:
        template = ("{0}", "photo of {0}", "{0} on a plain background")[int(rng.integers(3))]
        caption = template.format(*phrases)
    elif len(phrases) == 2:
        template = ("{0} and {1}", "{0} next to {1}", "picture with {0} and {1}")[
            int(rng.integers(3))
        ]
        caption = template.format(*phrases)
    else:
        caption = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    mentioned = sum(groups[d] for d in kept)
    info = {"mentioned": mentioned, "omitted": len(objects) - mentioned, "absent": absent}
    return caption, info


def phrase_class(phrase: str) -> str:
    """The shapes category a phrase names (``"two small red circles"`` -> ``"red circle"``),
    or "" when it names none."""
    words = [w.rstrip("s") if w.endswith("s") and w[:-1] in KINDS else w for w in phrase.split()]
    colors = [w for w in words if w in COLORS]
    kinds = [w for w in words if w in KINDS]
    return f"{colors[0]} {kinds[0]}" if colors and kinds else ""


def _read(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path: str, data: Any) -> str:
    _atomic_write_json(path, data)
    return path


def split_shapes_for_self_training(
    shapes_root: str,
    out_dir: str,
    *,
    num_gold: int,
    omit_prob: float = 0.2,
    absent_prob: float = 0.3,
    seed: int = 0,
) -> Dict[str, Any]:
    """Split ``glip_shapes``' training set into gold and caption-only parts (module docstring).

    The first ``num_gold`` images (by id) are gold, the rest caption-only.

    Writes into ``out_dir``: ``gold_instances.json`` (COCO detection) and
    ``gold_grounding.json`` (MDETR grounding) of the gold part; ``captions.jsonl``
    (``{file_name, caption}`` per caption-only image, no spans: the labeller finds the noun
    phrases with spaCy); ``hidden_instances.json`` (the caption-only part's true boxes, for
    :func:`pseudo_label_quality` only); ``split.json`` (what was written and how noisy).

    Returns:
        dict: the contents of ``split.json``.
    """
    ann_dir = os.path.join(shapes_root, "annotations")
    det = _read(os.path.join(ann_dir, "instances_train.json"))
    grd = _read(os.path.join(ann_dir, "grounding_train.json"))
    ids = sorted(img["id"] for img in det["images"])
    if not 0 < num_gold < len(ids):
        raise ValueError(f"num_gold must be in 1..{len(ids) - 1}, got {num_gold}")
    gold, rest = set(ids[:num_gold]), ids[num_gold:]

    def subset(data, keep):
        return {
            **{k: v for k, v in data.items() if k not in ("images", "annotations")},
            "images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }

    names = {c["id"]: c["name"] for c in det["categories"]}
    objects: Dict[int, List[Dict[str, Any]]] = {i: [] for i in rest}
    for a in det["annotations"]:
        if a["image_id"] in objects:
            objects[a["image_id"]].append({"category": names[a["category_id"]], "bbox": a["bbox"]})
    rng = np.random.default_rng(seed)
    file_of = {im["id"]: im["file_name"] for im in det["images"]}
    lines, stats = [], {"objects": 0, "omitted": 0, "captions_with_omission": 0, "absent": 0}
    for i in rest:
        caption, info = noisy_caption(objects[i], rng, omit_prob, absent_prob)
        lines.append(json.dumps({"file_name": file_of[i], "caption": caption}))
        stats["objects"] += len(objects[i])
        stats["omitted"] += info["omitted"]
        stats["captions_with_omission"] += info["omitted"] > 0
        stats["absent"] += info["absent"] is not None
    os.makedirs(out_dir, exist_ok=True)

    def join(name):
        return os.path.join(out_dir, name)

    with open(join("captions.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    split = {
        "num_gold": num_gold,
        "num_caption_only": len(rest),
        "omit_prob": omit_prob,
        "absent_prob": absent_prob,
        "seed": seed,
        "noise": {
            **stats,
            "omitted_object_rate": stats["omitted"] / max(stats["objects"], 1),
            "captions_with_omission_rate": stats["captions_with_omission"] / len(rest),
            "captions_with_absent_rate": stats["absent"] / len(rest),
        },
        "files": {
            "gold_instances": _write(join("gold_instances.json"), subset(det, gold)),
            "gold_grounding": _write(join("gold_grounding.json"), subset(grd, gold)),
            "captions": join("captions.jsonl"),
            "hidden_instances": _write(join("hidden_instances.json"), subset(det, set(rest))),
        },
    }
    _write(os.path.join(out_dir, "split.json"), split)
    return split


def subset_grounding_json(path: str, num_images: int, out_path: str) -> str:
    """The first ``num_images`` images of a grounding json and their annotations."""
    data = _read(path)
    images = data["images"][:num_images]
    keep = {im["id"] for im in images}
    out = {**data, "images": images}
    out["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    return _write(out_path, out)


def _iou_matrix(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> torch.Tensor:
    """(len(a), len(b)) IoU of XYWH boxes, in float64."""

    def xyxy(boxes):
        t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        return box_convert(t, "xywh", "xyxy")

    return box_iou(xyxy(a), xyxy(b))


def pseudo_label_quality(pseudo_json: str, hidden_json: str, iou: float = 0.5) -> Dict[str, Any]:
    """Precision and recall of pseudo-labels against the hidden true boxes.

    A pseudo box is correct when its phrase names the category of a true box of its image that
    it overlaps at IoU >= ``iou`` and that no higher-scoring pseudo box took (greedy, as COCO).

    Returns:
        dict: ``boxes``, ``correct``, ``precision``, ``true_objects``, ``recall``,
        ``wrong_phrase`` (boxes of phrases naming no category).
    """
    pseudo, hidden = _read(pseudo_json), _read(hidden_json)
    names = {c["id"]: c["name"] for c in hidden["categories"]}
    image_of_file = {im["file_name"]: im["id"] for im in hidden["images"]}
    truth: Dict[int, List[Dict[str, Any]]] = {}
    for a in hidden["annotations"]:
        truth.setdefault(a["image_id"], []).append(
            {"category": names[a["category_id"]], "bbox": a["bbox"]}
        )
    file_of = {im["id"]: im["file_name"] for im in pseudo["images"]}
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for a in pseudo["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    correct, wrong_phrase = 0, 0
    for pid, anns in by_image.items():
        gts = truth.get(image_of_file[file_of[pid]], [])
        taken = [False] * len(gts)
        anns = sorted(anns, key=lambda a: -a["score"])
        ious = _iou_matrix([a["bbox"] for a in anns], [g["bbox"] for g in gts])
        for row, a in enumerate(anns):
            cls = phrase_class(a["phrase"])
            wrong_phrase += cls == ""
            best, best_iou = -1, iou
            for k, g in enumerate(gts):
                if not taken[k] and g["category"] == cls:
                    v = float(ious[row, k])
                    if v >= best_iou:
                        best, best_iou = k, v
            if best >= 0:
                taken[best] = True
                correct += 1
    labelled = {image_of_file[file_of[pid]] for pid in file_of}
    n_true = sum(len(truth.get(i, [])) for i in labelled)
    n_boxes = len(pseudo["annotations"])
    return {
        "boxes": n_boxes,
        "correct": correct,
        "precision": correct / n_boxes if n_boxes else 0.0,
        "true_objects": n_true,
        "recall": correct / n_true if n_true else 0.0,
        "wrong_phrase": wrong_phrase,
    }
