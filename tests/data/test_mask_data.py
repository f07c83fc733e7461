"""Ground-truth masks on the data path: the loaders keep segmentations (bad ones are named),
the mapper turns them into ``gt_masks`` / ``gt_mask_valid`` aligned with ``gt_boxes``, and the
glip_shapes polygons cover the drawn shapes."""

import copy
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, PolygonMasks
from grounding_fixtures import MDETR_CAPTION, RED_CAT, mdetr_data, save_image
from PIL import Image
from pycocotools import mask as mask_util

from glip_d2.config import add_glip_config
from glip_d2.data import GLIPResize, GroundingDatasetMapper
from glip_d2.data.annotation_checks import SEGM_DROPPED, SEGM_REPAIRED
from glip_d2.data.datasets import (
    generate_glip_shapes,
    load_coco_grounding_json,
    load_mdetr_grounding_json,
)

H, W = 48, 64  # image 1
# A triangle inside the cat box [4, 6, 20, 16] and a rectangle RLE inside the dog box.
TRIANGLE = [4.0, 22.0, 14.0, 6.0, 24.0, 22.0]
DOG_BOX = [30.0, 10.0, 24.0, 30.0]


def _rle_of_rect(x0, y0, x1, y1, height=H, width=W, compressed=False):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    if compressed:
        rle = mask_util.encode(np.asfortranarray(mask))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    # Uncompressed (COCO crowd style): run lengths in column-major order, starting with 0s.
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat[0]:
        runs = [0] + runs
    return {"size": [height, width], "counts": runs}


def _coco(tmp_path, annotations, images=None):
    """A COCO-format json (categories "cat" 1, "dog" 2) and its grey images."""
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    for img in images:
        save_image(tmp_path / img["file_name"], img["width"], img["height"])
    anns = [{"image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1.0, **a} for a in annotations]
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(data))
    return str(path)


def _load(tmp_path, dataset_name, annotations, images=None):
    return load_coco_grounding_json(
        _coco(tmp_path, annotations, images), str(tmp_path), dataset_name
    )


def _bitmasks(masks, image_size):
    """(N, H, W) bool of PolygonMasks or BitMasks."""
    if isinstance(masks, BitMasks):
        return masks.tensor
    return torch.stack(
        [torch.from_numpy(_rasterise(p, *image_size)) for p in masks.polygons]
    ).reshape(-1, *image_size)


def _rasterise(polygons, height, width):
    rles = mask_util.frPyObjects(
        [np.asarray(p, dtype=np.float64).tolist() for p in polygons], height, width
    )
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _iou(a, b):
    a, b = torch.as_tensor(a, dtype=torch.bool), torch.as_tensor(b, dtype=torch.bool)
    return float((a & b).sum()) / float((a | b).sum())


# ---------------------------------------------------------------------------- loaders


def test_coco_loader_keeps_polygons_and_rle(tmp_path, dataset_name):
    uncompressed = _rle_of_rect(30, 10, 54, 40)
    compressed = _rle_of_rect(30, 10, 54, 40, compressed=True)
    records = _load(
        tmp_path,
        dataset_name,
        [
            {"id": 1, "bbox": [4, 6, 20, 16], "segmentation": [TRIANGLE]},
            {"id": 2, "bbox": DOG_BOX, "category_id": 2, "segmentation": uncompressed},
            {"id": 3, "bbox": DOG_BOX, "category_id": 2, "segmentation": compressed},
            {"id": 4, "bbox": [4, 6, 20, 16]},  # box-only
            {"id": 5, "bbox": [4, 6, 20, 16], "segmentation": []},  # box-only
        ],
    )
    anns = {a["id"]: a for a in records[0]["annotations"]}
    assert anns[1]["segmentation"] == [TRIANGLE]
    # Uncompressed RLE is compressed (as load_coco_json does), with the same mask.
    assert anns[2]["segmentation"] == compressed
    assert anns[3]["segmentation"] == compressed
    assert "segmentation" not in anns[4] and "segmentation" not in anns[5]
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[10:40, 30:54] = 1
    assert np.array_equal(mask_util.decode(anns[2]["segmentation"]), expected)


def test_mdetr_loader_keeps_segmentations(mdetr_files):
    data = mdetr_data()
    data["annotations"][0]["segmentation"] = [TRIANGLE]
    data["annotations"][1]["segmentation"] = _rle_of_rect(30, 10, 40, 20)
    records = load_mdetr_grounding_json(*mdetr_files(data), "mdetr_masks")
    anns = records[0]["annotations"]
    assert anns[0]["segmentation"] == [TRIANGLE]
    assert mask_util.decode(anns[1]["segmentation"]).sum() == 100
    assert "segmentation" not in anns[2]


@pytest.mark.parametrize(
    "segmentation, problem",
    [
        ([[4, 6, 20, 6, 20]], "odd number of coordinates"),
        ([4, 6, 20, 6, 20, 20], "flat list of numbers"),
        ([[4, 6, "x", 6, 20, 20]], "not a flat list of numbers"),
        (_rle_of_rect(0, 0, 5, 5, height=40, width=64), r"differs from the image's \[48, 64\]"),
        ({"size": [H, W], "counts": [5, 7]}, "sum to 12, not height \\* width = 3072"),
        ({"counts": "abc"}, "without 'counts' and a 'size'"),
        ({"size": [H, W], "counts": [3073, -1]}, "negative run length"),
        ("a string", "not a list of polygons or an RLE dict"),
    ],
)
def test_bad_segmentation_is_a_named_error(tmp_path, dataset_name, segmentation, problem):
    annotations = [{"id": 77, "bbox": [4, 6, 20, 16], "segmentation": segmentation}]
    json_file = str(tmp_path / "masks.json")
    with pytest.raises(ValueError, match=problem) as err:
        _load(tmp_path, dataset_name, annotations)
    message = str(err.value)
    assert json_file in message and "annotation 77 of image 1" in message
    assert "a.png" in message


def test_bad_segmentation_in_mdetr_json_is_named(mdetr_files):
    data = mdetr_data()
    data["annotations"][1]["segmentation"] = [[30, 10, 40, 10, 40]]
    json_file, root = mdetr_files(data)
    with pytest.raises(ValueError, match="annotation 12 of image 1 .*odd number") as err:
        load_mdetr_grounding_json(json_file, root, "mdetr_masks")
    assert json_file in str(err.value)


def test_degenerate_polygons_dropped_with_one_warning(tmp_path, dataset_name, data_log):
    nan = float("nan")
    annotations = [
        {"id": 1, "bbox": [4, 6, 20, 16], "segmentation": [[4, 6, 20, 6]]},  # 2 points
        {"id": 2, "bbox": [4, 6, 20, 16], "segmentation": [[4, 6, 9, 9, 20, 6], [1, 1]]},
        {"id": 3, "bbox": [4, 6, 20, 16], "segmentation": [[4, 6, nan, 9, 20, 6]]},
        {"id": 4, "bbox": [4, 6, 20, 16], "segmentation": [TRIANGLE]},
    ]
    for _ in range(2):  # loaded again (evaluation): the same report is not logged twice
        records = _load(tmp_path, dataset_name, annotations)
    anns = {a["id"]: a for a in records[0]["annotations"]}
    assert set(anns) == {1, 2, 3, 4}  # the boxes stay
    assert "segmentation" not in anns[1] and "segmentation" not in anns[3]  # box-only now
    assert anns[2]["segmentation"] == [[4, 6, 9, 9, 20, 6]]
    assert anns[4]["segmentation"] == [TRIANGLE]
    warnings = [m for m in data_log if "segmentation" in m]
    assert len(warnings) == 1
    assert "3 annotations have repaired segmentations" in warnings[0]
    assert f"{SEGM_DROPPED}: 2" in warnings[0] and f"{SEGM_REPAIRED}: 1" in warnings[0]
    assert "annotation 1 of image 1" in warnings[0]


# ---------------------------------------------------------------------------- mapper


@pytest.fixture
def mask_mapper(make_mapper):
    def make(**kwargs):
        kwargs.setdefault("mask_on", True)
        return make_mapper(True, **kwargs)

    return make


def _detection_record(tmp_path, dataset_name, annotations, **kw):
    return _load(tmp_path, dataset_name, annotations, **kw)[0]


RESIZE_FLIP = [GLIPResize(96, 1000), T.RandomFlip(prob=1.0)]  # 48x64 -> 96x128, then x -> 128 - x


def _resized_flipped(polygon):
    p = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) * 2.0
    p[:, 0] = 128.0 - p[:, 0]
    return p.reshape(-1)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_polygon_through_resize_and_flip(tmp_path, dataset_name, mask_mapper, mask_format):
    record = _detection_record(
        tmp_path, dataset_name, [{"id": 1, "bbox": [4, 6, 20, 16], "segmentation": [TRIANGLE]}]
    )
    out = mask_mapper(augmentations=RESIZE_FLIP, mask_format=mask_format)(record)
    inst = out["instances"]
    assert out["image"].shape == (3, 96, 128)
    assert inst.gt_boxes.tensor.tolist() == [[128 - 48, 12, 128 - 8, 44]]
    assert inst.gt_mask_valid.dtype == torch.bool and inst.gt_mask_valid.tolist() == [True]
    expected = _resized_flipped(TRIANGLE)  # computed by hand, independently of Detectron2
    if mask_format == "polygon":
        assert isinstance(inst.gt_masks, PolygonMasks)
        ((polygon,),) = inst.gt_masks.polygons
        np.testing.assert_allclose(polygon, expected)
    else:
        assert isinstance(inst.gt_masks, BitMasks)
        assert inst.gt_masks.tensor.shape == (1, 96, 128)
        assert inst.gt_masks.tensor.dtype == torch.bool
        assert _iou(inst.gt_masks.tensor[0], _rasterise([expected], 96, 128)) == 1.0
    # The flipped triangle: apex at x = 128 - 28 = 100, its base on the box's bottom edge.
    mask = _bitmasks(inst.gt_masks, (96, 128))[0]
    assert mask[43, 82:118].all() and not mask[43, :78].any() and not mask[43, 122:].any()
    assert mask[14, 100] and not mask[14, 90]


@pytest.mark.parametrize("compressed", [False, True])
def test_rle_through_resize_and_flip(tmp_path, dataset_name, mask_mapper, compressed):
    rle = _rle_of_rect(30, 10, 54, 40, compressed=compressed)
    record = _detection_record(
        tmp_path,
        dataset_name,
        [{"id": 2, "bbox": DOG_BOX, "category_id": 2, "segmentation": rle}],
    )
    inst = mask_mapper(augmentations=RESIZE_FLIP, mask_format="bitmask")(record)["instances"]
    # [30, 54) x [10, 40) scaled by 2 and flipped: x in [128 - 108, 128 - 60), y in [20, 80).
    expected = torch.zeros((96, 128), dtype=torch.bool)
    expected[20:80, 20:68] = True
    assert torch.equal(inst.gt_masks.tensor[0], expected)
    assert inst.gt_boxes.tensor.tolist() == [[20, 20, 68, 80]]


def test_rle_needs_bitmask_format(tmp_path, dataset_name, mask_mapper):
    rle = _rle_of_rect(30, 10, 54, 40)
    record = _detection_record(
        tmp_path, dataset_name, [{"id": 9, "bbox": DOG_BOX, "segmentation": rle}]
    )
    with pytest.raises(ValueError, match="annotation 9 has an RLE .*INPUT.MASK_FORMAT 'bitmask'"):
        mask_mapper(mask_format="polygon")(record)


def test_rle_of_another_size_is_named_by_the_mapper(tmp_path, dataset_name, mask_mapper):
    # A record built elsewhere (not checked by a glip_d2 loader): the image is 48x64.
    record = _detection_record(tmp_path, dataset_name, [{"id": 9, "bbox": DOG_BOX}])
    record["annotations"][0]["segmentation"] = _rle_of_rect(0, 0, 5, 5, height=40, width=64)
    with pytest.raises(ValueError, match=r"annotation 9 has an RLE .*\[40, 64\].*\[48, 64\]"):
        mask_mapper(mask_format="bitmask")(record)


ALIGNMENT = [
    {"id": 1, "bbox": [4, 6, 20, 16], "segmentation": [TRIANGLE]},
    {
        "id": 2,
        "bbox": [63.5, 10, 10, 10],
        "category_id": 2,
        "segmentation": [[63, 10, 64, 10, 64, 20]],
    },
    {"id": 3, "bbox": DOG_BOX, "category_id": 2},  # box-only
    {"id": 4, "bbox": [40, 2, 8, 6], "iscrowd": 1, "segmentation": [[40, 2, 48, 2, 48, 8]]},
    {"id": 5, "bbox": [44, 20, 10, 20], "segmentation": [[44, 20, 54, 20, 54, 40, 44, 40]]},
]


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_masks_stay_aligned_when_boxes_are_dropped(
    tmp_path, dataset_name, mask_mapper, mask_format
):
    # Annotation 2 is 0.5 px wide after clipping (the mapper drops it), 4 is crowd (ignored).
    record = _detection_record(tmp_path, dataset_name, ALIGNMENT)
    inst = mask_mapper(mask_format=mask_format)(record)["instances"]
    assert len(inst.gt_masks) == len(inst) == 3
    assert inst.gt_boxes.tensor.tolist() == [[4, 6, 24, 22], [30, 10, 54, 40], [44, 20, 54, 40]]
    assert inst.gt_classes.tolist() == [0, 1, 0]
    assert inst.gt_mask_valid.tolist() == [True, False, True]
    masks = _bitmasks(inst.gt_masks, (H, W))
    assert _iou(masks[0], _rasterise([TRIANGLE], H, W)) == 1.0
    assert not masks[1].any()  # the box-only placeholder
    assert masks[2].sum() == 200 and masks[2][20:40, 44:54].all()


def test_grounding_masks_stay_aligned(mdetr_files, mask_mapper):
    data = mdetr_data()
    data["annotations"][0]["segmentation"] = [TRIANGLE]
    data["annotations"][2]["segmentation"] = [[42, 20, 54, 20, 54, 40, 42, 40]]
    # A fourth box that the mapper drops (0.5 px wide after clipping), before the last one.
    data["annotations"].insert(
        2,
        {
            "id": 14,
            "image_id": 1,
            "bbox": [63.5, 1, 5, 5],
            "tokens_positive": [RED_CAT],
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[63, 1, 64, 1, 64, 6]],
        },
    )
    record = load_mdetr_grounding_json(*mdetr_files(data), "mdetr_masks")[0]
    assert [a["id"] for a in record["annotations"]] == [11, 12, 14, 13]
    out = mask_mapper(mask_format="polygon")(record)
    inst = out["instances"]
    assert out["caption"] == MDETR_CAPTION
    assert inst.gt_boxes.tensor.tolist() == [[4, 6, 24, 22], [30, 10, 40, 20], [42, 20, 54, 40]]
    assert inst.gt_prompt_entry.tolist() == [0, 1, 1]
    assert inst.gt_mask_valid.tolist() == [True, False, True]
    boxes = inst.gt_masks.get_bounding_boxes().tensor.tolist()
    assert boxes[0] == [4, 6, 24, 22] and boxes[2] == [42, 20, 54, 40]
    assert float(inst.gt_masks.area()[1]) == 0.0


def test_grounding_box_dropped_for_its_span_keeps_masks_aligned(mdetr_files, mask_mapper):
    data = mdetr_data()
    data["annotations"][0]["segmentation"] = [TRIANGLE]
    data["annotations"][2]["segmentation"] = [[42, 20, 54, 20, 54, 40, 42, 40]]
    data["annotations"].reverse()  # the dogs' boxes first
    record = load_mdetr_grounding_json(*mdetr_files(data), "mdetr_masks")[0]
    assert [a["id"] for a in record["annotations"]] == [13, 12, 11]
    # max_query_len 5: "[CLS] a red cat [SEP]" holds the red cat only; the dogs' boxes go.
    inst = mask_mapper(max_query_len=5)(record)["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[4, 6, 24, 22]]
    assert inst.gt_mask_valid.tolist() == [True]
    assert _iou(_bitmasks(inst.gt_masks, (H, W))[0], _rasterise([TRIANGLE], H, W)) == 1.0


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_box_only_annotations_modes(tmp_path, dataset_name, mask_mapper, mask_format):
    record = _detection_record(
        tmp_path, dataset_name, [{"id": 3, "bbox": DOG_BOX, "category_id": 2}]
    )
    skip = mask_mapper(mask_format=mask_format, augmentations=RESIZE_FLIP)(record)["instances"]
    assert skip.gt_mask_valid.tolist() == [False]
    assert len(skip.gt_masks) == 1 and not _bitmasks(skip.gt_masks, (96, 128)).any()
    box = mask_mapper(
        mask_format=mask_format, box_only_annotations="box", augmentations=RESIZE_FLIP
    )(record)["instances"]
    assert box.gt_mask_valid.tolist() == [True]
    (x1, y1, x2, y2) = box.gt_boxes.tensor[0].tolist()
    assert (x1, y1, x2, y2) == (20, 20, 68, 80)
    expected = torch.zeros((96, 128), dtype=torch.bool)
    expected[20:80, 20:68] = True
    assert torch.equal(_bitmasks(box.gt_masks, (96, 128))[0], expected)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_image_without_annotations(tmp_path, dataset_name, mask_mapper, mask_format):
    record = _detection_record(tmp_path, dataset_name, [])
    inst = mask_mapper(mask_format=mask_format)(record)["instances"]
    assert len(inst) == 0 and len(inst.gt_masks) == 0
    assert inst.gt_mask_valid.shape == (0,) and inst.gt_mask_valid.dtype == torch.bool
    if mask_format == "bitmask":
        assert inst.gt_masks.tensor.shape == (0, H, W)


def test_mask_on_false_changes_nothing(tmp_path, dataset_name, make_mapper):
    record = _detection_record(tmp_path, dataset_name, ALIGNMENT)
    without = copy.deepcopy(record)
    for a in without["annotations"]:
        a.pop("segmentation", None)
    outputs = []
    for r in (record, without):
        torch.manual_seed(0)
        np.random.seed(0)
        outputs.append(make_mapper(True, augmentations=RESIZE_FLIP)(r))
    a, b = outputs
    assert set(a) == set(b)
    assert not a["instances"].has("gt_masks") and not a["instances"].has("gt_mask_valid")
    assert a["instances"].get_fields().keys() == b["instances"].get_fields().keys()
    for key, value in a["instances"].get_fields().items():
        other = b["instances"].get(key)
        assert torch.equal(getattr(value, "tensor", value), getattr(other, "tensor", other))
    for key in ("image", "input_ids", "positive_map"):
        assert torch.equal(a[key], b[key])
    # At test time masks are never added, MASK_ON or not.
    test_out = make_mapper(False, mask_on=True)(record)
    assert "instances" not in test_out


def _cfg(tokenizer_path, **opts):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.INPUT.PROMPT.TOKENIZER = tokenizer_path
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_from_config(tmp_path, dataset_name, tiny_tokenizer_path):
    record = _detection_record(tmp_path, dataset_name, ALIGNMENT)
    cfg = _cfg(
        tiny_tokenizer_path,
        **{
            "MODEL.MASK_ON": True,
            "INPUT.MASK_FORMAT": "bitmask",
            "MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS": "box",
        },
    )
    inst = GroundingDatasetMapper(cfg, is_train=True)(record)["instances"]
    assert isinstance(inst.gt_masks, BitMasks) and inst.gt_masks.tensor.shape == (3, 96, 128)
    assert inst.gt_mask_valid.tolist() == [True, True, True]
    assert inst.gt_masks.tensor[1].sum() == 48 * 60  # the dog box, filled
    default = GroundingDatasetMapper(_cfg(tiny_tokenizer_path), is_train=True)(record)
    assert not default["instances"].has("gt_masks")


@pytest.mark.parametrize(
    "key, value",
    [("MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS", "boxes"), ("INPUT.MASK_FORMAT", "rle")],
)
def test_bad_mask_config_names_the_key(tiny_tokenizer_path, key, value):
    cfg = _cfg(tiny_tokenizer_path, **{"MODEL.MASK_ON": True, key: value})
    with pytest.raises(ValueError, match=f"{key}.*{value!r}"):
        GroundingDatasetMapper(cfg, is_train=True)


# ---------------------------------------------------------------------------- glip_shapes


def test_glip_shapes_polygons_cover_the_shapes(tmp_path):
    root = tmp_path / "shapes"
    generate_glip_shapes(str(root), num_train=8, num_val=4, seed=0)
    kinds = ("circle", "square", "triangle")
    ious = {k: [] for k in kinds}
    for split in ("train", "val"):
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        grounding = json.loads((root / "annotations" / f"grounding_{split}.json").read_text())
        assert [a["segmentation"] for a in grounding["annotations"]] == [
            a["segmentation"] for a in coco["annotations"]
        ]
        images = {img["id"]: img for img in coco["images"]}
        for ann in coco["annotations"]:
            img = images[ann["image_id"]]
            pixels = np.asarray(Image.open(root / split / img["file_name"]).convert("RGB"))
            x, y, s, _ = (int(v) for v in ann["bbox"])
            # Shapes are drawn without antialiasing in one colour and never overlap (4 px
            # apart); the noisy grey background never has that colour.
            inside = pixels[y : y + s, x : x + s].reshape(-1, 3)
            colours, counts = np.unique(inside, axis=0, return_counts=True)
            drawn = (pixels == colours[counts.argmax()]).all(axis=-1)
            assert not drawn[:, :x].any() and not drawn[:y].any()
            assert not drawn[:, x + s :].any() and not drawn[y + s :].any()
            (polygon,) = ann["segmentation"]
            kind = kinds[(ann["category_id"] - 1) % 3]
            assert len(polygon) == {"circle": 128, "square": 8, "triangle": 6}[kind]
            mask = _rasterise([polygon], img["height"], img["width"])
            ious[kind].append(_iou(mask, drawn))
            px = np.asarray(polygon).reshape(-1, 2)
            assert px[:, 0].min() >= x and px[:, 0].max() <= x + s
            assert px[:, 1].min() >= y and px[:, 1].max() <= y + s
    assert all(len(v) >= 3 for v in ious.values()), {k: len(v) for k, v in ious.items()}
    assert min(ious["square"]) == 1.0  # exactly the drawn pixels
    assert min(ious["triangle"]) >= 0.95 and min(ious["circle"]) >= 0.95, ious
