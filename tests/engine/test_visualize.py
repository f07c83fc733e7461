"""Pictures: one label per object (the best-scoring one), masks of mask models, and small
images drawn larger."""

import cv2
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from PIL import Image

from glip_d2.engine import visualize
from glip_d2.engine.visualize import (
    draw_instances,
    picture_scale,
    select_labels_for_drawing,
    visualize_dataset_predictions,
)
from glip_d2.utils.phrases import PhraseList

PHRASES = ["green circle", "green square", "red square", "blue circle"]


def _instances(rows, size=(120, 150)):
    """rows: (x1, y1, x2, y2, score, class)."""
    rows = torch.tensor(rows, dtype=torch.float32)
    inst = Instances(size)
    inst.pred_boxes = Boxes(rows[:, :4])
    inst.scores = rows[:, 4]
    inst.pred_classes = rows[:, 5].long()
    inst.pred_phrases = PhraseList(PHRASES[c] for c in inst.pred_classes.tolist())
    return inst


# Object A: three phrases on (nearly) the same box, the best is "green square" 0.509 but it is
# neither first nor last. Object B: alone. Object C overlaps A a little (IoU 0.14): its own object.
ROWS = [
    (10, 10, 50, 50, 0.41, 0),  # A, green circle
    (11, 10, 50, 51, 0.509, 1),  # A, green square (best of A)
    (90, 60, 130, 100, 0.30, 3),  # B, blue circle
    (10, 11, 49, 50, 0.22, 2),  # A, red square
    (40, 40, 70, 70, 0.35, 0),  # C, green circle
    (10, 10, 50, 50, 0.45, 0),  # A, green circle again
]


def test_one_label_per_object_the_best_scoring_one():
    keep = select_labels_for_drawing(_instances(ROWS), iou_threshold=0.6)
    assert keep.tolist() == [1, 4, 2]  # A's green square, C, B (by decreasing score)
    # 1 draws every detection; an empty set selects nothing.
    assert len(select_labels_for_drawing(_instances(ROWS), iou_threshold=1.0)) == len(ROWS)
    assert len(select_labels_for_drawing(_instances(ROWS)[torch.zeros(6, dtype=torch.bool)])) == 0
    with pytest.raises(ValueError, match="iou_threshold"):
        select_labels_for_drawing(_instances(ROWS), iou_threshold=1.5)


def test_draw_passes_one_label_per_object_to_the_visualizer(monkeypatch):
    drawn = {}

    class SpyVisualizer(visualize.Visualizer):
        def overlay_instances(self, **kwargs):
            drawn.update(kwargs)
            return super().overlay_instances(**kwargs)

    monkeypatch.setattr(visualize, "Visualizer", SpyVisualizer)
    image = np.full((120, 150, 3), 200, np.uint8)
    draw_instances(image, _instances(ROWS), score_thresh=0.25)
    assert drawn["labels"] == ["green square 0.51", "green circle 0.35", "blue circle 0.30"]
    np.testing.assert_allclose(drawn["boxes"], [ROWS[1][:4], ROWS[4][:4], ROWS[2][:4]])
    # A colour per phrase, the same in every picture.
    colors = [tuple(c) for c in drawn["assigned_colors"]]
    assert len(set(colors)) == 3
    draw_instances(image, _instances(ROWS[::-1]), score_thresh=0.25)
    assert [tuple(c) for c in drawn["assigned_colors"]] == colors


def test_small_images_are_drawn_larger_large_ones_unchanged():
    small = draw_instances(np.full((120, 150, 3), 200, np.uint8), _instances(ROWS))
    assert small.shape == (600, 750, 3)  # shorter side 600 px
    large = np.full((700, 900, 3), 200, np.uint8)
    assert draw_instances(large, _instances(ROWS)).shape == large.shape
    # A thin strip is not blown up past the longest-side limit.
    assert picture_scale(10, 1200) == 2.0
    assert picture_scale(1, 1) == 600.0


def _triangle(size=(120, 150), corners=((20, 20), (20, 100), (90, 100))):
    mask = np.zeros(size, np.uint8)
    cv2.fillPoly(mask, [np.array(corners, np.int32)], 1)
    return mask.astype(bool)


def _with_masks(inst, masks):
    inst.pred_masks = torch.from_numpy(np.stack(masks))
    return inst


def _band(mask, pixels):
    """(inside: the mask shrunk by ``pixels``, outside: beyond ``pixels`` from the mask)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    inside = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
    outside = ~cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    return inside, outside


def test_masks_are_drawn_in_their_region_only():
    image = np.full((120, 150, 3), 200, np.uint8)
    rows = [(10, 10, 100, 110, 0.9, 0)]
    mask = _triangle()
    # Scale 1 (min_side=1), so that picture pixels are image pixels.
    boxes_only = draw_instances(image, _instances(rows), min_side=1)
    with_mask = draw_instances(image, _with_masks(_instances(rows), [mask]), min_side=1)
    differs = (boxes_only != with_mask).any(axis=2)
    inside, outside = _band(mask, 3)
    assert differs[inside].mean() > 0.95  # the mask is filled...
    assert not differs[outside].any()  # ...and nothing else changes (box, label)


def test_a_detection_that_is_not_drawn_has_no_mask_drawn(monkeypatch):
    """Two phrases on one box: only the better one is drawn, with its own mask."""
    image = np.full((120, 150, 3), 200, np.uint8)
    rows = [(10, 10, 140, 110, 0.3, 1), (10, 10, 140, 110, 0.8, 2)]
    left, right = np.zeros((120, 150), bool), np.zeros((120, 150), bool)
    left[20:100, 15:60], right[20:100, 90:135] = True, True
    drawn = {}

    class SpyVisualizer(visualize.Visualizer):
        def overlay_instances(self, **kwargs):
            drawn.update(kwargs)
            return super().overlay_instances(**kwargs)

    monkeypatch.setattr(visualize, "Visualizer", SpyVisualizer)
    boxes_only = draw_instances(image, _instances(rows), min_side=1)
    with_masks = draw_instances(image, _with_masks(_instances(rows), [left, right]), min_side=1)
    assert drawn["labels"] == ["red square 0.80"]
    np.testing.assert_array_equal(drawn["masks"], right[None])
    differs = (boxes_only != with_masks).any(axis=2)
    inside_right, outside_right = _band(right, 3)
    inside_left, _ = _band(left, 3)
    assert differs[inside_right].mean() > 0.95
    assert not differs[outside_right].any() and not differs[inside_left].any()


def test_masks_of_another_size_than_the_image_are_an_error():
    inst = _with_masks(_instances(ROWS[:1]), [np.ones((60, 75), bool)])
    with pytest.raises(ValueError, match="pred_masks are 60x75 .* image is 120x150"):
        draw_instances(np.full((120, 150, 3), 200, np.uint8), inst)


def test_test_time_pictures_draw_the_models_masks(tmp_path):
    """TEST.VISUALIZE pictures (visualize_dataset_predictions) of a mask model show masks."""
    image = np.full((120, 150, 3), 200, np.uint8)
    path = tmp_path / "shape.png"
    Image.fromarray(image).save(path)
    rows = [(10, 10, 100, 110, 0.9, 0)]

    class MaskModel(torch.nn.Module):
        def forward(self, inputs):
            return [{"instances": _with_masks(_instances(rows), [_triangle()])} for _ in inputs]

    (written,) = visualize_dataset_predictions(
        MaskModel(), [[{"file_name": str(path)}]], str(tmp_path / "vis"), 1, 0.5
    )
    picture = np.asarray(Image.open(written).convert("RGB"))
    np.testing.assert_array_equal(
        picture, draw_instances(image, _with_masks(_instances(rows), [_triangle()]), 0.5)
    )
    differs = (picture != draw_instances(image, _instances(rows), 0.5)).any(axis=2)
    # The picture is drawn 5x larger: the changed pixels are the (scaled) triangle's.
    ys, xs = np.nonzero(differs)
    assert differs.mean() > 0.1
    assert xs.min() >= 5 * 20 - 10 and xs.max() <= 5 * 90 + 10
    assert ys.min() >= 5 * 20 - 10 and ys.max() <= 5 * 100 + 10
