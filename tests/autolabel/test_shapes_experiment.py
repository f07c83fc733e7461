"""The data side of the self-training reproduction: noisy captions, the gold / caption-only
split of glip_shapes, and the pseudo-labels' precision and recall against hidden boxes."""

import json

import numpy as np

from glip_d2.autolabel.shapes_experiment import (
    noisy_caption,
    phrase_class,
    pseudo_label_quality,
    split_shapes_for_self_training,
    subset_grounding_json,
)
from glip_d2.data.datasets.shapes import generate_glip_shapes
from glip_d2.engine.predictor import noun_phrase_spans

OBJECTS = [
    {"category": "red circle", "bbox": [50, 10, 24, 24]},
    {"category": "red circle", "bbox": [90, 60, 30, 30]},
    {"category": "blue square", "bbox": [10, 40, 50, 50]},
    {"category": "green triangle", "bbox": [120, 5, 60, 60]},
]


def _phrases(caption):
    return [caption[s:e] for ((s, e),) in noun_phrase_spans(caption, "en_core_web_sm")]


def test_clean_caption_names_every_object_and_spacy_finds_the_phrases():
    rng = np.random.default_rng(0)
    for _ in range(10):
        caption, info = noisy_caption(OBJECTS, rng, omit_prob=0.0, absent_prob=0.0)
        assert info == {"mentioned": 4, "omitted": 0, "absent": None}
        classes = [phrase_class(p) for p in _phrases(caption)]
        assert sorted(c for c in classes if c) == ["blue square", "green triangle", "red circle"]
    assert "two small red circles" in noisy_caption(OBJECTS[:2], rng, 0.0, 0.0)[0]


def test_noise_omits_groups_and_names_absent_objects_at_the_given_rates():
    rng = np.random.default_rng(1)
    omitted, absent, n = 0, 0, 400
    for _ in range(n):
        caption, info = noisy_caption(OBJECTS, rng, omit_prob=0.5, absent_prob=0.25)
        assert info["mentioned"] >= 1 and info["mentioned"] + info["omitted"] == 4
        omitted += info["omitted"]
        if info["absent"] is not None:
            absent += 1
            assert info["absent"] in caption
            assert phrase_class(info["absent"]) not in {o["category"] for o in OBJECTS}
    assert 0.4 < omitted / (4 * n) < 0.55  # at least one group kept: a little under 0.5
    assert 0.18 < absent / n < 0.32


def test_split_and_pseudo_label_quality(tmp_path):
    root = tmp_path / "glip_shapes"
    generate_glip_shapes(str(root), num_train=12, num_val=2)
    split = split_shapes_for_self_training(str(root), str(tmp_path / "st"), num_gold=4)
    files = split["files"]
    gold = json.loads(open(files["gold_instances"]).read())
    grounding = json.loads(open(files["gold_grounding"]).read())
    hidden = json.loads(open(files["hidden_instances"]).read())
    captions = [json.loads(line) for line in open(files["captions"])]
    full = json.loads((root / "annotations" / "instances_train.json").read_text())
    assert [im["id"] for im in gold["images"]] == [1, 2, 3, 4]
    assert [im["id"] for im in grounding["images"]] == [1, 2, 3, 4]
    assert [c["file_name"] for c in captions] == [im["file_name"] for im in hidden["images"]]
    assert len(gold["annotations"]) + len(hidden["annotations"]) == len(full["annotations"])
    assert split["noise"]["objects"] == len(hidden["annotations"])

    # Pseudo-labels for the first two caption-only images: one exact box per true object of
    # image 5, plus one box with the wrong category and one that misses.
    im5 = hidden["images"][0]
    names = {c["id"]: c["name"] for c in hidden["categories"]}
    truth5 = [a for a in hidden["annotations"] if a["image_id"] == im5["id"]]
    anns = [
        {"image_id": 1, "bbox": a["bbox"], "phrase": f"a {names[a['category_id']]}", "score": 0.9}
        for a in truth5
    ]
    x, y, w, h = truth5[0]["bbox"]
    other = next(n for n in names.values() if n != names[truth5[0]["category_id"]])
    anns.append({"image_id": 1, "bbox": [x, y, w, h], "phrase": f"two {other}s", "score": 0.8})
    anns.append({"image_id": 2, "bbox": [0, 0, 3, 3], "phrase": "a thing", "score": 0.7})
    pseudo = {
        "images": [
            {"id": 1, "file_name": im5["file_name"]},
            {"id": 2, "file_name": hidden["images"][1]["file_name"]},
        ],
        "annotations": [{"id": i + 1, **a} for i, a in enumerate(anns)],
    }
    path = tmp_path / "pseudo.json"
    path.write_text(json.dumps(pseudo))
    q = pseudo_label_quality(str(path), files["hidden_instances"])
    true_objects = len(truth5) + sum(
        a["image_id"] == hidden["images"][1]["id"] for a in hidden["annotations"]
    )
    assert q["boxes"] == len(truth5) + 2 and q["correct"] == len(truth5)
    assert q["true_objects"] == true_objects and q["wrong_phrase"] == 1
    assert q["recall"] == len(truth5) / true_objects

    one = json.loads(open(subset_grounding_json(str(path), 1, str(tmp_path / "one.json"))).read())
    assert [im["id"] for im in one["images"]] == [1]
    assert {a["image_id"] for a in one["annotations"]} == {1}
