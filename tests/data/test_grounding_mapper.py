"""GroundingDatasetMapper outputs against hand-computed values, and its bad-input behaviour."""

import copy
import uuid

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from grounding_fixtures import MDETR_CAPTION, save_image
from PIL import Image

from glip_d2.config import add_glip_config
from glip_d2.data import GLIPResize, GroundingDatasetMapper, ImageReadError
from glip_d2.data.datasets import load_mdetr_grounding_json
from glip_d2.data.prompts import concept_id, normalize_concept


def _rows(positive_map):
    return [row.nonzero().flatten().tolist() for row in positive_map]


def _glip_cfg(tokenizer_path):
    cfg = get_cfg()
    add_glip_config(cfg)
    # Keys proposed for add_glip_config; set here until config.py has them.
    if "ON_BAD_IMAGE" not in cfg.INPUT:
        cfg.INPUT.ON_BAD_IMAGE = "error"
    if "BACKGROUND_NEGATIVE" not in cfg.INPUT.PROMPT:
        cfg.INPUT.PROMPT.BACKGROUND_NEGATIVE = False
    if "ON_BAD_SPAN" not in cfg.INPUT.PROMPT:
        cfg.INPUT.PROMPT.ON_BAD_SPAN = "repair"
    cfg.INPUT.PROMPT.TOKENIZER = tokenizer_path
    return cfg


def _grounding_dicts(mdetr_files, data=None):
    json_file, root = mdetr_files(data)
    return load_mdetr_grounding_json(json_file, root, "mdetr_test")


# ---------------------------------------------------------------------------- detection data


def test_from_config(tiny_tokenizer_path, toy_dataset):
    cfg = _glip_cfg(tiny_tokenizer_path)
    cfg.INPUT.MIN_SIZE_TRAIN = (96,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    mapper = GroundingDatasetMapper(cfg, is_train=True)
    out = mapper(DatasetCatalog.get(toy_dataset)[0])
    assert out["image"].shape == (3, 96, 128)  # 48x64 -> short side 96
    assert out["input_ids"].shape == (256,)
    assert set(out["instances"].gt_classes.tolist()) == {0, 1}
    test_mapper = GroundingDatasetMapper(cfg, is_train=False)
    assert test_mapper(DatasetCatalog.get(toy_dataset)[1])["image"].shape == (
        3,
        800 * 56 // 40,
        800,
    )


def test_detection_training_output(toy_dataset, make_mapper, tiny_tokenizer):
    record = DatasetCatalog.get(toy_dataset)[0]
    out = make_mapper(True)(record)
    assert out["file_name"] == record["file_name"]
    assert (out["image_id"], out["height"], out["width"]) == (1, 48, 64)
    assert "annotations" not in out
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 64)
    # BGR: the cat patch is RGB (200, 40, 40).
    assert image[:, 10, 10].tolist() == [40, 40, 200]
    assert image[:, 0, 0].tolist() == [128, 128, 128]

    assert out["caption"] == "cat. dog"
    tokens = ["[CLS]", "cat", ".", "dog", "[SEP]"]
    expected_ids = tiny_tokenizer.convert_tokens_to_ids(tokens) + [0] * 251
    assert out["input_ids"].tolist() == expected_ids
    assert out["attention_mask"].tolist() == [1] * 5 + [0] * 251
    assert out["positive_map"].dtype == torch.bool and out["positive_map"].shape == (2, 256)
    assert _rows(out["positive_map"]) == [[1], [3]]
    assert out["prompt_class_ids"].tolist() == [0, 1]
    assert out["phrases"] == ["cat", "dog"]

    inst = out["instances"]
    assert inst.image_size == (48, 64)
    # xywh (4, 6, 20, 16) and (30, 10, 24, 30) in Detectron2's continuous XYXY.
    assert inst.gt_boxes.tensor.tolist() == [[4, 6, 24, 22], [30, 10, 54, 40]]
    assert inst.gt_classes.tolist() == [0, 1]
    assert inst.gt_positive_map.dtype == torch.bool
    assert _rows(inst.gt_positive_map) == [[1], [3]]
    assert record["annotations"][0]["bbox"] == [4.0, 6.0, 20.0, 16.0]  # input untouched


def test_detection_resize_and_flip(toy_dataset, make_mapper):
    record = DatasetCatalog.get(toy_dataset)[0]
    mapper = make_mapper(True, augmentations=[GLIPResize(96, 1000), T.RandomFlip(prob=1.0)])
    out = mapper(record)
    assert out["image"].shape == (3, 96, 128)
    assert (out["height"], out["width"]) == (48, 64)
    # Scale 2, then x -> 128 - x.
    expected = [[128 - 48, 12, 128 - 8, 44], [128 - 108, 20, 128 - 60, 80]]
    assert out["instances"].gt_boxes.tensor.tolist() == expected
    assert out["caption"] == "cat. dog"  # the caption is not edited on flip


def test_detection_test_output(toy_dataset, make_mapper):
    record = DatasetCatalog.get(toy_dataset)[1]
    out = make_mapper(False, augmentations=[GLIPResize(80, 1333)])
    out = out(record)
    assert "instances" not in out and "annotations" not in out
    assert out["image"].shape == (3, 112, 80)  # 56x40 -> short side 80, int(80 * 56 / 40)
    assert out["caption"] == "cat. dog"
    assert _rows(out["positive_map"]) == [[1], [3]]
    assert out["prompt_class_ids"].tolist() == [0, 1]
    assert "prompt_chunks" not in out


def test_detection_test_chunks(toy_dataset, make_mapper):
    DatasetCatalog.get(toy_dataset)
    out = make_mapper(False, chunk_size=1)(DatasetCatalog.get(toy_dataset)[0])
    chunks = out["prompt_chunks"]
    assert [c["caption"] for c in chunks] == ["cat", "dog"]
    assert [c["prompt_class_ids"].tolist() for c in chunks] == [[0], [1]]
    assert [_rows(c["positive_map"]) for c in chunks] == [[[1]], [[1]]]
    assert out["caption"] == "cat" and out["prompt_class_ids"].tolist() == [0]


def test_detection_sampled_prompt_keeps_boxes_consistent(toy_dataset, make_mapper):
    names = [f"thing {i}" for i in range(300)]
    record = copy.deepcopy(DatasetCatalog.get(toy_dataset)[0])
    name = f"glip_test_big_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=names)
    record["dataset_name"] = name
    record["annotations"][1]["category_id"] = 250
    try:
        mapper = make_mapper(True, random_sample_neg=85, shuffle=True)
        for _ in range(5):
            out = mapper(record)
            ids = out["prompt_class_ids"].tolist()
            assert {0, 250} <= set(ids)
            assert out["attention_mask"].sum() <= 256
            inst = out["instances"]
            for cls, row in zip(inst.gt_classes.tolist(), inst.gt_positive_map):
                assert torch.equal(row, out["positive_map"][ids.index(cls)])
            assert out["phrases"][ids.index(250)] == "thing 250"
    finally:
        MetadataCatalog.remove(name)


def test_image_without_boxes(toy_dataset, make_mapper):
    record = dict(DatasetCatalog.get(toy_dataset)[1], annotations=[])
    out = make_mapper(True)(record)
    assert len(out["instances"]) == 0
    assert out["instances"].gt_positive_map.shape == (0, 256)
    assert out["instances"].gt_boxes.tensor.shape == (0, 4)
    assert out["caption"] == "cat. dog"


def test_boxes_clipped_and_degenerate_dropped(toy_dataset, make_mapper):
    record = copy.deepcopy(DatasetCatalog.get(toy_dataset)[0])  # 64x48
    base = {"bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0, "category_id": 0}
    record["annotations"] = [
        dict(base, id=1, bbox=[-10.0, -5.0, 30.0, 20.0]),  # clipped to (0, 0, 20, 15)
        dict(base, id=2, bbox=[100.0, 100.0, 10.0, 10.0]),  # outside: empty after clipping
        dict(base, id=3, bbox=[10.0, 10.0, 0.5, 20.0]),  # degenerate
        dict(base, id=4, bbox=[60.0, 40.0, 20.0, 20.0], category_id=1),  # clipped to 4x8
        dict(base, id=5, bbox=[5.0, 5.0, 5.0, 5.0], iscrowd=1),  # crowd: ignored
    ]
    inst = make_mapper(True)(record)["instances"]
    assert inst.gt_boxes.tensor.tolist() == [[0, 0, 20, 15], [60, 40, 64, 48]]
    assert inst.gt_classes.tolist() == [0, 1]


# ---------------------------------------------------------------------------- grounding data


def test_grounding_training_output(mdetr_files, make_mapper, tiny_tokenizer):
    record = _grounding_dicts(mdetr_files)[0]
    out = make_mapper(True)(record)
    assert out["caption"] == MDETR_CAPTION
    tokens = ["[CLS]", "a", "red", "cat", "next", "to", "two", "small", "dogs", ".", "[SEP]"]
    assert out["input_ids"][:11].tolist() == tiny_tokenizer.convert_tokens_to_ids(tokens)
    assert out["attention_mask"].sum() == 11
    assert out["phrases"] == ["red cat", "small dogs"]
    assert _rows(out["positive_map"]) == [[2, 3], [7, 8]]
    assert out["prompt_class_ids"].tolist() == [0, 1]
    inst = out["instances"]
    assert inst.gt_classes.tolist() == [0, 1, 1]
    assert _rows(inst.gt_positive_map) == [[2, 3], [7, 8], [7, 8]]
    assert inst.gt_boxes.tensor.tolist() == [[4, 6, 24, 22], [30, 10, 40, 20], [42, 20, 54, 40]]
    assert out["sentence_id"] == 0 and out["original_img_id"] == 100


def test_grounding_test_output_uses_eval_phrases(mdetr_files, make_mapper):
    data_dicts = _grounding_dicts(mdetr_files)
    record = copy.deepcopy(data_dicts[0])
    record["tokens_positive_eval"] = [[[22, 32]], [[2, 5]], [[2, 9]]]
    out = make_mapper(False)(record)
    assert "instances" not in out
    assert out["phrases"] == ["small dogs", "red", "red cat"]
    assert _rows(out["positive_map"]) == [[7, 8], [2], [2, 3]]
    assert out["prompt_class_ids"].tolist() == [0, 1, 2]
    assert out["tokens_positive_eval"] == record["tokens_positive_eval"]
    empty = make_mapper(False)(data_dicts[1])
    assert empty["positive_map"].shape == (0, 256) and empty["phrases"] == []


def test_grounding_union_of_spans(mdetr_files, make_mapper):
    record = copy.deepcopy(_grounding_dicts(mdetr_files)[0])
    record["annotations"] = record["annotations"][:1]
    record["annotations"][0]["tokens_positive"] = [[2, 5], [28, 32]]  # "red" and "dogs"
    out = make_mapper(True)(record)
    assert _rows(out["instances"].gt_positive_map) == [[2, 8]]
    assert out["phrases"] == ["red dogs"]


def test_grounding_image_without_boxes(mdetr_files, make_mapper):
    out = make_mapper(True)(_grounding_dicts(mdetr_files)[1])
    assert len(out["instances"]) == 0
    assert out["positive_map"].shape == (0, 256)
    assert out["caption"] == "a photo of nothing in particular."


def test_grounding_degenerate_box_dropped_with_its_span(mdetr_files, make_mapper):
    record = copy.deepcopy(_grounding_dicts(mdetr_files)[0])
    record["annotations"][0]["bbox"] = [70.0, 6.0, 20.0, 16.0]  # right of the 64 px image
    out = make_mapper(True)(record)
    assert out["phrases"] == ["small dogs"]
    assert out["caption"] == MDETR_CAPTION
    assert out["instances"].gt_classes.tolist() == [0, 0]
    assert _rows(out["instances"].gt_positive_map) == [[7, 8], [7, 8]]


def test_span_not_on_token_boundaries_is_repaired(mdetr_files, make_mapper, data_log):
    record = copy.deepcopy(_grounding_dicts(mdetr_files)[0])
    record["annotations"][0]["tokens_positive"] = [[3, 8]]  # "ed ca": inside "red" and "cat"
    out = make_mapper(True)(record)
    assert _rows(out["instances"].gt_positive_map)[0] == [2, 3]
    assert any("annotation 11" in m and "token boundaries" in m for m in data_log)
    with pytest.raises(ValueError, match="annotation 11.*token boundaries"):
        make_mapper(True, on_bad_span="error")(record)


def test_span_outside_caption_names_the_annotation(mdetr_files, make_mapper):
    record = copy.deepcopy(_grounding_dicts(mdetr_files)[0])
    record["annotations"][2]["tokens_positive"] = [[30, 60]]
    with pytest.raises(ValueError, match=r"annotation 13.*\[30, 60\)"):
        make_mapper(True)(record)


def test_empty_caption_is_an_error(mdetr_files, make_mapper):
    record = dict(_grounding_dicts(mdetr_files)[1], caption="  ")
    with pytest.raises(ValueError, match="empty caption"):
        make_mapper(True)(record)


def test_empty_category_list_is_an_error(toy_dataset, make_mapper):
    record = dict(DatasetCatalog.get(toy_dataset)[0])
    name = f"glip_test_empty_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=[])
    record["dataset_name"] = name
    try:
        with pytest.raises(ValueError, match="empty category list"):
            make_mapper(False)(record)
    finally:
        MetadataCatalog.remove(name)
    with pytest.raises(ValueError, match="neither 'caption' nor 'dataset_name'"):
        make_mapper(True)({k: v for k, v in record.items() if k != "dataset_name"})


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "mode, pixel, bgr",
    [
        ("L", 77, [77, 77, 77]),
        ("RGBA", (10, 20, 30, 0), [30, 20, 10]),
        ("RGB", (10, 20, 30), [30, 20, 10]),
        ("P", 1, [30, 20, 10]),
    ],
)
def test_image_modes(tmp_path, make_mapper, mode, pixel, bgr):
    image = Image.new(mode, (12, 9), pixel)
    if mode == "P":
        image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    path = tmp_path / f"image_{mode}.png"
    image.save(path)
    record = {"file_name": str(path), "image_id": 1, "height": 9, "width": 12, "caption": "a cat"}
    out = make_mapper(False)(record)
    assert out["image"].shape == (3, 9, 12)
    assert out["image"][:, 4, 5].tolist() == bgr


def test_exif_orientation(tmp_path, make_mapper):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    pixels[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    record = {"file_name": str(path), "image_id": 1, "height": 40, "width": 20, "caption": "a cat"}
    out = make_mapper(False, image_format="RGB")(record)
    assert out["image"].shape == (3, 40, 20)
    # After the rotation the red half is on top.
    assert out["image"][0, 5, 10] > 200 and out["image"][0, 35, 10] < 50


def _bad_record(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    elif kind == "truncated":
        save_image(tmp_path / "full.jpg", 64, 48)
        path.write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    elif kind == "wrong_size":
        save_image(path, 30, 30)
    return {"file_name": str(path), "image_id": 9, "height": 48, "width": 64, "caption": "a cat"}


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "wrong_size"])
def test_bad_image_error_names_the_file(tmp_path, make_mapper, kind):
    record = _bad_record(tmp_path, kind)
    for is_train in (True, False):
        with pytest.raises(ImageReadError, match=f"{kind}.jpg"):
            make_mapper(is_train)(record)
    # Skipping is for training only: at test time Detectron2 would substitute another image.
    with pytest.raises(ImageReadError, match=f"{kind}.jpg"):
        make_mapper(False, on_bad_image="skip")(record)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "wrong_size"])
def test_bad_image_skip_logs_the_file(tmp_path, make_mapper, data_log, toy_dataset, kind):
    bad = _bad_record(tmp_path, kind)
    mapper = make_mapper(True, on_bad_image="skip")
    blank = mapper(bad)  # nothing mapped yet to stand in for it: a grey image, no boxes
    assert blank["image"].shape == (3, 48, 64) and bool((blank["image"] == 128).all())
    assert len(blank["instances"]) == 0 and blank["caption"] == "a cat"
    assert any(f"{kind}.jpg" in m and "Skipped" in m for m in data_log)
    good = DatasetCatalog.get(toy_dataset)[1]
    assert mapper(good)["image_id"] == 2
    out = mapper(bad)  # the last good record stands in
    assert out["image_id"] == 2 and out["image"].shape == (3, 56, 40)
    assert sum(f"{kind}.jpg" in m for m in data_log) == 2


def test_bad_image_skip_in_a_data_loader(tmp_path, make_mapper, toy_dataset):
    from detectron2.data import build_detection_train_loader

    dicts = DatasetCatalog.get(toy_dataset)
    bad = dict(dicts[0], file_name=str(tmp_path / "missing.png"), image_id=3)
    loader = build_detection_train_loader(
        dicts + [bad] * 8,
        mapper=make_mapper(True, on_bad_image="skip"),
        total_batch_size=4,
        num_workers=0,
        aspect_ratio_grouping=False,
    )
    seen = set()
    for _, batch in zip(range(3), loader):
        assert len(batch) == 4
        for x in batch:
            seen.add(x["image_id"])
            if x["image_id"] == 3:  # before any good image: the grey stand-in, no boxes
                assert len(x["instances"]) == 0 and bool((x["image"] == 128).all())
    assert seen & {1, 2}


def test_mapper_rejects_bad_policies(tiny_tokenizer):
    with pytest.raises(ValueError, match="on_bad_image"):
        GroundingDatasetMapper(
            True, augmentations=[], image_format="BGR", tokenizer=tiny_tokenizer, on_bad_image="x"
        )


# ---------------------------------------------------------------------------- GLIPv2 fields


def _tokens(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens(ids.tolist())


def _visit(record, visit):
    return dict(record, stream_visit=visit)


def test_detection_concepts_and_gt_prompt_entry(toy_dataset, make_mapper):
    record = DatasetCatalog.get(toy_dataset)[0]
    mapper = make_mapper(True, shuffle=True)
    orders = set()
    for _ in range(8):
        out = mapper(record)
        phrases = out["phrases"]
        orders.add(tuple(phrases))
        assert out["prompt_concepts"].dtype == torch.int64
        assert out["prompt_concepts"].tolist() == [concept_id(p) for p in phrases]
        assert out["prompt_is_phrase"].tolist() == [False] * len(phrases)
        inst = out["instances"]
        entry = inst.gt_prompt_entry
        assert entry.dtype == torch.int64
        # Each box points at its category's row, whatever the shuffled prompt order.
        assert [phrases[k] for k in entry.tolist()] == ["cat", "dog"]
        assert out["prompt_class_ids"][entry].tolist() == inst.gt_classes.tolist()
        assert torch.equal(out["positive_map"][entry], inst.gt_positive_map)
    assert len(orders) == 2  # both orders were seen, so the rows were not the class ids


def test_grounding_concepts_and_gt_prompt_entry(mdetr_files, make_mapper):
    out = make_mapper(True)(_grounding_dicts(mdetr_files)[0])
    assert out["prompt_is_phrase"].tolist() == [True, True]
    assert out["prompt_concepts"].tolist() == [concept_id("red cat"), concept_id("small dogs")]
    inst = out["instances"]
    assert inst.gt_prompt_entry.tolist() == [0, 1, 1]
    assert torch.equal(out["positive_map"][inst.gt_prompt_entry], inst.gt_positive_map)


def test_concepts_match_across_datasets_and_captions(
    toy_dataset, mdetr_files, make_mapper, dataset_name
):
    assert normalize_concept("  Hot \t Dog. ") == "hot dog"
    assert concept_id("Hot  dog") == concept_id("hot dog.") != concept_id("hotdog")
    assert 0 <= concept_id("person") < 2**62
    mapper = make_mapper(True)
    toy = mapper(DatasetCatalog.get(toy_dataset)[0])
    # A second detection set naming "Dog" (another case) at another class index.
    MetadataCatalog.get(dataset_name).set(thing_classes=["bird", "Dog"])
    other = copy.deepcopy(DatasetCatalog.get(toy_dataset)[1])
    other["dataset_name"] = dataset_name
    other["annotations"][0]["category_id"] = 1
    other_out = mapper(other)
    assert other_out["phrases"] == ["bird", "Dog"]
    assert other_out["prompt_concepts"][1] == toy["prompt_concepts"][1]  # "Dog" == "dog"
    assert other_out["prompt_concepts"][0] not in toy["prompt_concepts"].tolist()
    # The phrase "dogs" of two different captions, and "cat" in a caption vs the category.
    record = _grounding_dicts(mdetr_files)[0]
    first = dict(record, annotations=[dict(record["annotations"][1], tokens_positive=[[28, 32]])])
    second = dict(
        record,
        caption="three dogs, one cat",
        annotations=[
            dict(record["annotations"][1], tokens_positive=[[6, 10]]),
            dict(record["annotations"][0], tokens_positive=[[16, 19]]),
        ],
    )
    a, b = mapper(first), mapper(second)
    assert a["phrases"] == ["dogs"] and b["phrases"] == ["dogs", "cat"]
    assert a["prompt_concepts"][0] == b["prompt_concepts"][0]
    assert b["prompt_concepts"][1] == toy["prompt_concepts"][0]  # phrase "cat" == "cat"
    assert b["prompt_concepts"][0] != b["prompt_concepts"][1]


def test_mlm_scores_only_positive_category_names(toy_dataset, make_mapper, tiny_tokenizer):
    record = _visit(DatasetCatalog.get(toy_dataset)[1], 0)  # one "dog" box; prompt "cat. dog"
    out = make_mapper(True, mlm=True, mlm_mask_prob=1.0)(record)  # every real token selected
    assert out["greenlight_map"].dtype == torch.int8
    assert out["greenlight_map"][:6].tolist() == [0, 0, 0, 1, 0, -1]  # [CLS] cat . dog [SEP]
    assert (out["greenlight_map"][5:] == -1).all()
    labels = out["mlm_labels"]
    assert labels.dtype == torch.int64 and out["mlm_input_ids"].dtype == torch.int64
    assert (labels != -100).nonzero().flatten().tolist() == [3]
    assert labels[3] == tiny_tokenizer.convert_tokens_to_ids("dog")
    assert torch.equal(out["mlm_input_ids"][5:], out["input_ids"][5:])  # [PAD] untouched
    assert out["input_ids"][:5].tolist() == tiny_tokenizer.convert_tokens_to_ids(
        ["[CLS]", "cat", ".", "dog", "[SEP]"]
    )  # input_ids stay the clean prompt


def test_mlm_scores_the_whole_caption(mdetr_files, make_mapper, tiny_tokenizer):
    record = _visit(_grounding_dicts(mdetr_files)[0], 0)
    out = make_mapper(True, mlm=True, mlm_mask_prob=1.0)(record)
    n = int(out["attention_mask"].sum())  # [CLS] + 9 caption tokens + [SEP]
    assert out["greenlight_map"][:n].tolist() == [0] + [1] * (n - 2) + [0]
    scored = (out["mlm_labels"] != -100).nonzero().flatten().tolist()
    assert scored == list(range(1, n - 1))
    assert torch.equal(out["mlm_labels"][1 : n - 1], out["input_ids"][1 : n - 1])
    # At the default rate, over many passes, still only caption tokens are scored.
    mapper = make_mapper(True, mlm=True)
    for visit in range(30):
        labels = mapper(_visit(record, visit))["mlm_labels"]
        assert set((labels != -100).nonzero().flatten().tolist()) <= set(scored)


def test_mlm_masks_are_seeded_per_image_and_pass(mdetr_files, make_mapper):
    record = _grounding_dicts(mdetr_files)[0]

    def masks(mapper, visit, rec=record):
        out = mapper(_visit(rec, visit))
        return out["mlm_input_ids"], out["mlm_labels"]

    mapper = make_mapper(True, mlm=True, mlm_mask_prob=0.5, mlm_seed=3)
    first = [masks(mapper, v) for v in range(4)]
    again = [masks(make_mapper(True, mlm=True, mlm_mask_prob=0.5, mlm_seed=3), v) for v in range(4)]
    for (ids, labels), (ids2, labels2) in zip(first, again):
        assert torch.equal(ids, ids2) and torch.equal(labels, labels2)
    assert len({tuple(labels.tolist()) for _, labels in first}) > 1  # passes differ
    other_seed = make_mapper(True, mlm=True, mlm_mask_prob=0.5, mlm_seed=4)
    assert any(not torch.equal(masks(other_seed, v)[1], first[v][1]) for v in range(4))
    other_image = dict(record, image_id=record["image_id"] + 1)
    assert any(not torch.equal(masks(mapper, v, other_image)[1], first[v][1]) for v in range(4))


def test_evaluation_is_never_masked(toy_dataset, mdetr_files, make_mapper, tiny_tokenizer_path):
    mlm_fields = {"mlm_input_ids", "mlm_labels", "greenlight_map"}
    for record in (DatasetCatalog.get(toy_dataset)[0], _grounding_dicts(mdetr_files)[0]):
        train = make_mapper(True)(record)
        test = make_mapper(False, mlm=True, mlm_mask_prob=1.0)(_visit(record, 0))
        assert not mlm_fields & set(test)
        assert torch.equal(test["input_ids"], train["input_ids"])
        assert not mlm_fields & set(train)  # MLM off in training: no fields either
    cfg = _glip_cfg(tiny_tokenizer_path)
    cfg.MODEL.GLIPV2.MLM.WEIGHT = 1.0
    cfg.MODEL.GLIPV2.MLM.MASK_PROB = 0.3
    cfg.SEED = 7
    train_mapper = GroundingDatasetMapper(cfg, is_train=True)
    assert (train_mapper.mlm, train_mapper.mlm_mask_prob, train_mapper.mlm_seed) == (True, 0.3, 7)
    assert GroundingDatasetMapper(cfg, is_train=False).mlm is False
    cfg.MODEL.GLIPV2.MLM.WEIGHT = 0.0
    assert GroundingDatasetMapper(cfg, is_train=True).mlm is False


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mlm_masks_through_the_loader_are_worker_and_resume_independent(
    toy_dataset, make_mapper, num_workers
):
    from detectron2.data.samplers import TrainingSampler

    from glip_d2.data.train_loader import build_resumable_train_loader

    records = DatasetCatalog.get(toy_dataset)

    def run(workers, start=0, batches=6):
        loader = build_resumable_train_loader(
            records,
            mapper=make_mapper(True, mlm=True, mlm_mask_prob=0.5),
            sampler=TrainingSampler(len(records), seed=3),
            total_batch_size=2,
            aspect_ratio_grouping=False,
            num_workers=workers,
        )
        loader.start_at(start)
        it = iter(loader)
        return [
            [(d["image_id"], d["stream_visit"], d["mlm_labels"].tolist()) for d in next(it)]
            for _ in range(batches - start)
        ]

    reference = run(0)
    # One process, a plain TrainingSampler: the draw number is the epoch.
    assert [sorted((i, v) for i, v, _ in batch) for batch in reference] == [
        [(1, e), (2, e)] for e in range(6)
    ]
    assert len({tuple(m) for i, _, m in sum(reference, []) if i == 1}) > 1  # epochs differ
    # Workers batch other stream positions together (Detectron2), but each (image, pass) is
    # masked the same; a resumed run continues exactly.
    full = run(num_workers)
    assert {(i, v): m for i, v, m in sum(full, [])} == {(i, v): m for i, v, m in sum(reference, [])}
    assert run(num_workers, start=4) == full[4:]
