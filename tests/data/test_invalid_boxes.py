"""Invalid boxes in COCO- and MDETR-format sets: dropped or clipped, reported once at WARNING
with their ids; a training set left with no box is an error; derived evaluation phrases."""

import json

import pytest
from detectron2.data import DatasetCatalog
from grounding_fixtures import RED_CAT, SMALL_DOGS, mdetr_data

from glip_d2.data import load_coco_grounding_json, load_mdetr_grounding_json
from glip_d2.data.annotation_checks import CLIPPED, check_box, check_training_records
from glip_d2.data.datasets import register_coco_grounding

NAN, INF = float("nan"), float("inf")

# Image 1 is 64x48, image 2 is 40x56.
IMAGES = [
    {"id": 1, "file_name": "a.png", "height": 48, "width": 64},
    {"id": 2, "file_name": "b.png", "height": 56, "width": 40},
]
BOXES = {
    10: (1, [4.0, 6.0, 20.0, 16.0]),  # valid
    11: (1, [NAN, 6.0, 20.0, 16.0]),  # dropped: NaN
    12: (1, [4.0, 6.0, 0.0, 16.0]),  # dropped: zero width
    13: (2, [4.0, 6.0, 10.0, -3.0]),  # dropped: negative height
    14: (2, [50.0, 6.0, 10.0, 10.0]),  # dropped: right of the 40-px-wide image
    15: (2, [-5.0, 50.0, 20.0, 20.0]),  # repaired: clipped to [0, 50, 15, 6]
    16: (1, [4.0, 6.0, INF, 16.0]),  # dropped: infinite
    17: (2, [8.0, 8.0, 20.0, 30.0]),  # valid
    18: (1, [1.0, 1.0, 2.0, NAN]),  # dropped: NaN (the 6th: counted, not named)
}


def _coco(path, boxes=BOXES):
    anns = [
        {"id": i, "image_id": img, "category_id": 1, "bbox": box, "iscrowd": 0}
        for i, (img, box) in boxes.items()
    ]
    data = {"images": IMAGES, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    path.write_text(json.dumps(data))  # Python's json writes NaN and Infinity literals
    return str(path)


def test_check_box_rule():
    assert check_box([1, 2, 3, 4], 48, 64) == ([1.0, 2.0, 3.0, 4.0], None)
    assert check_box([1, 2, 3, 4]).problem is None  # no image size: nothing to clip
    assert check_box([NAN, 2, 3, 4], 48, 64).bbox is None
    assert check_box([1, 2, 0, 4], 48, 64).bbox is None
    assert check_box([1, 70, 3, 4], 48, 64).bbox is None  # below the image
    assert check_box([-1, -3, 3, 4], 48, 64) == ([0.0, 0.0, 2.0, 1.0], CLIPPED)
    assert check_box([60, 40, 10, 10], 48, 64).bbox == [60.0, 40.0, 4.0, 8.0]
    assert check_box([60, 40, 10, 10], None, None).bbox == [60.0, 40.0, 10.0, 10.0]


def test_coco_loader_drops_clips_and_warns_once(tmp_path, dataset_name, data_log):
    json_file = _coco(tmp_path / "bad.json")
    records = load_coco_grounding_json(json_file, str(tmp_path), dataset_name)
    kept = {a["id"]: a["bbox"] for r in records for a in r["annotations"]}
    assert kept == {10: [4.0, 6.0, 20.0, 16.0], 15: [0.0, 50.0, 15.0, 6.0], 17: BOXES[17][1]}

    assert len(data_log) == 1, data_log
    message = data_log[0]
    assert dataset_name in message and json_file in message
    assert (
        "7 of 9 annotations have invalid boxes: dropped 6 (" in message
        and "repaired 1 (" in message
    )
    # The first five problems by annotation and image id; the sixth dropped one is not named.
    for ann_id, image_id in ((11, 1), (12, 1), (13, 2), (14, 2), (15, 2)):
        assert f"annotation {ann_id} of image {image_id}" in message
    assert "annotation 18 " not in message

    # Loaded again (each evaluation does): not reported again.
    load_coco_grounding_json(json_file, str(tmp_path), dataset_name)
    assert len(data_log) == 1


def test_clean_set_logs_nothing(toy_dataset, data_log):
    DatasetCatalog.get(toy_dataset)
    assert data_log == []


def test_mdetr_loader_drops_a_nan_box_with_its_spans(mdetr_files, dataset_name, data_log):
    data = mdetr_data()
    data["annotations"][1]["bbox"] = [NAN, 10, 10, 10]  # annotation 12, one of the two dogs
    data["annotations"][2]["bbox"] = [42, 20, 30, 40]  # annotation 13, past the 64x48 image
    json_file, root = mdetr_files(data)
    records = load_mdetr_grounding_json(json_file, root, dataset_name)
    anns = records[0]["annotations"]
    assert [a["id"] for a in anns] == [11, 13]
    assert anns[1]["bbox"] == [42.0, 20.0, 22.0, 28.0]
    assert anns[1]["tokens_positive"] == [SMALL_DOGS]
    assert len(data_log) == 1
    assert dataset_name in data_log[0]
    assert "annotation 12 of image 1 (NaN or infinite coordinate)" in data_log[0]
    assert "annotation 13 of image 1 (partly outside the image (clipped))" in data_log[0]


def test_mdetr_eval_phrases_derived_when_absent(mdetr_files, make_mapper, dataset_name, info_log):
    data = mdetr_data()
    del data["images"][0]["tokens_positive_eval"]
    # Annotations out of caption order: the phrases still follow the caption.
    data["annotations"] = data["annotations"][::-1]
    json_file, root = mdetr_files(data)
    records = load_mdetr_grounding_json(json_file, root, dataset_name)
    assert records[0]["tokens_positive_eval"] == [[RED_CAT], [SMALL_DOGS]]
    assert records[1]["tokens_positive_eval"] == []  # given in the json (empty)
    said = [m for level, m in info_log if "tokens_positive_eval" in m]
    assert len(said) == 1 and dataset_name in said[0] and "1 of 2 images" in said[0]
    # The test-time prompt has exactly these phrases, in this order.
    out = make_mapper(is_train=False)(records[0])
    assert out["phrases"] == ["red cat", "small dogs"]
    load_mdetr_grounding_json(json_file, root, dataset_name)
    assert len([m for _, m in info_log if "tokens_positive_eval" in m]) == 1


# ---------------------------------------------------------------------------- training check


def test_training_set_of_nan_boxes_is_an_error(tmp_path, dataset_name):
    nan_boxes = {i: (img, [NAN, NAN, NAN, NAN]) for i, (img, _) in BOXES.items()}
    json_file = _coco(tmp_path / "nan.json", nan_boxes)
    register_coco_grounding(dataset_name, {}, json_file, str(tmp_path))
    records = DatasetCatalog.get(dataset_name)
    assert all(r["annotations"] == [] for r in records)
    with pytest.raises(
        ValueError,
        match=rf"'{dataset_name}'.*when loading, 9 of 9 annotations have invalid boxes: dropped 9",
    ):
        check_training_records(records, dataset_name)
    # Filtered first (Detectron2's filter_empty): still the same error.
    with pytest.raises(
        ValueError, match="when loading, 9 of 9 annotations have invalid boxes: dropped 9"
    ):
        check_training_records([], dataset_name)


def test_training_set_with_one_valid_box_passes(tmp_path, dataset_name):
    json_file = _coco(tmp_path / "bad.json")
    check_training_records(
        load_coco_grounding_json(json_file, str(tmp_path), dataset_name), dataset_name
    )


def test_training_records_of_another_loader_are_checked():
    def record(bbox, **ann):
        return {
            "image_id": 5,
            "height": 48,
            "width": 64,
            "annotations": [{"id": 7, "bbox": bbox, "bbox_mode": 1, **ann}],
        }

    with pytest.raises(
        ValueError, match=r"'own'.*1 of 1 annotations have invalid boxes.*annotation 7 of image 5"
    ):
        check_training_records([record([NAN, 0, 10, 10])], "own")
    with pytest.raises(ValueError, match="1 crowd"):
        check_training_records([record([0, 0, 10, 10], iscrowd=1)], "own")
    with pytest.raises(ValueError, match="at most 1 px"):
        check_training_records([record([0, 0, 1, 10])], "own")
    check_training_records([record([0, 0, 10, 10])], "own")
    # An XYXY_ABS (bbox_mode 0) box is converted first: [2, 2, 3, 12] is 1 px wide.
    with pytest.raises(ValueError, match="at most 1 px"):
        check_training_records([record([2, 2, 3, 12], bbox_mode=0)], "own")


def test_trainer_rejects_a_training_set_without_valid_boxes(tmp_path, dataset_name):
    """``GLIPTrainer.build_train_loader`` stops on a training set whose boxes are all NaN."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config
    from glip_d2.engine import GLIPTrainer

    nan_boxes = {i: (img, [NAN, 1.0, 2.0, 3.0]) for i, (img, _) in BOXES.items()}
    register_coco_grounding(
        dataset_name, {}, _coco(tmp_path / "nan.json", nan_boxes), str(tmp_path)
    )
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    with pytest.raises(ValueError, match=rf"Training set '{dataset_name}' has no valid box"):
        GLIPTrainer.build_train_loader(cfg)
