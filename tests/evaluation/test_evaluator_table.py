"""The evaluator table and the ODinW tool's task list."""

import importlib.util
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from glip_d2.evaluation import (
    EVALUATOR_TABLE,
    FlickrEvaluator,
    PhraseCutEvaluator,
    RefExpEvaluator,
    RefExpSegmentationEvaluator,
    build_evaluator,
)

TOOL = Path(__file__).resolve().parents[2] / "tools" / "eval_odinw.py"


def test_table_has_every_benchmark():
    assert {"coco", "odinw", "lvis", "flickr30k", "refcoco", "grounding"} <= set(EVALUATOR_TABLE)
    assert {"phrasecut", "refcoco_seg"} <= set(EVALUATOR_TABLE)


@pytest.mark.parametrize(
    "kind,cls",
    [
        ("flickr30k", FlickrEvaluator),
        ("grounding", FlickrEvaluator),
        ("refcoco", RefExpEvaluator),
        ("phrasecut", PhraseCutEvaluator),
        ("refcoco_seg", RefExpSegmentationEvaluator),
    ],
)
def test_grounding_types_build(kind, cls, register_records, tmp_path):
    name = register_records([], evaluator_type=kind)
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(build_evaluator(cfg, name), cls)


def test_builtin_grounding_datasets_use_the_table():
    # ``import glip_d2.evaluation`` imported the package, which registered the builtin datasets.
    assert MetadataCatalog.get("flickr30k_separate_test").evaluator_type == "flickr30k"
    assert MetadataCatalog.get("refcocog_umd_test").evaluator_type == "refcoco"
    assert MetadataCatalog.get("lvis_grounding_v1_minival").evaluator_type == "lvis"
    for split in ("train", "val", "miniv", "test"):
        meta = MetadataCatalog.get(f"phrasecut_mdetr_{split}")
        assert meta.evaluator_type == "phrasecut"
        assert meta.json_file.endswith(f"mdetr_annotations/finetune_phrasecut_{split}.json")
    # The RefCOCO mask splits read the same MDETR json as the box splits, plus COCO's masks.
    for box_name, seg_name in (
        ("refcoco_unc_testA", "refcoco_seg_unc_testA"),
        ("refcocoplus_unc_val", "refcocoplus_seg_unc_val"),
        ("refcocog_umd_test", "refcocog_seg_umd_test"),
    ):
        seg = MetadataCatalog.get(seg_name)
        assert seg.evaluator_type == "refcoco_seg"
        assert seg.json_file == MetadataCatalog.get(box_name).json_file
        assert seg.mask_json_file.endswith("coco/annotations/instances_train2014.json")


def _load_tool():
    spec = importlib.util.spec_from_file_location("eval_odinw", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_odinw_tool_task_lists():
    tool = _load_tool()
    for task_set, count in (("odinw13", 13), ("odinw35", 35)):
        datasets = tool.task_datasets(task_set)
        assert len(datasets) == count
        registered = set(DatasetCatalog.list())
        assert set(datasets.values()) <= registered
    assert list(tool.task_datasets("odinw13", ["Aquarium"])) == ["Aquarium"]
    with pytest.raises(ValueError, match="Unknown"):
        tool.task_datasets("odinw13", ["NoSuchTask"])


def test_odinw_tool_summary():
    tool = _load_tool()
    results = {
        "A": {"bbox": {"AP": 10.0, "AP50": 20.0, "AP75": 5.0, "APs": 1.0}},
        "B": {"bbox": {"AP": 30.0, "AP50": 40.0, "AP75": 15.0, "APs": 2.0}},
    }
    summary = tool.summarize(results)
    assert summary["mean"] == {"AP": 20.0, "AP50": 30.0, "AP75": 10.0}
    table = tool.format_table(summary)
    assert "mean" in table and "20.00" in table
