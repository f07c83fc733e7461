"""Mask AP (``segm``) through ``build_evaluator`` on synthetic COCO and LVIS jsons.

Predictions are model-style: ``pred_masks`` (N, H, W) bool, pasted into the original image.
"""

import contextlib
import importlib.util
import io
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from glip_d2.evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator, build_evaluator

requires_lvis = pytest.mark.skipif(
    importlib.util.find_spec("lvis") is None,
    reason="LVIS AP needs the 'lvis' package (pip install --no-deps lvis==0.5.3)",
)

H, W = 60, 80
CATEGORY_IDS = (3, 7)  # not contiguous on purpose
CONTIGUOUS = {3: 0, 7: 1}
# Per image: (category id, polygon). Triangles and an L shape, so a box is not its mask.
GT = {
    1: [
        (3, [4, 4, 30, 4, 4, 30]),
        (7, [40, 10, 70, 10, 70, 20, 50, 20, 50, 50, 40, 50]),
        (3, [20, 40, 35, 55, 5, 55]),
    ],
    2: [
        (7, [10, 10, 60, 10, 35, 45]),
        (3, [60, 30, 75, 30, 75, 58, 60, 58]),
    ],
}


def _mask(polygon):
    rle = mask_util.merge(mask_util.frPyObjects([polygon], H, W))
    return mask_util.decode(rle).astype(bool)


def _box(mask):
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _annotations(gt=GT, with_masks=True):
    anns = []
    for image_id, objects in gt.items():
        for category_id, polygon in objects:
            x1, y1, x2, y2 = _box(_mask(polygon))
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": float(_mask(polygon).sum()),
            }
            if with_masks:
                ann["segmentation"] = [list(map(float, polygon))]
            anns.append(ann)
    return anns


def _write_coco(path, anns):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": H, "width": W} for i in GT]
    cats = [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _instances(make_instances, masks, scores, category_ids):
    masks = [np.asarray(m, dtype=bool) for m in masks]
    inst = make_instances(
        [_box(m) for m in masks], scores, [CONTIGUOUS[c] for c in category_ids], image_size=(H, W)
    )
    inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, H, W), bool))
    return inst


def _perfect_outputs(make_instances):
    return {
        image_id: _instances(
            make_instances,
            [_mask(p) for _, p in objects],
            [1.0] * len(objects),
            [c for c, _ in objects],
        )
        for image_id, objects in GT.items()
    }


def _imperfect_outputs(make_instances):
    """Shifted masks, a wrong category, a false positive and a missed object."""
    (c1, p1), (c2, p2), (c3, p3) = GT[1]
    (c4, p4), (c5, p5) = GT[2]
    shifted = np.roll(_mask(p2), 6, axis=1)  # IoU with the L shape well below 1
    fp = np.zeros((H, W), bool)
    fp[30:40, 5:25] = True
    return {
        1: _instances(
            make_instances,
            [_mask(p1), shifted, _mask(p3), fp],
            [0.9, 0.8, 0.3, 0.7],
            [c1, c2, 7, 3],  # the third mask has the wrong category
        ),
        2: _instances(make_instances, [np.roll(_mask(p4), 3, axis=0)], [0.6], [c4]),
    }


def _pycocotools_segm(json_file, outputs):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, inst in outputs.items():
        for mask, s, c in zip(inst.pred_masks.numpy(), inst.scores.tolist(), inst.pred_classes):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[int(c)],
                    "segmentation": rle,
                    "score": s,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_file)
        coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), coco_eval.stats[:6] * 100))


def _cfg(tmp_path, mask_on=True):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.MODEL.MASK_ON = mask_on
    return cfg


def _coco_meta(json_file):
    return {
        "evaluator_type": "coco",
        "json_file": json_file,
        "thing_classes": [f"c{c}" for c in CATEGORY_IDS],
        "thing_dataset_id_to_contiguous_id": dict(CONTIGUOUS),
    }


def _run(evaluator, outputs, replay_model):
    loader = [[{"image_id": i, "height": H, "width": W}] for i in outputs]
    return inference_on_dataset(replay_model(outputs), loader, evaluator)


def test_coco_perfect_masks_give_segm_ap_100(
    tmp_path, register_records, make_instances, replay_model
):
    json_file = _write_coco(tmp_path / "coco.json", _annotations())
    name = register_records([], **_coco_meta(json_file))
    evaluator = build_evaluator(_cfg(tmp_path), name)
    assert isinstance(evaluator, COCOEvaluator)
    results = _run(evaluator, _perfect_outputs(make_instances), replay_model)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)


def test_coco_segm_ap_equals_pycocotools(tmp_path, register_records, make_instances, replay_model):
    json_file = _write_coco(tmp_path / "coco.json", _annotations())
    name = register_records([], **_coco_meta(json_file))
    outputs = _imperfect_outputs(make_instances)
    ours = _run(build_evaluator(_cfg(tmp_path), name), outputs, replay_model)["segm"]
    reference = _pycocotools_segm(json_file, outputs)
    assert 5.0 < reference["AP"] < 95.0  # a non-trivial case
    for key, value in reference.items():
        if value < 0:  # no ground truth in that area range: pycocotools -1, Detectron2 NaN
            assert np.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_coco_records_without_json_keep_their_masks(
    tmp_path, register_records, make_instances, replay_model
):
    # Without json_file, COCOEvaluator converts the records: their segmentation must reach it.
    records = []
    for image_id in GT:
        anns = [
            {**a, "bbox_mode": BoxMode.XYWH_ABS, "category_id": CONTIGUOUS[a["category_id"]]}
            for a in _annotations()
            if a["image_id"] == image_id
        ]
        records.append(
            {
                "image_id": image_id,
                "file_name": f"{image_id}.jpg",
                "height": H,
                "width": W,
                "annotations": anns,
            }
        )
    meta = {k: v for k, v in _coco_meta(None).items() if k != "json_file"}
    name = register_records(records, **meta)
    cfg = _cfg(tmp_path)
    results = _run(build_evaluator(cfg, name), _perfect_outputs(make_instances), replay_model)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    # A shifted mask costs mask AP only: the boxes stay perfect.
    outputs = _perfect_outputs(make_instances)
    outputs[2].pred_masks = torch.roll(outputs[2].pred_masks, 20, dims=2)
    results = _run(build_evaluator(cfg, name), outputs, replay_model)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] < 90.0


def test_coco_mask_on_false_or_box_only_ground_truth_gives_box_ap(
    tmp_path, register_records, make_instances, replay_model
):
    json_file = _write_coco(tmp_path / "coco.json", _annotations())
    name = register_records([], **_coco_meta(json_file))
    results = _run(
        build_evaluator(_cfg(tmp_path, mask_on=False), name),
        _perfect_outputs(make_instances),
        replay_model,
    )
    assert set(results) == {"bbox"}

    _write_coco(tmp_path / "coco.json", _annotations(with_masks=False))
    results = _run(
        build_evaluator(_cfg(tmp_path), name), _perfect_outputs(make_instances), replay_model
    )
    assert set(results) == {"bbox"}  # ODinW-style box-only set evaluated with a mask model


def test_coco_some_annotations_without_masks_is_an_error(tmp_path, register_records):
    anns = _annotations()
    del anns[3]["segmentation"]
    json_file = _write_coco(tmp_path / "coco.json", anns)
    name = register_records([], **_coco_meta(json_file))
    with pytest.raises(ValueError, match=r"1 of 5 .* no segmentation .*annotation 4 of image 2"):
        build_evaluator(_cfg(tmp_path), name)


# ---------------------------------------------------------------------------- LVIS


def _write_lvis(path, objects_per_image, with_masks=True):
    """``objects_per_image``: {image_id: [(category_id, polygon), ...]}; one category, "f"."""
    images = [
        {
            "id": i,
            "height": H,
            "width": W,
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
            "coco_url": f"http://x/val2017/{i:012d}.jpg",
        }
        for i in objects_per_image
    ]
    anns = _annotations(objects_per_image, with_masks=with_masks)
    cats = [
        {"id": c, "name": f"c{c}", "synonyms": [f"c{c}"], "frequency": f}
        for c, f in zip(CATEGORY_IDS, ("f", "c"))
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path)


def _lvis_meta(json_file):
    return {
        "evaluator_type": "lvis",
        "json_file": json_file,
        "thing_classes": [f"c{c}" for c in CATEGORY_IDS],
        "thing_dataset_id_to_contiguous_id": dict(CONTIGUOUS),
    }


@requires_lvis
def test_lvis_perfect_masks_through_builder(
    tmp_path, register_records, make_instances, replay_model
):
    name = register_records([], **_lvis_meta(_write_lvis(tmp_path / "lvis.json", GT)))
    results = _run(
        build_evaluator(_cfg(tmp_path), name), _perfect_outputs(make_instances), replay_model
    )
    for key in ("bbox", "segm", "bbox_fixed_ap", "segm_fixed_ap"):
        assert results[key]["AP"] == pytest.approx(100.0), key
    kept = json.loads(
        (tmp_path / "out/inference" / name / "lvis_fixed_ap_results.json").read_text()
    )
    assert len(kept) == 5 and all("counts" in d["segmentation"] for d in kept)


@requires_lvis
def test_lvis_mask_ap_scores_masks_not_boxes(tmp_path, register_records, make_instances):
    # Category 3 has one object in each image. Both boxes are right; the mask of image 2 is
    # another shape inside the same box (IoU < 0.5): recall 1/2 at precision 1 for masks,
    # i.e. 51 of 101 recall points, at every IoU threshold.
    triangle = [10, 10, 60, 10, 35, 45]
    gt = {1: [(3, [4, 4, 30, 4, 4, 30])], 2: [(3, triangle)]}
    name = register_records([], **_lvis_meta(_write_lvis(tmp_path / "lvis.json", gt)))
    good = _mask(gt[1][0][1])
    wrong = np.zeros((H, W), bool)
    tri = _mask(triangle)
    x1, y1, x2, y2 = (int(v) for v in _box(tri))
    wrong[y1:y2, x1:x2] = True
    wrong &= ~tri  # same box, the complement of the triangle inside it
    wrong[y1, x1] = wrong[y1, x2 - 1] = wrong[y2 - 1, x1] = wrong[y2 - 1, x2 - 1] = True
    assert _box(wrong) == _box(tri)
    outputs = {
        1: _instances(make_instances, [good], [0.9], [3]),
        2: _instances(make_instances, [wrong], [0.8], [3]),
    }
    outputs[2].pred_boxes.tensor[:] = torch.tensor(_box(tri))
    for evaluator, suffix in (
        (LVISStandardEvaluator(name, tasks=("bbox", "segm"), distributed=False), ""),
        (LVISFixedAPEvaluator(name, tasks=("bbox", "segm"), distributed=False), "_fixed_ap"),
    ):
        evaluator.reset()
        for image_id, inst in outputs.items():
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])
        results = evaluator.evaluate()
        assert results["bbox" + suffix]["AP"] == pytest.approx(100.0)
        assert results["segm" + suffix]["AP"] == pytest.approx(100 * 51 / 101)


@requires_lvis
def test_lvis_mask_errors(tmp_path, register_records, make_instances):
    box_only = _write_lvis(tmp_path / "lvis.json", GT, with_masks=False)
    name = register_records([], **_lvis_meta(box_only))
    for cls in (LVISStandardEvaluator, LVISFixedAPEvaluator):
        with pytest.raises(ValueError, match="5 of 5 ground-truth annotations have no segm"):
            cls(name, tasks=("bbox", "segm"), distributed=False)
        cls(name, tasks=("bbox",), distributed=False)  # box AP needs no masks

    _write_lvis(tmp_path / "lvis.json", GT)  # now with masks
    no_masks = make_instances([[4, 4, 30, 30]], [0.9], [0], image_size=(H, W))
    for cls in (LVISStandardEvaluator, LVISFixedAPEvaluator):
        evaluator = cls(name, tasks=("bbox", "segm"), distributed=False)
        evaluator.reset()
        with pytest.raises(ValueError, match="image 1 have no pred_masks"):
            evaluator.process([{"image_id": 1}], [{"instances": no_masks}])
