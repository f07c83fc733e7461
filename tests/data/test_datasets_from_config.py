"""DATASETS.REGISTER: datasets named in the config, registered by register_datasets_from_cfg."""

from __future__ import annotations

import uuid

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.config import add_glip_config
from glip_d2.data import register_datasets_from_cfg


@pytest.fixture
def files(toy_dataset, mdetr_files):
    """Paths of a COCO-format set (the toy set) and an MDETR-format set, written in tmp_path."""
    meta = MetadataCatalog.get(toy_dataset)
    mdetr_json, mdetr_root = mdetr_files()
    return {
        "coco": (meta.json_file, meta.image_root),
        "mdetr": (mdetr_json, mdetr_root),
    }


@pytest.fixture
def names():
    """Unique dataset names, removed from both catalogs at teardown."""
    made = []

    def make(n):
        made.extend(f"glip_test_cfg_{uuid.uuid4().hex[:8]}" for _ in range(n))
        return made[-n:]

    yield make
    for name in made:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def _cfg(opts):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_list(opts)
    return cfg


def _entry(name, fmt, json_file, image_root):
    return {"NAME": name, "FORMAT": fmt, "JSON_FILE": json_file, "IMAGE_ROOT": image_root}


def test_command_line_entries_register_coco_and_mdetr_sets(files, names):
    coco_name, mdetr_name = names(2)
    entries = [
        _entry(coco_name, "coco", *files["coco"]),
        _entry(mdetr_name, "mdetr", *files["mdetr"]),
    ]
    # On the command line the value is a Python literal, as Detectron2 reads every value there.
    cfg = _cfg(["DATASETS.REGISTER", repr(entries)])
    assert register_datasets_from_cfg(cfg) == [coco_name, mdetr_name]

    coco = DatasetCatalog.get(coco_name)
    assert [len(r["annotations"]) for r in coco] == [2, 1]
    assert MetadataCatalog.get(coco_name).thing_classes == ["cat", "dog"]
    assert MetadataCatalog.get(coco_name).evaluator_type == "coco"
    mdetr = DatasetCatalog.get(mdetr_name)
    assert mdetr[0]["caption"] == "a red cat next to two small dogs."
    assert MetadataCatalog.get(mdetr_name).evaluator_type == "grounding"


def test_yaml_entries_register(files, names, tmp_path):
    (name,) = names(1)
    json_file, image_root = files["coco"]
    path = tmp_path / "own.yaml"
    path.write_text(
        "DATASETS:\n  REGISTER:\n"
        f"    - {{NAME: {name}, FORMAT: coco, JSON_FILE: {json_file}, IMAGE_ROOT: {image_root}}}\n"
        f"  TRAIN: ('{name}',)\n"
    )
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    assert len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])) == 2


def test_registering_twice_is_a_no_op_and_a_changed_entry_an_error(files, names):
    (name,) = names(1)
    cfg = _cfg(["DATASETS.REGISTER", repr([_entry(name, "coco", *files["coco"])])])
    register_datasets_from_cfg(cfg)
    register_datasets_from_cfg(cfg)  # e.g. main() called twice in one process
    assert len(DatasetCatalog.get(name)) == 2

    changed = _cfg(["DATASETS.REGISTER", repr([_entry(name, "mdetr", *files["mdetr"])])])
    with pytest.raises(
        ValueError,
        match=rf"DATASETS.REGISTER\[0\]: dataset '{name}' is already "
        "registered from a different entry",
    ):
        register_datasets_from_cfg(changed)


@pytest.mark.parametrize("builtin", ["coco_grounding_2017_val", "coco_2017_val", "glip_shapes_val"])
def test_a_builtin_name_is_rejected(files, builtin):
    cfg = _cfg(["DATASETS.REGISTER", repr([_entry(builtin, "coco", *files["coco"])])])
    with pytest.raises(ValueError, match=rf"'{builtin}' is already registered \(a builtin"):
        register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get(builtin).get("registered_from_config") is None


def test_mdetr_image_root_per_data_source(files, names, tmp_path):
    (name,) = names(1)
    json_file, image_root = files["mdetr"]
    cfg = _cfg([])
    cfg.DATASETS.REGISTER = [_entry(name, "mdetr", json_file, {"flickr": image_root})]
    register_datasets_from_cfg(cfg)
    assert MetadataCatalog.get(name).image_root == {"flickr": image_root}

    (other,) = names(1)
    cfg.DATASETS.REGISTER = [_entry(other, "mdetr", json_file, {"vg": str(tmp_path / "gqa")})]
    with pytest.raises(FileNotFoundError, match=r"\[0\] \(NAME '.*'\): IMAGE_ROOT\['vg'\] '.*gqa'"):
        register_datasets_from_cfg(cfg)


def _bad_entries(coco_json, coco_root, tmp_path):
    good = _entry("glip_test_cfg_bad", "coco", coco_json, coco_root)
    return {
        "not a mapping": (
            ["glip_test_cfg_bad:coco:a.json:images"],
            ValueError,
            r"\[0\] must be a mapping",
        ),
        "missing key": (
            [{k: v for k, v in good.items() if k != "IMAGE_ROOT"}],
            ValueError,
            r"\[0\]: missing IMAGE_ROOT \(the keys are NAME, FORMAT, JSON_FILE, IMAGE_ROOT\)",
        ),
        "misspelled key": (
            [{**{k: v for k, v in good.items() if k != "JSON_FILE"}, "JSON": coco_json}],
            ValueError,
            r"\[0\]: missing JSON_FILE; unknown key\(s\) JSON",
        ),
        "empty name": ([{**good, "NAME": " "}], ValueError, r"\[0\]: NAME must be a non-empty"),
        "unknown format": (
            [good, {**good, "NAME": "glip_test_cfg_bad2", "FORMAT": "voc"}],
            ValueError,
            r"\[1\] \(NAME 'glip_test_cfg_bad2'\): unknown FORMAT 'voc'; known formats: coco",
        ),
        "missing json": (
            [{**good, "JSON_FILE": str(tmp_path / "nope.json")}],
            FileNotFoundError,
            r"\[0\] \(NAME 'glip_test_cfg_bad'\): JSON_FILE '.*nope.json' is not a file",
        ),
        "missing images": (
            [{**good, "IMAGE_ROOT": str(tmp_path / "nope")}],
            FileNotFoundError,
            r"\[0\] \(NAME 'glip_test_cfg_bad'\): IMAGE_ROOT '.*nope' is not a folder",
        ),
        "duplicate name": (
            [good, good],
            ValueError,
            r"DATASETS.REGISTER\[0\] and \[1\] both have NAME 'glip_test_cfg_bad'",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "not a mapping",
        "missing key",
        "misspelled key",
        "empty name",
        "unknown format",
        "missing json",
        "missing images",
        "duplicate name",
    ],
)
def test_bad_entries_are_errors_naming_entry_and_field(files, tmp_path, case):
    entries, error, message = _bad_entries(*files["coco"], tmp_path)[case]
    cfg = _cfg([])
    cfg.DATASETS.REGISTER = entries
    with pytest.raises(error, match=message):
        register_datasets_from_cfg(cfg)
    # Nothing of a bad list is registered, not even its good entries.
    assert "glip_test_cfg_bad" not in DatasetCatalog.list()
