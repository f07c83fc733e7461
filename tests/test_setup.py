"""Installation-level checks: the package imports on CPU, configs load, evaluation runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances

import glip_d2
from glip_d2.config import add_glip_config
from glip_d2.evaluation import EVALUATOR_TABLE, build_evaluator

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_import_does_not_touch_cuda():
    code = (
        "import torch, glip_d2; "
        "assert not torch.cuda.is_initialized(), 'import glip_d2 initialised CUDA'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_registers_components():
    from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY

    from glip_d2.modeling.language import LANGUAGE_BACKBONE_REGISTRY

    assert "GLIP" in META_ARCH_REGISTRY
    assert "build_glip_swin_fpn_backbone" in BACKBONE_REGISTRY
    assert "BertLanguageBackbone" in LANGUAGE_BACKBONE_REGISTRY
    assert glip_d2.__version__


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads(path):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(path))
    assert cfg.MODEL.META_ARCHITECTURE == "GLIP"


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"Base-GLIP.yaml", "glip_swin_t.yaml", "glip_a_swin_t.yaml", "glip_swin_l.yaml"} <= names


def _write_tiny_coco(tmp_path):
    images = [
        {"id": 1, "file_name": "a.jpg", "height": 100, "width": 120},
        {"id": 2, "file_name": "b.jpg", "height": 80, "width": 90},
    ]
    # Category ids 3 and 7 are not contiguous on purpose: the evaluator must map them back.
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 40], "area": 1200},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 20, 30, 30], "area": 900},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [60, 50, 40, 30], "area": 1200},
    ]
    for a in anns:
        a["iscrowd"] = 0
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _prediction(image, boxes_xywh, scores, classes):
    inst = Instances((image["height"], image["width"]))
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]
    inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return {"instances": inst}


@pytest.mark.parametrize(
    "extra_false_positive, expected_ap",
    # Perfect boxes: AP 100. One unmatched box ranked between the two "cat" hits: "cat" AP is
    # the 101-point mean of precision 1 up to recall 0.5 and 2/3 above it, (51 + 50 * 2/3) / 101;
    # "dog" stays 1; the mean over the two classes is reported.
    [(False, 100.0), (True, 100.0 * ((51 + 50 * 2 / 3) / 101 + 1) / 2)],
)
def test_coco_evaluator_through_builder(tmp_path, extra_false_positive, expected_ap):
    json_file = _write_tiny_coco(tmp_path)
    name = f"glip_test_tiny_coco_{extra_false_positive}_{tmp_path.name}"
    register_coco_instances(name, {}, str(json_file), str(tmp_path))  # evaluator_type "coco"
    try:
        dicts = DatasetCatalog.get(name)  # sets thing_dataset_id_to_contiguous_id
        images = {d["image_id"]: d for d in dicts}
        cfg = get_cfg()
        add_glip_config(cfg)
        cfg.OUTPUT_DIR = str(tmp_path / "out")
        evaluator = build_evaluator(cfg, name)
        evaluator.reset()
        im1, im2 = images[1], images[2]
        if extra_false_positive:
            out1 = _prediction(im1, [[10, 10, 30, 40], [60, 50, 40, 30]], [0.9, 0.9], [0, 1])
            out2 = _prediction(im2, [[0, 0, 10, 10], [50, 20, 30, 30]], [0.8, 0.7], [0, 0])
        else:
            out1 = _prediction(im1, [[10, 10, 30, 40], [60, 50, 40, 30]], [0.9, 0.8], [0, 1])
            out2 = _prediction(im2, [[50, 20, 30, 30]], [0.7], [0])
        evaluator.process([{"image_id": 1}], [out1])
        evaluator.process([{"image_id": 2}], [out2])
        results = evaluator.evaluate()
        assert results["bbox"]["AP"] == pytest.approx(expected_ap, abs=1e-6)
        assert results["bbox"]["AP50"] == pytest.approx(expected_ap, abs=1e-6)
        assert (tmp_path / "out" / "inference" / name / "coco_instances_results.json").is_file()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_builder_rejects_unknown_evaluator_type():
    name = "glip_test_no_evaluator"
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(evaluator_type="nonexistent")
    try:
        cfg = get_cfg()
        add_glip_config(cfg)
        with pytest.raises(KeyError, match="nonexistent"):
            build_evaluator(cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert {"coco", "lvis", "odinw"} <= set(EVALUATOR_TABLE)
