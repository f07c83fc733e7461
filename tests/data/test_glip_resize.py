"""The official (maskrcnn-benchmark) resize rule as a Detectron2 augmentation."""

import numpy as np
import pytest
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from PIL import Image

from glip_d2.config import add_glip_config
from glip_d2.data import GLIPResize, build_glip_augmentation, glip_resize_shape


@pytest.mark.parametrize(
    "h, w, size, max_size, expected",
    [
        (480, 640, 800, 1333, (800, 1066)),  # int(800 * 640 / 480) = int(1066.67)
        (640, 480, 800, 1333, (1066, 800)),
        # 3000 / 1000 * 800 > 1333: short = round(1333 * 1000 / 3000) = 444, long int(1332.0)
        (1000, 3000, 800, 1333, (444, 1332)),
        (800, 1000, 800, 1333, (800, 1000)),  # already there
        (375, 500, 800, 1333, (800, 1066)),
        (427, 640, 800, 1333, (800, 1199)),  # int(1199.06)
    ],
)
def test_glip_resize_shape(h, w, size, max_size, expected):
    assert glip_resize_shape(h, w, size, max_size) == expected


def test_differs_from_detectron2_rounding():
    # Detectron2's ResizeShortestEdge rounds the long side (1067); the official rule truncates.
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    d2 = T.ResizeShortestEdge(800, 1333).get_transform(image)
    assert (d2.new_h, d2.new_w) == (800, 1067)
    ours = GLIPResize(800, 1333).get_transform(image)
    assert (ours.new_h, ours.new_w) == (800, 1066)


def test_pil_bilinear_pixels():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    transform = GLIPResize(45, 1000).get_transform(image)
    out = transform.apply_image(image)
    expected = np.asarray(Image.fromarray(image).resize((75, 45), Image.BILINEAR))
    assert out.shape == (45, 75, 3)
    assert np.array_equal(out, expected)
    boxes = transform.apply_box(np.array([[10.0, 6.0, 20.0, 12.0]]))
    assert boxes.tolist() == [[15.0, 9.0, 30.0, 18.0]]


def test_sampling_styles():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    choice = GLIPResize((50, 60), 10000)
    assert {choice.get_transform(image).new_h for _ in range(50)} == {50, 60}
    ranged = GLIPResize((50, 52), 10000, sample_style="range")
    assert {ranged.get_transform(image).new_h for _ in range(100)} == {50, 51, 52}
    with pytest.raises(ValueError):
        GLIPResize((1, 2, 3), sample_style="range")


def test_build_glip_augmentation():
    cfg = get_cfg()
    add_glip_config(cfg)
    test_augs = build_glip_augmentation(cfg, is_train=False)
    assert len(test_augs) == 1 and isinstance(test_augs[0], GLIPResize)
    assert test_augs[0].short_edge_length == (800, 800) and test_augs[0].max_size == 1333
    train_augs = build_glip_augmentation(cfg, is_train=True)
    assert train_augs[0].short_edge_length == (480, 560, 640, 720, 800)
    assert isinstance(train_augs[1], T.RandomFlip)
    cfg.INPUT.RANDOM_FLIP = "none"
    assert len(build_glip_augmentation(cfg, is_train=True)) == 1
