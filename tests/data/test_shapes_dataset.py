"""The synthetic glip_shapes set: deterministic, safe to generate concurrently, usable."""

import filecmp
import json
import multiprocessing
import os
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.data.datasets import (
    SHAPES_CLASSES,
    ensure_glip_shapes,
    generate_glip_shapes,
    register_glip_shapes,
)

SMALL = {"num_train": 6, "num_val": 4, "seed": 0}


@pytest.fixture
def shapes(tmp_path):
    """A small glip_shapes set registered under a unique prefix; yields (prefix, root)."""
    prefix = f"glip_test_shapes_{uuid.uuid4().hex[:8]}"
    root = str(tmp_path / "glip_shapes")
    names = register_glip_shapes(root, prefix=prefix, **SMALL)
    try:
        yield prefix, root
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_registers_and_loads(shapes):
    prefix, root = shapes
    assert not os.path.exists(root)  # generated on first use only
    train = DatasetCatalog.get(f"{prefix}_train")
    assert len(train) == 6 and os.path.isdir(root)
    assert len(DatasetCatalog.get(f"{prefix}_val")) == 4
    meta = MetadataCatalog.get(f"{prefix}_train")
    assert meta.thing_classes == list(SHAPES_CLASSES) and len(SHAPES_CLASSES) == 9
    assert meta.evaluator_type == "coco" and os.path.isfile(meta.json_file)
    for record in train:
        assert 128 <= record["height"] <= 192 and 128 <= record["width"] <= 192
        assert 1 <= len(record["annotations"]) <= 4
        for ann in record["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w == h and 20 <= w <= 64
            assert 0 <= x and x + w <= record["width"] and 0 <= y and y + h <= record["height"]


def test_grounding_captions_refer_to_the_objects(shapes):
    prefix, _ = shapes
    det = {d["image_id"]: d for d in DatasetCatalog.get(f"{prefix}_val")}
    grounding = DatasetCatalog.get(f"{prefix}_val_grounding")
    assert MetadataCatalog.get(f"{prefix}_val_grounding").evaluator_type == "grounding"
    for record in grounding:
        caption = record["caption"]
        boxes = det[record["original_img_id"]]["annotations"]
        assert [a["bbox"] for a in record["annotations"]] == [a["bbox"] for a in boxes]
        for ann, box in zip(record["annotations"], boxes):
            ((start, end),) = ann["tokens_positive"]
            text = caption[start:end]
            assert text.split()[0] in ("small", "large")
            assert SHAPES_CLASSES[box["category_id"]] in text  # e.g. "red circle"
            assert [[start, end]] in record["tokens_positive_eval"]


def test_maps_for_training_and_test(shapes, make_mapper):
    prefix, _ = shapes
    for suffix in ("train", "val_grounding"):
        record = DatasetCatalog.get(f"{prefix}_{suffix}")[0]
        out = make_mapper(True)(record)
        assert out["image"].shape[0] == 3
        inst = out["instances"]
        assert len(inst) == len(record["annotations"])
        assert bool(inst.gt_positive_map.any(dim=1).all())
        test_out = make_mapper(False)(record)
        assert test_out["positive_map"].shape[1] == 256
    det_test = make_mapper(False)(DatasetCatalog.get(f"{prefix}_val")[0])
    assert det_test["caption"] == ". ".join(SHAPES_CLASSES)


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate_glip_shapes(str(a), **SMALL)
    generate_glip_shapes(str(b), **SMALL)
    for rel in ("annotations/instances_train.json", "annotations/grounding_val.json"):
        assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text())
    images = sorted(os.listdir(a / "train"))
    assert len(images) == 6
    match, mismatch, errors = filecmp.cmpfiles(a / "train", b / "train", images, shallow=False)
    assert mismatch == [] and errors == []


def _ensure(root):
    ensure_glip_shapes(root, num_train=3, num_val=2)


def test_concurrent_generation(tmp_path):
    root = str(tmp_path / "glip_shapes")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_ensure, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(os.listdir(tmp_path)) == ["glip_shapes"]  # no temporary folders left
    assert len(os.listdir(os.path.join(root, "train"))) == 3


def test_incomplete_folder_is_reported(tmp_path):
    root = tmp_path / "glip_shapes"
    root.mkdir()
    (root / "stray.txt").write_text("x")
    with pytest.raises(RuntimeError, match="not a complete glip_shapes set"):
        ensure_glip_shapes(str(root), **SMALL)
