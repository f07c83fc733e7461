"""LVIS standard AP and Fixed AP on a synthetic LVIS json with known answers."""

import importlib.util
import json

import numpy as np
import pytest
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset

from glip_d2.evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from glip_d2.evaluation.lvis_evaluation import lvis_numpy_compat, topk_per_category

requires_lvis = pytest.mark.skipif(
    importlib.util.find_spec("lvis") is None,
    reason="LVIS AP needs the 'lvis' package (pip install --no-deps lvis==0.5.3)",
)

FREQUENCIES = ("f", "c", "r")


def _write_lvis_json(path, boxes_per_image, category_ids=(1, 2, 3)):
    """``boxes_per_image``: {image_id: [(category_id, [x1, y1, x2, y2]), ...]}."""
    images, anns = [], []
    for image_id, boxes in boxes_per_image.items():
        images.append(
            {
                "id": image_id,
                "height": 1000,
                "width": 1000,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
                "coco_url": f"http://x/val2017/{image_id:012d}.jpg",
            }
        )
        for cat, (x1, y1, x2, y2) in boxes:
            w, h = x2 - x1, y2 - y1
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "segmentation": [[x1, y1, x1, y2, x2, y2, x2, y1]],
                }
            )
    cats = [
        {"id": c, "name": f"cat{c}", "synonyms": [f"cat{c}"], "frequency": FREQUENCIES[i % 3]}
        for i, c in enumerate(category_ids)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _grid(n, category=1):
    """``n`` disjoint 50x50 boxes."""
    return [
        (category, [80 * (i % 12), 80 * (i // 12), 80 * (i % 12) + 50, 80 * (i // 12) + 50])
        for i in range(n)
    ]


def _perfect_outputs(boxes_per_image, make_instances, score=0.9, contiguous=None):
    contiguous = contiguous or (lambda c: c - 1)
    return {
        image_id: make_instances(
            [b for _, b in boxes], [score] * len(boxes), [contiguous(c) for c, _ in boxes]
        )
        for image_id, boxes in boxes_per_image.items()
    }


def test_topk_per_category():
    cats = np.array([1, 2, 1, 1, 2, 3])
    scores = np.array([0.1, 0.5, 0.9, 0.9, 0.2, 0.3])
    assert topk_per_category(cats, scores, 2).tolist() == [1, 2, 3, 4, 5]
    assert topk_per_category(cats, scores, 1).tolist() == [1, 2, 5]  # ties keep the first
    assert topk_per_category(cats[:0], scores[:0], 5).tolist() == []


def test_numpy_compat_is_scoped():
    assert "float" not in np.__dict__
    with lvis_numpy_compat():
        assert np.float is float
    assert "float" not in np.__dict__


@requires_lvis
def test_perfect_predictions_through_builder(
    tmp_path, register_records, make_instances, replay_model
):
    from detectron2.config import get_cfg

    from glip_d2.evaluation import build_evaluator

    # Non-contiguous json ids with the mapping the LVIS loaders set.
    gt = {1: [(5, [10, 10, 110, 110]), (9, [200, 200, 400, 300])], 2: [(12, [0, 0, 500, 600])]}
    json_file = _write_lvis_json(tmp_path / "lvis.json", gt, category_ids=(5, 9, 12))
    mapping = {5: 0, 9: 1, 12: 2}
    name = register_records(
        [],
        evaluator_type="lvis",
        json_file=json_file,
        thing_classes=["cat5", "cat9", "cat12"],
        thing_dataset_id_to_contiguous_id=mapping,
    )
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, DatasetEvaluators)
    loader = [[{"image_id": 1}], [{"image_id": 2}]]
    results = inference_on_dataset(
        replay_model(_perfect_outputs(gt, make_instances, contiguous=mapping.get)),
        loader,
        evaluator,
    )
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox_fixed_ap"]["AP"] == pytest.approx(100.0)
    assert results["bbox_fixed_ap"]["AP50"] == pytest.approx(100.0)
    out = tmp_path / "out" / "inference" / name
    assert (out / "lvis_instances_results.json").exists()
    assert len(json.loads((out / "lvis_fixed_ap_results.json").read_text())) == 3
    assert "float" not in np.__dict__


@requires_lvis
def test_fixed_ap_has_no_per_image_cap(tmp_path, register_records, make_instances):
    gt = {1: _grid(120)}
    name = register_records([], json_file=_write_lvis_json(tmp_path / "lvis.json", gt))
    outputs = _perfect_outputs(gt, make_instances)

    standard = LVISStandardEvaluator(name, distributed=False, max_dets_per_image=100)
    fixed = LVISFixedAPEvaluator(name, distributed=False)
    for evaluator in (standard, fixed):
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": outputs[1]}])
    # 100 of 120 true positives: precision 1 up to recall 0.833, i.e. 84 of 101 recall points.
    assert standard.evaluate()["bbox"]["AP"] == pytest.approx(100 * 84 / 101)
    assert fixed.evaluate()["bbox_fixed_ap"]["AP"] == pytest.approx(100.0)


@requires_lvis
def test_fixed_ap_caps_each_category(tmp_path, register_records, make_instances):
    # Category 1 has one box in each of three images; category 2 one box in image 1.
    box = [100, 100, 300, 300]
    gt = {1: [(1, box), (2, [500, 500, 700, 700])], 2: [(1, box)], 3: [(1, box)]}
    name = register_records([], json_file=_write_lvis_json(tmp_path / "lvis.json", gt))
    evaluator = LVISFixedAPEvaluator(
        name, distributed=False, output_dir=str(tmp_path), topk_per_category=2, min_buffer=1
    )
    evaluator.reset()
    outputs = {
        1: make_instances([box, [500, 500, 700, 700]], [0.9, 0.95], [0, 1]),
        2: make_instances([box, box], [0.8, 0.1], [0, 1]),
        3: make_instances([box], [0.7], [0]),
    }
    for image_id, inst in outputs.items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    results = evaluator.evaluate()["bbox_fixed_ap"]

    kept = json.loads((tmp_path / "lvis_fixed_ap_results.json").read_text())
    by_cat = {
        c: sorted((d["score"] for d in kept if d["category_id"] == c), reverse=True) for c in (1, 2)
    }
    assert by_cat[1] == pytest.approx([0.9, 0.8])  # the 0.7 detection of image 3 is dropped
    assert by_cat[2] == pytest.approx([0.95, 0.1])
    # Category 1: recall 2/3 at precision 1 (67 of 101 recall points); category 2: AP 100.
    assert results["AP"] == pytest.approx(100 * (67 / 101 + 1) / 2)
    assert results["APf"] == pytest.approx(100 * 67 / 101)
