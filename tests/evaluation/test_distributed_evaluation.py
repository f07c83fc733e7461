"""Evaluators gather the predictions of every rank (two CPU processes, gloo)."""

import json
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import launch
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm

BOX = [100, 100, 300, 300]
WRONG = [600, 600, 700, 700]


def _instances(boxes, scores, classes):
    inst = Instances((1000, 1000))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _records():
    ann = {"bbox": [100, 100, 200, 200], "bbox_mode": BoxMode.XYWH_ABS, "tokens_positive": [[0, 5]]}
    return [
        {
            "image_id": i,
            "caption": "a dog",
            "tokens_positive_eval": [[[0, 5]]],
            "annotations": [dict(ann)],
        }
        for i in range(4)
    ]


def _lvis_json(path: Path) -> str:
    images = [
        {
            "id": i,
            "height": 1000,
            "width": 1000,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for i in range(4)
    ]
    anns = [
        {
            "id": i + 1,
            "image_id": i,
            "category_id": 1,
            "bbox": [100, 100, 200, 200],
            "area": 40000.0,
        }
        for i in range(4)
    ]
    cats = [{"id": 1, "name": "dog", "frequency": "f"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _worker(tmp_dir: str, with_lvis: bool):
    from glip_d2.evaluation import FlickrEvaluator, RefExpEvaluator

    DatasetCatalog.register("dist_grounding", _records)
    MetadataCatalog.get("dist_grounding").set(evaluator_type="flickr30k")
    evaluators = {
        "flickr": FlickrEvaluator("dist_grounding"),
        "refexp": RefExpEvaluator("dist_grounding"),
    }
    if with_lvis:
        from glip_d2.evaluation import LVISFixedAPEvaluator

        DatasetCatalog.register("dist_lvis", lambda: [])
        MetadataCatalog.get("dist_lvis").set(json_file=_lvis_json(Path(tmp_dir) / "lvis.json"))
        evaluators["lvis"] = LVISFixedAPEvaluator("dist_lvis", topk_per_category=3)
    # Images 0, 1 on rank 0 (right box first), images 2, 3 on rank 1 (right box second).
    rank = comm.get_rank()
    outputs = {
        0: _instances([BOX], [0.9], [0]),
        1: _instances([BOX], [0.8], [0]),
        2: _instances([WRONG, BOX], [0.9, 0.7], [0, 0]),
        3: _instances([WRONG, BOX], [0.9, 0.6], [0, 0]),
    }
    results = {}
    for key, evaluator in evaluators.items():
        evaluator.reset()
        for image_id in (2 * rank, 2 * rank + 1):
            evaluator.process([{"image_id": image_id}], [{"instances": outputs[image_id]}])
        results[key] = evaluator.evaluate()
    if comm.is_main_process():
        (Path(tmp_dir) / "results.json").write_text(json.dumps(results))
    else:
        assert all(r is None for r in results.values())
    # Leave together (a rank exiting during the other's last gloo exchange can abort it).
    comm.synchronize()
    torch.distributed.destroy_process_group()


def test_two_processes_gather_everything(tmp_path):
    try:
        import lvis  # noqa: F401

        with_lvis = True
    except ImportError:
        with_lvis = False
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path), with_lvis))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["flickr"]["flickr30k_separate"]["R@1"] == pytest.approx(50.0)
    assert results["flickr"]["flickr30k_separate"]["R@5"] == pytest.approx(100.0)
    assert results["refexp"]["refexp"]["P@1"] == pytest.approx(50.0)
    if with_lvis:
        # The top 3 of category 1 over both ranks are the three 0.9 detections (ties keep rank
        # 0 first): one TP (image 0), two FPs. Precision 1 up to recall 1/4: 26 of 101 points.
        assert results["lvis"]["bbox_fixed_ap"]["AP"] == pytest.approx(100 * 26 / 101)
