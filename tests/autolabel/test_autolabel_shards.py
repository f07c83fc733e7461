"""Auto-labelling pipeline with a deterministic fake teacher: formats, resume, bad images."""

import json

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image

from glip_d2.autolabel import LabelSettings, label_captions, label_ontology
from glip_d2.data.datasets.mdetr_grounding import load_mdetr_grounding_json


class FakeTeacher:
    """Boxes derived from the image content; counts its calls."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, image, prompt, phrase_spans=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        h, w = image.shape[:2]
        k = len(phrase_spans) if isinstance(prompt, str) else len(prompt)
        m = float(image.mean()) / 255
        inst = Instances((h, w))
        n = 3 * k
        i = torch.arange(n, dtype=torch.float32)
        x1 = (i * 3) % (w // 2)
        inst.pred_boxes = Boxes(torch.stack([x1, x1 / 2, x1 + w / 3, x1 / 2 + h / 3], 1))
        inst.scores = (0.3 + 0.7 * ((i * 0.37 + m) % 1)).clamp(max=1)
        inst.pred_classes = torch.arange(n) % k
        return {"instances": inst}


def _images(folder, n=5, corrupt=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for j in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{j}.png")
        names.append(f"{j}.png")
    if corrupt:
        (folder / "bad.png").write_bytes(b"not an image at all")
        names.append("bad.png")
    return names


def test_captions_resume_and_corrupt_image(tmp_path, caplog):
    names = _images(tmp_path / "img")
    caption = "a red circle next to a blue square"
    records = [
        {"file_name": n, "caption": caption, "phrase_spans": [[0, 12], [22, 34]]} for n in names
    ]
    full = label_captions(
        FakeTeacher(),
        records,
        str(tmp_path / "img"),
        str(tmp_path / "a"),
        LabelSettings(shard_size=2, topk=2, score_threshold=0.5),
    )
    data = json.loads(open(full).read())
    recs = load_mdetr_grounding_json(full, str(tmp_path / "img"))
    assert len(recs) == 5 and data["annotations"]
    for ann in data["annotations"]:
        ((s, e),) = ann["tokens_positive"]
        assert caption[s:e] == ann["phrase"] and ann["score"] >= 0.5
    per = {}
    for ann in data["annotations"]:
        key = (ann["image_id"], ann["phrase"])
        per[key] = per.get(key, 0) + 1
    assert max(per.values()) <= 2
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["unreadable"] == 1 and summary["unreadable_files"] == ["bad.png"]
    assert "bad.png" in caplog.text

    with pytest.raises(KeyboardInterrupt):
        label_captions(
            FakeTeacher(fail_after=3),
            records,
            str(tmp_path / "img"),
            str(tmp_path / "b"),
            LabelSettings(shard_size=2, topk=2),
        )
    teacher = FakeTeacher()
    resumed = label_captions(
        teacher,
        records,
        str(tmp_path / "img"),
        str(tmp_path / "b"),
        LabelSettings(shard_size=2, topk=2),
    )
    # shard 0 (images 0-1) was written before the kill; shards 1 (2-3) and 2 (4, bad) rerun
    assert teacher.calls == 3
    assert open(resumed, "rb").read() == open(full, "rb").read()


def test_ontology_coco_and_yolo(tmp_path):
    from pycocotools.coco import COCO

    _images(tmp_path / "img", n=3)
    onto = {"zebra": "zebra", "horse": "horse", "pony": "horse"}
    path = label_ontology(
        FakeTeacher(),
        str(tmp_path / "img"),
        onto,
        str(tmp_path / "o"),
        LabelSettings(score_threshold=0.4),
        yolo_dir=str(tmp_path / "y"),
    )
    coco = COCO(path)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["horse", "zebra"]
    assert len(coco.getImgIds()) == 3 and coco.getAnnIds()
    for img in coco.loadImgs(coco.getImgIds()):
        lines = (tmp_path / "y" / img["file_name"].replace(".png", ".txt")).read_text().split()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(lines) == 5 * len(anns)
        for k, ann in enumerate(anns):
            c, cx, cy, w, h = (float(v) for v in lines[5 * k : 5 * k + 5])
            x, y, bw, bh = ann["bbox"]
            assert int(c) == ann["category_id"] - 1
            assert np.allclose(
                [cx, cy, w, h], [(x + bw / 2) / 64, (y + bh / 2) / 64, bw / 64, bh / 64], atol=1e-5
            )
