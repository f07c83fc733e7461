"""Referring segmentation (PhraseCut, RefCOCO masks) on small masks with hand-computed IoUs."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import launch
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils import comm
from pycocotools import mask as mask_util

from glip_d2.data import register_mdetr_grounding
from glip_d2.evaluation import PhraseCutEvaluator, RefExpSegmentationEvaluator, build_evaluator
from glip_d2.evaluation.referring_segmentation import referring_mask_metrics

H, W = 10, 12


def _block(y1, y2, x1, x2):
    m = np.zeros((H, W), bool)
    m[y1:y2, x1:x2] = True
    return m


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _record(image_id, gt_masks, caption="the red mug"):
    anns = [
        {
            "id": 100 * image_id + k,
            "bbox": [0, 0, W, H],
            "bbox_mode": BoxMode.XYWH_ABS,
            "tokens_positive": [[0, len(caption)]],
            "segmentation": _rle(m),
        }
        for k, m in enumerate(gt_masks)
    ]
    return {"image_id": image_id, "height": H, "width": W, "caption": caption, "annotations": anns}


def _instances(masks, scores, size=(H, W)):
    masks = [np.asarray(m, bool) for m in masks]
    inst = Instances(size)
    inst.pred_boxes = Boxes(
        torch.tensor([[0.0, 0.0, size[1], size[0]]] * len(masks)).reshape(-1, 4)
    )
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
    inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, *size), bool))
    return inst


def _evaluate(evaluator, outputs):
    evaluator.reset()
    for image_id, inst in outputs.items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()


# Hand-made case. A: two GT instances (8 px), found by two confident detections, a 0.5-score
# detection elsewhere. B: GT 16 px, the only detection covers 8 of them. C: GT 10 px, the only
# detection scores exactly 0.7 (PhraseCut keeps score > 0.7: an empty prediction).
A_GT = [_block(0, 2, 0, 2), _block(5, 7, 5, 7)]
B_GT = [_block(2, 6, 2, 6)]
C_GT = [_block(8, 10, 0, 5)]


def _hand_made(register_records):
    name = register_records(
        [_record(1, A_GT), _record(2, B_GT), _record(3, C_GT)], evaluator_type="phrasecut"
    )
    outputs = {
        1: _instances([A_GT[0], A_GT[1], _block(8, 10, 8, 12)], [0.9, 0.8, 0.5]),
        2: _instances([_block(2, 6, 2, 4)], [0.75]),
        3: _instances([C_GT[0]], [0.7]),
    }
    return name, outputs


def test_phrasecut_hand_made_ious(register_records, tmp_path):
    name, outputs = _hand_made(register_records)
    res = _evaluate(PhraseCutEvaluator(name, distributed=False, output_dir=str(tmp_path)), outputs)
    res = res["phrasecut"]
    # IoUs 1, 8/16, 0; intersections 8, 8, 0; unions 8, 16, 10.
    assert res["mIoU"] == pytest.approx(100 * 1.5 / 3)
    assert res["cIoU"] == pytest.approx(100 * 16 / 34)
    assert res["Pr@0.5"] == pytest.approx(100 / 3)  # IoU 0.5 is not above 0.5 (PhraseCut)
    assert res["Pr@0.9"] == pytest.approx(100 / 3)
    rows = json.loads((tmp_path / "phrasecut_ious.json").read_text())
    assert [(r["intersection"], r["union"]) for r in rows] == [(8, 8), (8, 16), (0, 10)]


def test_threshold_and_precision_rules_are_the_protocols(register_records):
    name, outputs = _hand_made(register_records)
    low = _evaluate(PhraseCutEvaluator(name, distributed=False, score_threshold=0.6), outputs)
    # Threshold 0.6 keeps C's detection (IoU 1), and A's 0.5 detection still stays out.
    assert low["phrasecut"]["mIoU"] == pytest.approx(100 * 2.5 / 3)
    # RefCOCO rule: top-1 mask only (A: 4 of 8 px), precision counts IoU >= t.
    ref = _evaluate(RefExpSegmentationEvaluator(name, distributed=False), outputs)["refexp_seg"]
    assert ref["mIoU"] == pytest.approx(100 * (0.5 + 0.5 + 1.0) / 3)
    assert ref["cIoU"] == pytest.approx(100 * (4 + 8 + 10) / (8 + 16 + 10))
    assert ref["Pr@0.5"] == pytest.approx(100.0)
    assert ref["Pr@0.6"] == pytest.approx(100 / 3)


def test_refexp_seg_takes_the_top_scoring_mask(register_records):
    gt = _block(0, 4, 0, 4)
    name = register_records([_record(1, [gt])], evaluator_type="refcoco_seg")
    quarter = _block(0, 2, 0, 2)
    outputs = {1: _instances([gt, quarter, gt], [0.3, 0.9, 0.9])}  # tie: the first 0.9 wins
    res = _evaluate(RefExpSegmentationEvaluator(name, distributed=False), outputs)
    assert res["refexp_seg"]["mIoU"] == pytest.approx(25.0)


def test_perfect_predictions_from_polygons_through_builder(
    register_records, replay_model, tmp_path
):
    # Polygon ground truth (rasterised by the evaluator); image 2's phrase has two instances.
    polygons = {1: [[1, 1, 9, 1, 5, 8]], 2: [[0, 0, 6, 0, 6, 4, 0, 4], [7, 5, 11, 5, 11, 9]]}
    records, outputs = [], {}
    for image_id, polys in polygons.items():
        rec = _record(image_id, [])
        rec["annotations"] = [
            {"id": k, "bbox": [0, 0, 1, 1], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": [p]}
            for k, p in enumerate(polys)
        ]
        records.append(rec)
        masks = [mask_util.decode(mask_util.frPyObjects([p], H, W)[0]) for p in polys]
        outputs[image_id] = _instances(masks, [0.95] * len(masks))
    name = register_records(records, evaluator_type="phrasecut")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, PhraseCutEvaluator)
    loader = [[{"image_id": i}] for i in outputs]
    res = inference_on_dataset(replay_model(outputs), loader, evaluator)["phrasecut"]
    assert set(res) == {"mIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9"}
    assert res == {k: pytest.approx(100.0) for k in res}


def test_empty_predictions_score_zero(register_records):
    name = register_records([_record(1, A_GT), _record(2, B_GT)])
    outputs = {1: _instances([], []), 2: _instances([_block(0, 1, 0, 1)], [0.1])}
    res = _evaluate(PhraseCutEvaluator(name, distributed=False), outputs)["phrasecut"]
    assert res == {k: 0.0 for k in res}
    res = _evaluate(RefExpSegmentationEvaluator(name, distributed=False), outputs)["refexp_seg"]
    assert res["mIoU"] == 0.0 and res["cIoU"] == 0.0


def test_records_without_masks_are_skipped_and_counted(register_records, caplog):
    no_instance = {**_record(2, []), "annotations": []}
    box_only = _record(3, B_GT)
    del box_only["annotations"][0]["segmentation"]
    name = register_records([_record(1, B_GT), no_instance, box_only])
    outputs = {i: _instances([B_GT[0]], [0.9]) for i in (1, 2, 3)}
    with caplog.at_level(logging.WARNING, logger="glip_d2.evaluation.referring_segmentation"):
        res = _evaluate(PhraseCutEvaluator(name, distributed=False), outputs)["phrasecut"]
    assert res["mIoU"] == pytest.approx(100.0)  # record 1 only
    assert "1 of 3 records" in caplog.text and "no ground-truth instance" in caplog.text
    assert "without segmentation and are skipped (first: [3])" in caplog.text


def test_zero_evaluated_records_is_an_error(register_records):
    box_only = _record(1, B_GT)
    del box_only["annotations"][0]["segmentation"]
    name = register_records([box_only, {**_record(2, []), "annotations": []}])
    evaluator = PhraseCutEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="no record to evaluate .*1 without a ground-truth"):
        _evaluate(evaluator, {1: _instances([B_GT[0]], [0.9]), 2: _instances([], [])})
    with pytest.raises(ValueError, match="zero records"):
        referring_mask_metrics([], [])


def test_bad_inputs_are_errors_naming_them(register_records):
    bad = _record(7, [])
    bad["annotations"] = [
        {"id": 70, "bbox": [0, 0, 1, 1], "bbox_mode": 1, "segmentation": [[1, 1, 5, 1, 5]]}
    ]
    name = register_records([_record(1, B_GT), bad])
    evaluator = PhraseCutEvaluator(name, distributed=False)
    with pytest.raises(ValueError, match="record 7 .*annotation 70: invalid segmentation"):
        _evaluate(evaluator, {1: _instances([B_GT[0]], [0.9]), 7: _instances([], [])})
    # Masks at another size than the image (not pasted into the original image).
    small = _instances([np.ones((5, 6), bool)], [0.9], size=(5, 6))
    with pytest.raises(ValueError, match=r"record 1 .* are 5x6, but the image is 10x12"):
        _evaluate(evaluator, {1: small})
    with pytest.raises(ValueError, match="not in dataset"):
        _evaluate(evaluator, {99: _instances([B_GT[0]], [0.9])})
    no_masks = _instances([B_GT[0]], [0.9])
    no_masks.remove("pred_masks")
    with pytest.raises(ValueError, match="image 1 have no pred_masks"):
        _evaluate(evaluator, {1: no_masks})
    soft = _instances([B_GT[0]], [0.9])
    soft.pred_masks = soft.pred_masks.float()
    with pytest.raises(ValueError, match="must be binary masks"):
        _evaluate(evaluator, {1: soft})


# ---------------------------------------------------------------------------- MDETR jsons


def _mdetr_json(path, images, annotations):
    cats = [{"id": 1, "name": "object", "supercategory": "object"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return str(path)


def _polygon(mask_box):
    x1, y1, x2, y2 = mask_box
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def test_phrasecut_from_an_mdetr_json(dataset_name, tmp_path):
    # MDETR's PhraseCut conversion: one image entry per phrase, instances with box + polygon.
    phrase = "white plate"
    images = [
        {"id": i, "file_name": "61.jpg", "height": H, "width": W, "original_id": 61,
         "task_id": f"61__{i}", "caption": phrase, "dataset_name": "phrasecut",
         "tokens_negative": [[0, len(phrase)]]}
        for i in (0, 1)
    ]  # fmt: skip
    boxes = {0: [(1, 1, 5, 4), (7, 2, 11, 8)], 1: [(0, 5, 6, 10)]}
    anns = [
        {"id": 10 * i + k, "image_id": i, "category_id": 1, "iscrowd": 0,
         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
         "segmentation": _polygon((x1, y1, x2, y2)), "tokens_positive": [[0, len(phrase)]]}
        for i, bs in boxes.items()
        for k, (x1, y1, x2, y2) in enumerate(bs)
    ]  # fmt: skip
    json_file = _mdetr_json(tmp_path / "finetune_phrasecut_test.json", images, anns)
    register_mdetr_grounding(dataset_name, {"evaluator_type": "phrasecut"}, json_file, "images")
    gt = {
        i: np.any([mask_util.decode(mask_util.frPyObjects(a["segmentation"], H, W)[0])
                   for a in anns if a["image_id"] == i], axis=0)
        for i in boxes
    }  # fmt: skip
    evaluator = build_evaluator(get_cfg(), dataset_name, str(tmp_path / "out"))
    # Image 0: one detection per instance; image 1: half the mask.
    half = gt[1].copy()
    half[:, 3:] = False
    outputs = {0: _instances([gt[0] & (np.arange(W) < 6), gt[0] & (np.arange(W) >= 6)],
                             [0.9, 0.8]),
               1: _instances([half], [0.9])}  # fmt: skip
    res = _evaluate(evaluator, outputs)["phrasecut"]
    assert res["mIoU"] == pytest.approx(100 * (1 + half.sum() / gt[1].sum()) / 2)


def test_refcoco_masks_from_the_coco_json(dataset_name, tmp_path):
    # MDETR's RefCOCO json has boxes only; the masks come from COCO's instances json.
    images = [
        {"id": i, "file_name": "COCO_train2014_000000000042.jpg", "height": H, "width": W,
         "original_id": 42, "caption": cap, "dataset_name": "refcoco",
         "tokens_negative": [[0, 3]]}
        for i, cap in ((0, "left cup"), (1, "right cup"))
    ]  # fmt: skip
    left, right = [1, 1, 4, 6], [6, 2, 5, 7]  # xywh, copied from COCO by MDETR
    anns = [
        {"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": box,
         "area": box[2] * box[3], "tokens_positive": [[0, 3]]}
        for i, box in ((0, left), (1, right))
    ]  # fmt: skip
    json_file = _mdetr_json(tmp_path / "final_refcoco_val.json", images, anns)
    tri_left = [[1, 1, 5, 1, 1, 7]]  # a triangle inside each box: the mask is not the box
    tri_right = [[6, 2, 11, 9, 6, 9]]
    coco = {
        "images": [{"id": 42, "height": H, "width": W, "file_name": "x.jpg"}],
        "annotations": [
            {"id": 501, "image_id": 42, "bbox": left, "segmentation": tri_left},
            {"id": 502, "image_id": 42, "bbox": right, "segmentation": tri_right},
            {"id": 503, "image_id": 43, "bbox": left, "segmentation": [[0, 0, 9, 0, 9, 9]]},
        ],
    }
    coco_file = tmp_path / "instances_train2014.json"
    coco_file.write_text(json.dumps(coco))
    meta = {"evaluator_type": "refcoco_seg", "mask_json_file": str(coco_file)}
    register_mdetr_grounding(dataset_name, meta, json_file, "images")
    masks = {
        0: mask_util.decode(mask_util.frPyObjects(tri_left, H, W)[0]),
        1: mask_util.decode(mask_util.frPyObjects(tri_right, H, W)[0]),
    }
    evaluator = build_evaluator(get_cfg(), dataset_name, str(tmp_path / "out"))
    assert isinstance(evaluator, RefExpSegmentationEvaluator)
    outputs = {i: _instances([m, 1 - m], [0.9, 0.2]) for i, m in masks.items()}
    assert _evaluate(evaluator, outputs)["refexp_seg"]["mIoU"] == pytest.approx(100.0)
    # The box mask instead of the triangle scores below 100: the triangle is the ground truth.
    boxes = {0: _block(1, 7, 1, 5), 1: _block(2, 9, 6, 11)}
    res = _evaluate(evaluator, {i: _instances([m], [0.9]) for i, m in boxes.items()})
    assert res["refexp_seg"]["mIoU"] < 70.0
    # A box that no COCO annotation of the image has is an error naming the record.
    coco["annotations"][1]["bbox"] = [0, 0, 3, 3]
    coco_file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="record 1 .*no annotation of COCO image 42"):
        _evaluate(evaluator, outputs)


# ---------------------------------------------------------------------------- distributed


def _worker(tmp_dir: str):
    records = [_record(i, [_block(0, 4, 0, 4)]) for i in range(4)]
    DatasetCatalog.register("dist_refseg", lambda: records)
    # Images 0, 1 on rank 0 (perfect), images 2, 3 on rank 1 (a quarter of the mask).
    rank = comm.get_rank()
    results = {}
    for key, evaluator in (
        ("phrasecut", PhraseCutEvaluator("dist_refseg")),
        ("refexp_seg", RefExpSegmentationEvaluator("dist_refseg")),
    ):
        evaluator.reset()
        for image_id in (2 * rank, 2 * rank + 1):
            mask = _block(0, 4, 0, 4) if rank == 0 else _block(0, 2, 0, 2)
            inst = _instances([mask], [0.9])
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])
        results[key] = evaluator.evaluate()
    if comm.is_main_process():
        (Path(tmp_dir) / "results.json").write_text(json.dumps(results))
    else:
        assert all(r is None for r in results.values())
    # Leave together (a rank exiting during the other's last gloo exchange can abort it).
    comm.synchronize()
    torch.distributed.destroy_process_group()


def test_two_processes_gather_everything(tmp_path):
    launch(_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("phrasecut", "refexp_seg"):
        assert results[key][key]["mIoU"] == pytest.approx(100 * (1 + 1 + 0.25 + 0.25) / 4)
