"""Auto-labelling with a real (tiny, random) GLIP teacher: captions mode (given spans and
spaCy noun phrases) into MDETR json, ontology mode into COCO json, the command line, and two
processes on gloo against one."""

import json

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from PIL import Image
from synthetic_inputs import TINY_CONFIG, tiny_cfg

from glip_d2.autolabel import LabelSettings, label_captions, label_ontology
from glip_d2.autolabel.cli import build_parser
from glip_d2.autolabel.cli import main as cli_main
from glip_d2.data.datasets.mdetr_grounding import register_mdetr_grounding
from glip_d2.engine import GLIPPredictor
from glip_d2.utils.checkpoint import GLIPCheckpointer

CAPTIONS = [
    ("a red circle next to a blue square", [[0, 12], [22, 34]]),
    ("two green triangles on a grey table", None),  # spaCy finds the noun phrases
    ("a small yellow square", [[[2, 7], [15, 21]]]),  # one phrase of two spans
]
# Random weights: keep every box the model returns, then the per-phrase top-k.
SETTINGS = LabelSettings(score_threshold=0.0, topk=3, shard_size=2)


def _folder(root, n=5):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for j in range(n):
        h, w = (96, 128) if j % 2 else (120, 90)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{j}.jpg")
        names.append(f"{j}.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return names + ["broken.jpg"]


def _records(names):
    out = []
    for j, name in enumerate(names):
        caption, spans = CAPTIONS[j % len(CAPTIONS)]
        rec = {"file_name": name, "caption": caption}
        if spans is not None:
            rec["phrase_spans"] = spans
        out.append(rec)
    return out


def _teacher(**opts):
    cfg = tiny_cfg(**{"MODEL.ATSS.INFERENCE_TH": 0.0, **opts})
    torch.manual_seed(0)
    return GLIPPredictor(cfg)


def test_captions_mode_writes_mdetr_json_with_phrase_spans(tmp_path):
    names = _folder(tmp_path / "img")
    path = label_captions(
        _teacher(), _records(names), str(tmp_path / "img"), str(tmp_path / "out"), SETTINGS
    )
    data = json.loads(open(path).read())
    assert [im["file_name"] for im in data["images"]] == names[:-1]  # broken.jpg skipped
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["unreadable_files"] == ["broken.jpg"] and summary["labelled"] == 5
    by_id = {im["id"]: im for im in data["images"]}
    for ann in data["annotations"]:
        caption = by_id[ann["image_id"]]["caption"]
        text = " ".join(caption[s:e] for s, e in ann["tokens_positive"])
        assert text == ann["phrase"] and 0.0 <= ann["score"] <= 1.0
        assert ann["tokens_positive"] in by_id[ann["image_id"]]["tokens_positive_eval"]
    spacy_image = by_id[2]  # record 1: noun phrases found by spaCy
    found = [
        " ".join(spacy_image["caption"][s:e] for s, e in p)
        for p in spacy_image["tokens_positive_eval"]
    ]
    assert found == ["two green triangles", "a grey table"]

    register_mdetr_grounding("autolabel_test_captions", {}, path, str(tmp_path / "img"))
    try:
        records = DatasetCatalog.get("autolabel_test_captions")
    finally:
        DatasetCatalog.remove("autolabel_test_captions")
    assert len(records) == 5
    loaded = [a for r in records for a in r["annotations"]]
    assert len(loaded) == len(data["annotations"]) > 0
    for r in records:
        for a in r["annotations"]:
            phrase = " ".join(r["caption"][s:e] for s, e in a["tokens_positive"])
            assert a["tokens_positive"] in r["tokens_positive_eval"] and phrase.strip()
            assert 0.0 <= a["score"] <= 1.0  # kept for training on pseudo-labels


def test_ontology_mode_writes_coco_json(tmp_path):
    from pycocotools.coco import COCO

    _folder(tmp_path / "img", n=3)
    onto = {"red circle": "circle", "round thing": "circle", "blue square": "square"}
    path = label_ontology(_teacher(), str(tmp_path / "img"), onto, str(tmp_path / "out"), SETTINGS)
    coco = COCO(path)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square"]
    assert len(coco.getImgIds()) == 3 and coco.getAnnIds()
    for img in coco.loadImgs(coco.getImgIds()):
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            x, y, w, h = ann["bbox"]
            assert (
                0 <= x and x + w <= img["width"] + 1e-3 and 0 <= y and y + h <= img["height"] + 1e-3
            )
        per_class = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            per_class[ann["category_id"]] = per_class.get(ann["category_id"], 0) + 1
        assert max(per_class.values()) <= SETTINGS.topk


def _cli_args(tmp_path, out, weights):
    return build_parser().parse_args(
        [
            "--config-file",
            str(TINY_CONFIG),
            "--captions",
            str(tmp_path / "pairs.jsonl"),
            "--image-root",
            str(tmp_path / "img"),
            "--output-dir",
            str(out),
            "MODEL.DEVICE",
            "cpu",
            "MODEL.WEIGHTS",
            weights,
            "MODEL.ATSS.INFERENCE_TH",
            "0.0",
            "AUTOLABEL.SCORE_THRESHOLD",
            "0.0",
            "AUTOLABEL.TOPK",
            "3",
            "AUTOLABEL.SHARD_SIZE",
            "1",
        ]
    )


def test_command_line_one_and_two_processes_agree(tmp_path):
    """The command line in one process equals the library call; two processes on gloo (each
    taking every other shard) merge into the same json, each image once."""
    names = _folder(tmp_path / "img")
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for rec in _records(names):
            f.write(json.dumps(rec) + "\n")
    teacher = _teacher()
    GLIPCheckpointer(teacher.model, save_dir=str(tmp_path)).save("teacher")
    weights = str(tmp_path / "teacher.pth")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes below (2 cores // 2)
    try:
        one = cli_main(_cli_args(tmp_path, tmp_path / "one", weights))
        settings = LabelSettings(score_threshold=0.0, topk=3, shard_size=1)
        lib = label_captions(
            _teacher(**{"MODEL.WEIGHTS": weights}),
            _records(names),
            str(tmp_path / "img"),
            str(tmp_path / "lib"),
            settings,
        )
    finally:
        torch.set_num_threads(threads)
    assert open(one, "rb").read() == open(lib, "rb").read()

    launch(cli_main, 2, dist_url="auto", args=(_cli_args(tmp_path, tmp_path / "two", weights),))
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert shards == [f"shard_{i:05d}.json" for i in range(6)]
    two = (tmp_path / "two" / "pseudo_labels.json").read_bytes()
    # One thread per process on both sides: the same arithmetic, so the same bytes.
    assert two == open(one, "rb").read()
    assert [im["file_name"] for im in json.loads(two)["images"]] == names[:-1]
