"""COCO AP through ``build_evaluator`` equals pycocotools run directly on the same boxes."""

import contextlib
import io
import json

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator, inference_on_dataset

from glip_d2.evaluation import build_evaluator

CATEGORY_IDS = (3, 7, 9)  # not contiguous on purpose


def _toy_coco(path, rng):
    images, anns = [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 480, "width": 640})
        for _ in range(6):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(8, 140), rng.uniform(8, 130)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "iscrowd": 0,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                }
            )
    cats = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return anns


def _noisy_predictions(anns, rng, make_instances):
    """Jittered copies of the GT plus random false positives (XYXY, contiguous classes)."""
    contiguous = {c: i for i, c in enumerate(CATEGORY_IDS)}
    outputs = {}
    for image_id in (1, 2, 3):
        boxes, scores, classes = [], [], []
        for ann in (a for a in anns if a["image_id"] == image_id):
            x, y, w, h = ann["bbox"]
            j = rng.normal(0, 0.12 * min(w, h), 4)
            boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
            scores.append(rng.uniform(0.3, 1.0))
            classes.append(contiguous[ann["category_id"]] if rng.uniform() < 0.85 else 0)
        for _ in range(5):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            boxes.append([x, y, x + rng.uniform(10, 120), y + rng.uniform(10, 120)])
            scores.append(rng.uniform(0.05, 0.8))
            classes.append(int(rng.integers(0, 3)))
        outputs[image_id] = make_instances(boxes, scores, classes, image_size=(480, 640))
    return outputs


def _pycocotools_ap(json_file, outputs):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, inst in outputs.items():
        for (x1, y1, x2, y2), s, c in zip(
            inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[c],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": s,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        coco_eval = COCOeval(gt, gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), coco_eval.stats[:6] * 100))


@pytest.mark.parametrize("seed", [0, 1])
def test_coco_ap_matches_pycocotools(seed, tmp_path, dataset_name, make_instances, replay_model):
    rng = np.random.default_rng(seed)
    json_file = tmp_path / "coco.json"
    anns = _toy_coco(json_file, rng)
    register_coco_instances(dataset_name, {}, str(json_file), str(tmp_path))
    assert MetadataCatalog.get(dataset_name).evaluator_type == "coco"
    # As the test loader would: loading sets the json id <-> contiguous id mapping.
    DatasetCatalog.get(dataset_name)
    outputs = _noisy_predictions(anns, rng, make_instances)

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    evaluator = build_evaluator(cfg, dataset_name)
    assert isinstance(evaluator, COCOEvaluator)
    loader = [[{"image_id": i}] for i in (1, 2, 3)]
    ours = inference_on_dataset(replay_model(outputs), loader, evaluator)["bbox"]
    reference = _pycocotools_ap(str(json_file), outputs)
    assert 5.0 < reference["AP"] < 95.0  # a non-trivial case
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
