"""COCO captions in Karpathy's split: records, the train = train + restval convention, errors."""

import json
import os

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.datasets.coco_captions import load_karpathy_captions, register_coco_karpathy


def _image(cocoid, split, folder="val2014", sentences=("a cat.", "A cat on a mat.")):
    return {
        "filepath": folder,
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "cocoid": cocoid,
        "split": split,
        "imgid": cocoid % 100,
        "sentids": list(range(len(sentences))),
        "sentences": [{"raw": s, "tokens": s.lower().strip(".").split()} for s in sentences],
    }


@pytest.fixture
def karpathy_json(tmp_path):
    images = [
        _image(9, "train", "train2014", ("A dog runs.",)),
        _image(391895, "restval"),
        _image(522418, "val", sentences=("a woman.", "a person", "someone cutting a cake")),
        _image(184613, "test"),
        _image(318219, "test", sentences=("two boys.",)),
    ]
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return str(path)


def test_splits_and_record_format(karpathy_json):
    root = "/data/coco"
    train = load_karpathy_captions(karpathy_json, root, "train")
    assert [r["image_id"] for r in train] == [9, 391895]  # train includes restval
    assert train[0] == {
        "file_name": os.path.join(root, "train2014", "COCO_train2014_000000000009.jpg"),
        "image_id": 9,
        "captions": ["A dog runs."],
        "task": "caption",
    }
    assert [r["image_id"] for r in load_karpathy_captions(karpathy_json, root, "restval")] == [
        391895
    ]
    (val,) = load_karpathy_captions(karpathy_json, root, "val")
    assert val["captions"] == ["a woman.", "a person", "someone cutting a cake"]
    assert val["file_name"] == os.path.join(root, "val2014", "COCO_val2014_000000522418.jpg")
    test = load_karpathy_captions(karpathy_json, root, "test")
    assert [r["image_id"] for r in test] == [184613, 318219]


def test_register(karpathy_json, dataset_name):
    register_coco_karpathy(dataset_name, karpathy_json, "/data/coco", "test")
    meta = MetadataCatalog.get(dataset_name)
    assert meta.evaluator_type == "caption" and meta.task == "caption"
    assert meta.json_file == karpathy_json and meta.image_root == "/data/coco"
    assert len(DatasetCatalog.get(dataset_name)) == 2


def test_errors_name_the_file(karpathy_json, tmp_path):
    with pytest.raises(ValueError, match="'testA'.*dataset_coco.json"):
        load_karpathy_captions(karpathy_json, "", "testA")
    bad = tmp_path / "bad.json"
    image = _image(5, "val")
    del image["cocoid"]
    bad.write_text(json.dumps({"images": [image]}))
    with pytest.raises(ValueError, match=r"bad\.json.*cocoid"):
        load_karpathy_captions(str(bad), "", "val")
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"bad\.json has no 'images'"):
        load_karpathy_captions(str(bad), "", "val")
    bad.write_text(json.dumps({"images": [_image(6, "holdout")]}))
    with pytest.raises(ValueError, match=r"bad\.json has unknown split 'holdout'"):
        load_karpathy_captions(str(bad), "", "val")
    image = _image(7, "val")
    del image["sentences"][0]["raw"]
    bad.write_text(json.dumps({"images": [image]}))
    with pytest.raises(ValueError, match=r"image 7 of .*bad\.json has no 'raw'"):
        load_karpathy_captions(str(bad), "", "val")
    with pytest.raises(ValueError, match="Unknown Karpathy split"):
        register_coco_karpathy("unused_name", karpathy_json, "", "minival")
