"""Dataset registration: COCO detection as grounding, ODinW overrides, MDETR, builtins."""

import json
import os
import uuid

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from grounding_fixtures import MDETR_CAPTION, RED_CAT, SMALL_DOGS, mdetr_data, save_image

from glip_d2.data import (
    load_coco_grounding_json,
    load_mdetr_grounding_json,
    register_coco_grounding,
    register_mdetr_grounding,
)
from glip_d2.data.datasets import ODINW_13_TASKS, ODINW_35_TASKS, odinw_dataset_name


@pytest.fixture
def unique_name():
    names = []

    def make(prefix="glip_test"):
        names.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return names[-1]

    yield make
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_toy_dataset_loads(toy_dataset):
    dicts = DatasetCatalog.get(toy_dataset)
    meta = MetadataCatalog.get(toy_dataset)
    assert meta.evaluator_type == "coco"
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.prompt_names == ["cat", "dog"]
    assert meta.prompt_prefixes == ["", ""] and meta.prompt_suffixes == ["", ""]
    assert [d["image_id"] for d in dicts] == [1, 2]
    first = dicts[0]
    assert first["file_name"] == os.path.join(meta.image_root, "a.png")
    assert (first["height"], first["width"]) == (48, 64)
    assert first["dataset_name"] == toy_dataset
    assert [a["category_id"] for a in first["annotations"]] == [0, 1]
    assert first["annotations"][0]["bbox"] == [4.0, 6.0, 20.0, 16.0]
    assert first["annotations"][0]["bbox_mode"] == BoxMode.XYWH_ABS


def test_odinw_style_overrides_and_caption_prompt(tmp_path, unique_name, make_mapper):
    save_image(tmp_path / "x.png", 10, 10)
    data = {
        "images": [{"id": 1, "file_name": "x.png", "height": 10, "width": 10}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 2, "bbox": [1, 1, 6, 6]}],
        "categories": [{"id": 1, "name": "fish_raw"}, {"id": 2, "name": "penguin_raw"}],
    }
    json_file = _write_json(tmp_path / "odinw.json", data)
    name = unique_name()
    register_coco_grounding(
        name,
        {"evaluator_type": "odinw"},
        json_file,
        str(tmp_path),
        category_overrides=[{"id": 1, "name": "fish"}, {"id": 2, "name": "penguin"}],
        caption_prompt=[
            {"prefix": " ", "name": "fish", "suffix": ""},
            {"prefix": "", "name": "penguin", "suffix": " , which is black and white"},
        ],
    )
    record = DatasetCatalog.get(name)[0]
    assert [a["category_id"] for a in record["annotations"]] == [1]
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "odinw"
    assert meta.thing_classes == ["fish", "penguin"]
    assert meta.prompt_prefixes == [" ", ""]
    assert meta.prompt_suffixes == ["", " , which is black and white"]

    # [CLS] fish . penguin , which is black and white [SEP]: fish = 1, penguin = 3.
    for is_train in (False, True):
        out = make_mapper(is_train)(record)
        assert out["caption"] == " fish. penguin , which is black and white"
        assert out["phrases"] == ["fish", "penguin"]
        assert [row.nonzero().flatten().tolist() for row in out["positive_map"]] == [[1], [3]]
    assert out["instances"].gt_positive_map.nonzero().tolist() == [[0, 3]]
    assert out["instances"].gt_classes.tolist() == [1]


def test_caption_prompt_name_replaces_the_prompt_text(tmp_path):
    data = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "pothole"}]}
    json_file = _write_json(tmp_path / "p.json", data)
    name = f"glip_test_{uuid.uuid4().hex[:8]}"
    try:
        load_coco_grounding_json(
            json_file,
            str(tmp_path),
            name,
            category_overrides={5: "pothole"},
            caption_prompt={5: {"prefix": "there are some ", "name": "holes", "suffix": " here"}},
        )
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["pothole"]
        assert meta.prompt_names == ["holes"]
    finally:
        MetadataCatalog.remove(name)


def test_caption_prompt_length_mismatch(tmp_path):
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    json_file = _write_json(tmp_path / "p.json", data)
    with pytest.raises(ValueError, match="caption_prompt has 2 entries for 1 categories"):
        load_coco_grounding_json(json_file, str(tmp_path), caption_prompt=[{}, {}])


def test_empty_category_list(tmp_path):
    json_file = _write_json(
        tmp_path / "e.json", {"images": [], "annotations": [], "categories": []}
    )
    with pytest.raises(ValueError, match="empty category list"):
        load_coco_grounding_json(json_file, str(tmp_path))


def test_unknown_category_names_the_annotation(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "x.png"}],
        "annotations": [{"id": 77, "image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    with pytest.raises(ValueError, match="annotation 77"):
        load_coco_grounding_json(_write_json(tmp_path / "u.json", data), str(tmp_path))


def test_lvis_style_file_names_from_coco_url(tmp_path):
    data = {
        "images": [{"id": 4, "coco_url": "http://images.cocodataset.org/val2017/000004.jpg"}],
        "annotations": [],
        "categories": [{"id": 1, "name": "aerosol_can"}],
    }
    dicts = load_coco_grounding_json(
        _write_json(tmp_path / "l.json", data), "/data/coco", file_name_from_coco_url=True
    )
    assert dicts[0]["file_name"] == "/data/coco/val2017/000004.jpg"


def test_missing_files_fail_only_when_used(tmp_path, unique_name):
    missing = str(tmp_path / "nowhere" / "instances.json")
    det, grd = unique_name(), unique_name()
    register_coco_grounding(det, {}, missing, str(tmp_path))
    register_mdetr_grounding(grd, {"evaluator_type": "flickr30k"}, missing, str(tmp_path))
    for name in (det, grd):
        with pytest.raises(FileNotFoundError, match=f"{name}.*{missing}"):
            DatasetCatalog.get(name)
    assert MetadataCatalog.get(grd).evaluator_type == "flickr30k"


def test_mdetr_records(mdetr_files, unique_name):
    json_file, root = mdetr_files()
    name = unique_name()
    register_mdetr_grounding(name, {"evaluator_type": "flickr30k"}, json_file, root)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == 2
    first = dicts[0]
    assert first["caption"] == MDETR_CAPTION
    assert first["file_name"] == os.path.join(root, "a.png")
    assert first["tokens_positive_eval"] == [[RED_CAT], [SMALL_DOGS]]
    assert first["sentence_id"] == 0 and first["original_img_id"] == 100
    assert first["mdetr_dataset_name"] == "flickr"
    assert first["dataset_name"] == name
    assert [a["tokens_positive"] for a in first["annotations"]] == [[RED_CAT], [SMALL_DOGS]] + [
        [SMALL_DOGS]
    ]
    assert [a["id"] for a in first["annotations"]] == [11, 12, 13]
    assert dicts[1]["annotations"] == []
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "flickr30k"
    assert meta.thing_classes == ["object"]


def test_mdetr_mixed_image_roots(tmp_path):
    data = mdetr_data()
    data["images"][0]["data_source"] = "coco"
    data["images"][1]["data_source"] = "vg"
    json_file = _write_json(tmp_path / "mixed.json", data)
    dicts = load_mdetr_grounding_json(json_file, {"coco": "/c", "vg": "/v"})
    assert [d["file_name"] for d in dicts] == ["/c/a.png", "/v/b.png"]
    with pytest.raises(ValueError, match="data_source 'vg'"):
        load_mdetr_grounding_json(json_file, {"coco": "/c"})


def test_mdetr_span_outside_caption_names_the_annotation(tmp_path):
    data = mdetr_data()
    data["annotations"][1]["tokens_positive"] = [[22, 99]]
    with pytest.raises(ValueError, match=r"annotation 12.*\[22, 99\)"):
        load_mdetr_grounding_json(_write_json(tmp_path / "bad.json", data), str(tmp_path))


def test_mdetr_empty_caption_names_the_image(tmp_path):
    data = mdetr_data()
    data["images"][1]["caption"] = ""
    with pytest.raises(ValueError, match="image 2 has an empty caption"):
        load_mdetr_grounding_json(_write_json(tmp_path / "bad.json", data), str(tmp_path))


# ---------------------------------------------------------------------------- builtins


def test_builtin_names_do_not_clash_with_detectron2():
    names = set(DatasetCatalog.list())
    assert {"coco_2017_val", "coco_2017_train", "lvis_v1_val"} <= names  # Detectron2's own
    ours = {
        "coco_grounding_2017_train": "coco",
        "coco_grounding_2017_val": "coco",
        "lvis_grounding_v1_val": "lvis",
        "lvis_grounding_v1_minival": "lvis",
        "objects365_grounding_v2_train": "coco",
        "flickr30k_separate_val": "flickr30k",
        "flickr30k_separate_test": "flickr30k",
        "goldg_mixed_train": "grounding",
        "refcoco_unc_testA": "refcoco",
        "refcocoplus_unc_val": "refcoco",
        "refcocog_umd_test": "refcoco",
        "odinw13_Aquarium_val": "odinw",
        "odinw35_EgoHands_generic_minival": "odinw",
        "glip_shapes_train": "coco",
        "glip_shapes_val_grounding": "grounding",
    }
    for name, evaluator_type in ours.items():
        assert name in names, name
        assert MetadataCatalog.get(name).evaluator_type == evaluator_type
    assert len(MetadataCatalog.get("coco_grounding_2017_val").thing_classes) == 80
    assert len(MetadataCatalog.get("lvis_grounding_v1_minival").thing_classes) == 1203
    assert MetadataCatalog.get("odinw13_Aquarium_val").thing_classes[0] == "fish"
    assert MetadataCatalog.get("coco_2017_val").evaluator_type == "coco"  # untouched


def test_builtin_missing_files_name_the_path():
    json_file = MetadataCatalog.get("coco_grounding_2017_val").json_file
    assert json_file.endswith(os.path.join("coco", "annotations", "instances_val2017.json"))
    if os.path.exists(json_file):
        pytest.skip("COCO is installed here; the missing-file path cannot be checked")
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        DatasetCatalog.get("coco_grounding_2017_val")


def test_odinw_task_lists():
    assert len(ODINW_13_TASKS) == 13
    assert len(ODINW_35_TASKS) == 35
    for version, tasks in ((13, ODINW_13_TASKS), (35, ODINW_35_TASKS)):
        for task in tasks:
            assert {"train", "val", "test"} <= set(task.splits)
            assert task.eval_split in task.splits
            assert odinw_dataset_name(version, task.name, task.eval_split) in DatasetCatalog.list()
            if task.caption_prompt is not None:
                assert len(task.caption_prompt) == len(task.classes)
    pothole = {t.name: t for t in ODINW_35_TASKS}["pothole"]
    assert pothole.caption_prompt[0]["name"] == "holes"
