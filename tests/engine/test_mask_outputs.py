"""Masks on the user-facing surfaces of a MASK_ON model: GLIPPredictor's ``pred_masks``
(category lists, chunked vocabularies, captions), the demo's RLE ``segmentation``, and the demo's
json scored by pycocotools equal to the evaluator's mask AP."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from glip_d2.config import add_glip_config
from glip_d2.data import GroundingDatasetMapper, register_coco_grounding
from glip_d2.engine import GLIPPredictor, GLIPTrainer
from glip_d2.evaluation import build_evaluator
from glip_d2.utils.checkpoint import GLIPCheckpointer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"
# An untrained model detects with scores near 0.07: a zero threshold keeps its detections.
MASK_OPTS = ["MODEL.MASK_ON", "True", "MODEL.ATSS.INFERENCE_TH", "0.0"]
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _load_demo():
    spec = importlib.util.spec_from_file_location("glip_demo_masks", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def _cfg(weights="", *opts):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *MASK_OPTS, *opts])
    return cfg


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random MASK_ON GLIP saved as a checkpoint (the demo and the tests load it)."""
    torch.manual_seed(0)
    model = build_model(_cfg())
    folder = tmp_path_factory.mktemp("mask_weights")
    GLIPCheckpointer(model, str(folder)).save("tiny_mask")
    return str(folder / "tiny_mask.pth")


@pytest.fixture(scope="module")
def predictor(weights):
    return GLIPPredictor(_cfg(weights))


def _image(seed, h=120, w=150):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    for _ in range(3):
        x, y, s = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40)), 30
        img[y : y + s, x : x + s] = rng.integers(0, 255, size=3)
    return img


def _assert_masks_follow_boxes(inst, size):
    """(N, H, W) bool masks of the image's size, each inside its own box (+-2 px)."""
    assert inst.has("pred_masks")
    masks = inst.pred_masks
    assert masks.dtype == torch.bool and tuple(masks.shape) == (len(inst), *size)
    nonempty = 0
    for box, mask in zip(inst.pred_boxes.tensor.tolist(), masks):
        ys, xs = mask.nonzero(as_tuple=True)
        if len(xs):
            nonempty += 1
            assert xs.min() >= box[0] - 2 and xs.max() <= box[2] + 2
            assert ys.min() >= box[1] - 2 and ys.max() <= box[3] + 2
    # The check above tells misaligned masks apart only if masks are non-empty, boxes differ.
    assert nonempty >= len(inst) // 2
    assert len({tuple(b) for b in inst.pred_boxes.tensor.round().tolist()}) > len(inst) // 2


def test_predictor_masks_for_categories_chunks_and_captions(weights, predictor):
    image = _image(0)
    names = ["red square", "blue circle"]
    inst = predictor(image, names)["instances"]
    assert len(inst) > 0
    _assert_masks_follow_boxes(inst, (120, 150))

    # A vocabulary in chunks (one category per prompt): each category's detections and masks
    # are those of its prompt alone, in the concatenated result's order.
    chunked = GLIPPredictor(_cfg(weights, "INPUT.PROMPT.CHUNK_SIZE", "1"))
    assert len(chunked.encode_categories(names)) == 2
    all_chunks = chunked(image, names)["instances"]
    _assert_masks_follow_boxes(all_chunks, (120, 150))
    for k, name in enumerate(names):
        alone = predictor(image, [name])["instances"]
        part = all_chunks[all_chunks.pred_classes == k]
        assert len(part) == len(alone) > 0
        torch.testing.assert_close(part.pred_boxes.tensor, alone.pred_boxes.tensor)
        # Boxes equal to float rounding: a pixel on the 0.5 threshold may flip.
        assert (part.pred_masks != alone.pred_masks).float().mean() < 1e-3

    # A caption: each grounded phrase's detections have their masks.
    caption = "a red square next to a blue circle"
    by_caption = predictor(image, caption, [[[0, 12]], [[21, 34]]])["instances"]
    _assert_masks_follow_boxes(by_caption, (120, 150))
    assert set(by_caption.pred_phrases) == {"a red square", "a blue circle"}
    # Filtering as Instances keeps boxes, masks and phrases together.
    kept = by_caption[by_caption.scores > by_caption.scores.median()]
    assert 0 < len(kept) < len(by_caption)
    _assert_masks_follow_boxes(kept, (120, 150))


def test_predictor_without_mask_on_has_no_masks():
    cfg = _cfg()
    cfg.MODEL.MASK_ON = False
    inst = GLIPPredictor(cfg)(_image(1), ["red square"])["instances"]
    assert len(inst) > 0 and not inst.has("pred_masks")


def _run_demo(weights, out, *args, opts=()):
    argv = ["--config-file", str(CONFIG), "--output", str(out), *args]
    argv += ["--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, *MASK_OPTS, *opts]
    assert demo.main(argv) == 0
    return json.loads((out / "detections.json").read_text())


def _assert_json_is_the_predictions(coco, image_id, inst):
    """The json's detections of one image are ``inst`` in order: boxes, scores, RLE masks."""
    anns = coco.imgToAnns[image_id]
    assert len(anns) == len(inst) > 0
    for ann, box, score, mask in zip(
        anns, inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_masks.numpy()
    ):
        x1, y1, x2, y2 = box
        np.testing.assert_allclose(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-4)
        assert ann["score"] == pytest.approx(score)
        rle = ann["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
        decoded = coco.annToMask(ann).astype(bool)
        np.testing.assert_array_equal(decoded, mask)
        assert ann["area"] == int(mask.sum())


def test_demo_writes_rle_masks_of_the_kept_detections(weights, predictor, tmp_path):
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), _image(i))
    names = ["red square", "blue circle"]
    predictions = [predictor(_image(i), names)["instances"] for i in range(2)]
    # A threshold that drops about half of the detections: the kept masks must stay aligned.
    thresh = float(torch.cat([p.scores for p in predictions]).median())

    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "img0.png"), str(tmp_path / "img1.png")]
    argv += ["--categories", *names, "--confidence-threshold", str(thresh)]
    argv += ["--draw-iou-threshold", "0"]  # fewer labels and masks to draw: faster
    result = _run_demo(weights, out, *argv)

    coco = COCO(str(out / "detections.json"))
    for image_info, inst in zip(result["images"], predictions):
        kept = inst[inst.scores >= thresh]
        assert 0 < len(kept) < len(inst)
        _assert_json_is_the_predictions(coco, image_info["id"], kept)

    # A caption's phrases: the same, with the phrases as categories.
    caption = "a red square next to a blue circle"
    out = tmp_path / "out_caption"
    argv = ["--input", str(tmp_path / "img0.png"), "--prompt", caption]
    argv += ["--phrases", "a red square", "a blue circle", "--confidence-threshold", "0"]
    result = _run_demo(weights, out, *argv)
    assert [c["name"] for c in result["categories"]] == ["a red square", "a blue circle"]
    inst = predictor(_image(0), caption, [[[0, 12]], [[21, 34]]])["instances"]
    _assert_json_is_the_predictions(COCO(str(out / "detections.json")), 1, inst)


# ---------------------------------------------------------------------------- mask AP

#: Per image: (height, width) and its objects (category id, polygon). Distinct sizes name the
#: image for the oracle model; triangles and an L shape, so a box is not its mask.
SHAPES = {
    1: ((96, 128), [(3, [10, 10, 70, 10, 70, 80, 10, 80]), (7, [75, 5, 125, 90, 70, 90])]),
    2: (
        (112, 144),
        [(7, [5, 100, 70, 5, 140, 100]), (3, [90, 10, 140, 10, 140, 60, 115, 60, 115, 30, 90, 30])],
    ),
    3: ((120, 150), [(3, [20, 20, 130, 20, 130, 110, 20, 110])]),
}
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]


def _polygon_mask(polygon, h, w):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([polygon], h, w))).astype(bool)


@pytest.fixture
def shapes_dataset(tmp_path, dataset_name):
    """A COCO json with polygon masks and its PNG images, registered with glip_d2."""
    images, annotations = [], []
    (tmp_path / "images").mkdir()
    for image_id, ((h, w), objects) in SHAPES.items():
        pixels = np.full((h, w, 3), 128, np.uint8)
        for category_id, polygon in objects:
            points = np.array(polygon, np.int32).reshape(-1, 2)
            cv2.fillPoly(pixels, [points], (0, 0, 220) if category_id == 3 else (220, 0, 0))
            mask = _polygon_mask(polygon, h, w)
            ys, xs = np.nonzero(mask)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float(mask.sum()),
                    "iscrowd": 0,
                    "segmentation": [[float(v) for v in polygon]],
                }
            )
        cv2.imwrite(str(tmp_path / "images" / f"{image_id}.png"), pixels)
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": h, "width": w})
    json_file = tmp_path / "shapes.json"
    json_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    register_coco_grounding(dataset_name, {}, str(json_file), str(tmp_path / "images"))
    DatasetCatalog.get(dataset_name)  # sets thing_classes
    return dataset_name


def _evaluator_segm(cfg, dataset_name, model):
    """Mask AP as training evaluates it: the test loader, build_evaluator, inference_on_dataset."""
    cfg = cfg.clone()
    cfg.OUTPUT_DIR = str(Path(MetadataCatalog.get(dataset_name).json_file).parent / "eval")
    results = inference_on_dataset(
        model, GLIPTrainer.build_test_loader(cfg, dataset_name), build_evaluator(cfg, dataset_name)
    )
    return results["segm"]


def _demo_json_segm(dataset_name, detections):
    """pycocotools' mask AP of the demo's json against the ground-truth json: images matched by
    file name, categories by name; ``bbox`` dropped (Detectron2's rule, so that the area
    ranges use the mask area)."""
    meta = MetadataCatalog.get(dataset_name)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(meta.json_file)
        image_ids = {im["file_name"]: im["id"] for im in gt.dataset["images"]}
        category_ids = {c["name"]: c["id"] for c in gt.dataset["categories"]}
        image_of = {im["id"]: image_ids[Path(im["file_name"]).name] for im in detections["images"]}
        category_of = {c["id"]: category_ids[c["name"]] for c in detections["categories"]}
        results = [
            {
                "image_id": image_of[a["image_id"]],
                "category_id": category_of[a["category_id"]],
                "segmentation": a["segmentation"],
                "score": a["score"],
            }
            for a in detections["annotations"]
        ]
        coco_eval = COCOeval(gt, gt.loadRes(results), "segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return dict(zip(STATS, coco_eval.stats[:6] * 100))


def _assert_same_ap(evaluator, reference):
    for key in STATS:
        if reference[key] < 0:  # no ground truth in that area range: pycocotools -1, D2 NaN
            assert np.isnan(evaluator[key]), key
        else:
            assert evaluator[key] == pytest.approx(reference[key], abs=1e-6), key


def _demo_on_dataset(weights, dataset_name, out, opts=()):
    meta = MetadataCatalog.get(dataset_name)
    argv = ["--input", meta.image_root, "--categories", *meta.thing_classes]
    # Every detection, and few pictures labels (drawing is not what is tested here).
    argv += ["--confidence-threshold", "0", "--draw-iou-threshold", "0"]
    return _run_demo(weights, out, *argv, opts=opts)


def test_demo_uses_the_evaluators_preprocessing_and_prompt(weights, predictor, shapes_dataset):
    meta = MetadataCatalog.get(shapes_dataset)
    mapper = GroundingDatasetMapper(_cfg(weights), is_train=False)
    for record in DatasetCatalog.get(shapes_dataset):
        mapped = mapper(record)
        x = predictor.preprocess(cv2.imread(record["file_name"]))
        assert torch.equal(mapped["image"], x["image"])
        (chunk,) = predictor.encode_categories(meta.thing_classes)
        for key in ("input_ids", "attention_mask", "positive_map"):
            assert torch.equal(torch.as_tensor(mapped[key]), chunk[key]), key


def test_demo_json_mask_ap_equals_the_evaluators_untrained_model(
    weights, predictor, shapes_dataset, tmp_path
):
    """The real (untrained) model through the demo and through the evaluator."""
    evaluator = _evaluator_segm(_cfg(weights), shapes_dataset, predictor.model)
    detections = _demo_on_dataset(weights, shapes_dataset, tmp_path / "demo")
    assert all("segmentation" in a for a in detections["annotations"])
    reference = _demo_json_segm(shapes_dataset, detections)
    assert reference["AP50"] > 0  # the random model overlaps the large shapes at times
    _assert_same_ap(evaluator, reference)


class _OracleModel(torch.nn.Module):
    """Returns fixed detections per original image size (the images' sizes differ), for the
    evaluator's inputs and the predictor's alike."""

    def __init__(self, by_size):
        super().__init__()
        self.by_size = by_size

    def forward(self, batched_inputs):
        return [{"instances": self.by_size[(x["height"], x["width"])]} for x in batched_inputs]


def _oracle_instances(size, masks, scores, classes):
    inst = Instances(size)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    inst.pred_masks = torch.from_numpy(np.stack(masks))
    return inst


def _oracle_outputs(contiguous, perturbed):
    """GT-derived detections; ``perturbed``: shifted masks, a wrong class, a false positive,
    a missed object and imperfect scores."""
    by_size = {}
    for image_id, (size, objects) in SHAPES.items():
        masks = [_polygon_mask(p, *size) for _, p in objects]
        classes = [contiguous[c] for c, _ in objects]
        scores = [1.0] * len(objects)
        if perturbed and image_id == 1:
            masks[1] = np.roll(masks[1], 8, axis=1)
            fp = np.zeros(size, bool)
            fp[60:90, 80:120] = True
            masks, scores, classes = masks + [fp], [0.9, 0.8, 0.85], classes + [classes[0]]
        if perturbed and image_id == 2:
            masks, scores, classes = masks[:1], [0.6], [1 - classes[0]]  # wrong class, a miss
        if perturbed and image_id == 3:
            masks, scores = [np.roll(masks[0], 20, axis=0)], [0.7]
        by_size[size] = _oracle_instances(size, masks, scores, classes)
    return by_size


@pytest.mark.parametrize("perturbed", [False, True], ids=["perfect", "perturbed"])
def test_demo_json_mask_ap_equals_the_evaluators_oracle_model(
    weights, shapes_dataset, tmp_path, monkeypatch, perturbed
):
    """Outputs we control, through the whole demo (predictor, filter, pictures, json) and the
    evaluator: perfect masks score 100 on both; perturbed ones score the same on both."""
    contiguous = MetadataCatalog.get(shapes_dataset).thing_dataset_id_to_contiguous_id
    oracle = _OracleModel(_oracle_outputs(contiguous, perturbed))

    class OraclePredictor(GLIPPredictor):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.model = oracle

    monkeypatch.setattr(demo, "GLIPPredictor", OraclePredictor)
    detections = _demo_on_dataset(weights, shapes_dataset, tmp_path / "demo")
    reference = _demo_json_segm(shapes_dataset, detections)
    evaluator = _evaluator_segm(_cfg(weights), shapes_dataset, oracle)
    if perturbed:
        assert 5.0 < reference["AP"] < 95.0
    else:
        assert reference["AP"] == pytest.approx(100.0)
    _assert_same_ap(evaluator, reference)
