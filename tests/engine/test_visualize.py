"""Pictures: one label per object (the best-scoring one) and small images drawn larger."""

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances

from glip_d2.engine import visualize
from glip_d2.engine.visualize import draw_instances, picture_scale, select_labels_for_drawing
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
