"""The synthetic glip_shapes set: deterministic, safe to generate concurrently, usable; its
segmentations leave the images and boxes as they were, and old folders get them."""

import filecmp
import hashlib
import json
import multiprocessing
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from registered_sets import registered, unique_prefix

from glip_d2.data.datasets import (
    SHAPES_CLASSES,
    ensure_glip_shapes,
    generate_glip_shapes,
    register_glip_shapes,
)
from glip_d2.data.datasets.shapes import SHAPES_VERSION, shape_polygon

SMALL = {"num_train": 6, "num_val": 4, "seed": 0}


@pytest.fixture
def shapes(tmp_path):
    """A small glip_shapes set registered under a unique prefix; yields (prefix, root)."""
    prefix = unique_prefix("glip_test_shapes")
    root = str(tmp_path / "glip_shapes")
    with registered(register_glip_shapes, root, prefix, **SMALL):
        yield prefix, root


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


def _digests(root):
    """sha256 of the decoded pixels of every image, and of the jsons without segmentations."""
    pixels = hashlib.sha256()
    for split in ("train", "val"):
        for name in sorted(os.listdir(root / split)):
            pixels.update(np.asarray(Image.open(root / split / name)).tobytes())
    annotations = hashlib.sha256()
    for kind in ("instances", "grounding"):
        for split in ("train", "val"):
            data = json.loads((root / "annotations" / f"{kind}_{split}.json").read_text())
            for ann in data["annotations"]:
                ann.pop("segmentation")
            annotations.update(json.dumps(data, sort_keys=True).encode())
    return pixels.hexdigest(), annotations.hexdigest()


def test_images_and_boxes_unchanged_by_segmentations(tmp_path):
    # Digests of the set as generated before segmentations were added (SMALL parameters):
    # the quick start's numbers depend on these exact images, boxes and captions.
    generate_glip_shapes(str(tmp_path / "s"), **SMALL)
    assert _digests(tmp_path / "s") == (
        "dd7e8cdbd438d6c8de39cd32201a614a92958ff79b17ce235ec9a653ca279a09",
        "581d47e3ae4fb2a2198826b531170bf0fc355a5fe4f55f83c190d1f7b03cffc0",
    )


def test_old_folder_gets_segmentations(tmp_path):
    new, old = tmp_path / "new", tmp_path / "old"
    generate_glip_shapes(str(new), **SMALL)
    shutil.copytree(new, old)
    # A folder written before segmentations existed: no VERSION file, no segmentation keys.
    (old / "annotations" / "VERSION").unlink()
    for path in (old / "annotations").glob("*.json"):
        data = json.loads(path.read_text())
        for ann in data["annotations"]:
            del ann["segmentation"]
        path.write_text(json.dumps(data))
    images = {p: p.stat().st_mtime_ns for p in old.glob("*/*.png")}
    ensure_glip_shapes(str(old), **SMALL)
    assert (old / "annotations" / "VERSION").read_text() == f"{SHAPES_VERSION}\n"
    for path in (new / "annotations").glob("*"):
        assert filecmp.cmp(path, old / "annotations" / path.name, shallow=False), path.name
    assert {p: p.stat().st_mtime_ns for p in old.glob("*/*.png")} == images  # untouched
    assert sorted(os.listdir(old / "annotations")) == sorted(os.listdir(new / "annotations"))


def test_newer_folder_is_reported(tmp_path):
    root = tmp_path / "s"
    generate_glip_shapes(str(root), **SMALL)
    (root / "annotations" / "VERSION").write_text(f"{SHAPES_VERSION + 1}\n")
    with pytest.raises(RuntimeError, match="newer than this code"):
        ensure_glip_shapes(str(root), **SMALL)


def test_shape_polygons():
    assert shape_polygon("square", 2, 3, 10) == [2, 3, 12, 3, 12, 13, 2, 13]
    assert shape_polygon("triangle", 2, 3, 10) == [7, 3, 2, 13, 12, 13]
    circle = np.asarray(shape_polygon("circle", 2, 3, 10)).reshape(-1, 2)
    assert circle.shape == (64, 2)
    np.testing.assert_allclose(np.hypot(circle[:, 0] - 7, circle[:, 1] - 8), 5, atol=0.01)
    with pytest.raises(ValueError, match="unknown shape kind 'star'"):
        shape_polygon("star", 0, 0, 4)
