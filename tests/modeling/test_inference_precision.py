"""TEST.PRECISION: fp16 / bf16 autocast inference against fp32, and the detection comparison
that reports the difference."""

import pytest
import torch
from synthetic_inputs import random_prompt_input, tiny_model

from glip_d2.utils.detection_diff import compare_detections


def _model(precision, device="cpu"):
    # random weights: INFERENCE_TH 0 keeps the top 100 anyway
    return tiny_model(
        **{"MODEL.DEVICE": device, "MODEL.ATSS.INFERENCE_TH": 0.0, "TEST.PRECISION": precision}
    )


def _diff(a, b):
    return compare_detections(
        a.pred_boxes.tensor,
        a.scores,
        a.pred_classes,
        b.pred_boxes.tensor,
        b.scores,
        b.pred_classes,
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_inference_stays_close_to_fp32(precision):
    ref = _model("fp32")
    low = _model(precision)
    low.load_state_dict(ref.state_dict())
    # Two prompts of different lengths batched (padding) and an image of another size.
    batch = [random_prompt_input(4, 1, 192, 256), random_prompt_input(2, 2, 192, 256)]
    with torch.no_grad():
        expected = [x["instances"] for x in ref(batch)]
        got = [x["instances"] for x in low(batch)]
    for a, b in zip(expected, got):
        assert len(b) == len(a) == 100
        # Box decoding and NMS run in fp32 whatever the precision.
        assert b.scores.dtype == torch.float32 and b.pred_boxes.tensor.dtype == torch.float32
        diff = _diff(a, b)
        assert diff.kept_fraction >= 0.9, diff.summary()
        assert diff.median_score_diff < 5e-3, diff.summary()
        assert 0 < diff.max_score_diff < 0.05, diff.summary()  # > 0: it did run in low precision


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="TEST.PRECISION 'fp8'"):
        _model("fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_inference_on_cuda(precision):
    ref = _model("fp32", "cuda")
    low = _model(precision, "cuda")
    low.load_state_dict(ref.state_dict())
    batch = [random_prompt_input(4, 1, 192, 256)]
    with torch.no_grad():
        a = ref(batch)[0]["instances"].to("cpu")
        b = low(batch)[0]["instances"].to("cpu")
    diff = _diff(a, b)
    assert diff.kept_fraction >= 0.9, diff.summary()
    assert diff.median_score_diff < 5e-3, diff.summary()


def test_compare_detections_by_hand():
    ref_boxes = [[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10]]
    ref_scores = [0.9, 0.5, 0.3]
    ref_classes = [1, 2, 3]
    # Box 0 moved a little (IoU 0.81 -> only kept at iou=0.8), box 1 exact with another score,
    # box 2 there but with the wrong class; one extra detection.
    boxes = [[1, 0, 11, 10], [20, 20, 40, 40], [0, 0, 10, 10], [50, 50, 60, 60]]
    scores = [0.85, 0.6, 0.3, 0.2]
    classes = [1, 2, 4, 1]
    strict = compare_detections(ref_boxes, ref_scores, ref_classes, boxes, scores, classes)
    assert (strict.num_reference, strict.num_other, strict.kept) == (3, 4, 1)
    assert strict.max_score_diff == pytest.approx(0.1)
    loose = compare_detections(ref_boxes, ref_scores, ref_classes, boxes, scores, classes, iou=0.8)
    assert loose.kept == 2
    assert loose.max_score_diff == pytest.approx(0.1)
    assert loose.median_score_diff == pytest.approx(0.05)  # lower median of {0.05, 0.1}
    # One to one: two reference boxes cannot both match the same detection.
    twice = compare_detections(
        [[0, 0, 10, 10]] * 2, [0.9, 0.8], [1, 1], [[0, 0, 10, 10]], [0.9], [1]
    )
    assert twice.kept == 1 and twice.kept_fraction == 0.5
    with pytest.raises(ValueError, match="other detections: 1 boxes, 2 scores"):
        compare_detections([], [], [], [[0, 0, 1, 1]], [0.1, 0.2], [0])
