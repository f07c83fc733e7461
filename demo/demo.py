"""Detect any categories, or ground a caption's phrases, in images and videos with GLIP.

    python demo/demo.py --config-file configs/glip_swin_t.yaml \
        --input street.jpg 'photos/*.jpg' photos_dir/ clip.mp4 \
        --categories person bicycle "stop sign" \
        --output out/ [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS glip_tiny.pth]

    python demo/demo.py ... --prompt "a man riding a bike next to a red car" \
        [--phrases "a man" "a bike" "a red car"]

    python demo/demo.py --config-file configs/glipv2/glipv2_tiny_shapes_vqa.yaml --input x.png \
        --question "what color is the circle?" --output out/ [--ground] --opts MODEL.WEIGHTS ...
    python demo/demo.py --config-file configs/glipv2/glipv2_tiny_shapes_caption.yaml \
        --input x.png --caption --output out/ [--ground] --opts MODEL.WEIGHTS ...

``--question`` (GLIPv2 VQA) and ``--caption`` (GLIPv2 captioning) write one picture per image
with the answer or caption above it and ``answers.json`` / ``captions.json``; ``--ground`` also
draws the boxes of the answer / of the caption's noun phrases.

``--categories`` takes a vocabulary of any size (large ones are run in chunks, the backbone once
per image). ``--prompt`` takes a caption; its phrases are ``--phrases`` (substrings of the
caption) or, by default, its noun phrases found by spaCy (``INPUT.PROMPT.SPACY_MODEL``).

Writes to ``--output``:

* one picture per image (``<name>.png``) and one video per input video (``<name>.mp4``), the
  boxes (and, for a mask model, ``MODEL.MASK_ON``, their masks) drawn by Detectron2's
  ``Visualizer``. Each object gets one label, its best-scoring phrase and score: a detection
  whose box overlaps a better one with IoU above ``--draw-iou-threshold`` (default 0.6, any
  phrase) is not drawn, nor is its mask (1 draws every detection).
  Images whose shorter side is under 600 pixels are drawn larger, so labels stay readable.
  ``<name>`` is the input's file stem; inputs that share a stem are named by their path below
  their common folder (``a/x.png``, ``b/x.png`` -> ``a_x.png``, ``b_x.png``), and a name that
  is still taken gets ``-2``, ``-3``, ...;
* ``detections.json`` in COCO format, with every detection above ``--confidence-threshold``
  (not only the drawn ones): ``images`` (file name, size, ``picture``: the written picture or
  video; for video frames also ``video`` and ``frame_index``), ``categories`` (id = 1 + index
  into the categories or phrases, name) and ``annotations`` (xywh ``bbox`` in original
  pixels, ``score``, ``category_id``). It loads with ``pycocotools.coco.COCO``. A mask model's
  annotations also have a ``segmentation``: the mask as COCO RLE (``size`` [H, W], ``counts``
  a str; ``pycocotools.mask.decode`` gives it back), and their ``area`` is the mask's pixel
  count (the box area without masks). To score them with ``COCOeval(gt, gt.loadRes(anns),
  "segm")``, map ``image_id`` and ``category_id`` to the ground truth's ids and drop ``bbox``
  from ``anns`` first, as Detectron2's ``COCOEvaluator`` does: ``loadRes`` otherwise takes
  the box area for the small/medium/large ranges.

Images get the evaluation's test-time pre-processing (``GLIPResize`` to ``INPUT.MIN_SIZE_TEST``
/ ``MAX_SIZE_TEST``, one image per batch with the default ``--batch-size 1``) and
``--categories`` the evaluation's prompt rule, so a dataset's images with its category names in
order (no prompt overrides) and ``--confidence-threshold 0`` give the detections the evaluator
scores (for PNG; OpenCV and PIL may decode a JPEG a grey level apart).

An input that cannot be read (a corrupt image, a video without a readable frame) is skipped
with a warning naming it; everything else is still written, the last log line counts the
skipped inputs and the exit code is 1 (0 when every input was read).
"""

import argparse
import glob
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np
from detectron2.utils.logger import setup_logger
from pycocotools import mask as mask_util

from glip_d2.config import setup_cfg
from glip_d2.engine import GLIPPredictor
from glip_d2.engine.predictor import noun_phrase_spans
from glip_d2.engine.visualize import DRAW_IOU_THRESHOLD, draw_instances

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

logger = logging.getLogger("glip_d2.demo")


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_EXTENSIONS)


def expand_inputs(patterns: List[str]) -> List[str]:
    """Files, globs and folders -> image and video paths (sorted per pattern); a pattern that
    matches nothing, or a file that is neither an image nor a video, is an error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [f for f in found if f.lower().endswith(MEDIA_EXTENSIONS)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image or video")
        for path in found:
            if not path.lower().endswith(MEDIA_EXTENSIONS):
                raise ValueError(
                    f"--input {path!r} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a "
                    f"video ({', '.join(VIDEO_EXTENSIONS)})"
                )
        paths.extend(found)
    return paths


def output_names(paths: List[str]) -> Dict[str, str]:
    """The picture (``.png``) or video (``.mp4``) file name of each input, unique per distinct
    input file: the file stem; inputs that share a stem are named by their path below their
    common folder with ``_`` for separators; a name still taken gets ``-2``, ``-3``, ..."""
    absolute = {p: os.path.normpath(os.path.abspath(p)) for p in paths}
    distinct = list(dict.fromkeys(absolute.values()))

    def default_name(path: str) -> str:
        stem = os.path.splitext(os.path.basename(path))[0]
        return stem + (".mp4" if is_video(path) else ".png")

    sharing = defaultdict(list)
    for path in distinct:
        sharing[default_name(path)].append(path)
    names, taken = {}, set()
    for path in distinct:
        group = sharing[default_name(path)]
        stem, ext = os.path.splitext(default_name(path))
        if len(group) > 1:
            relative = os.path.relpath(path, os.path.commonpath(group))
            stem = os.path.splitext(relative)[0].replace(os.sep, "_")
        name, k = stem + ext, 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}{ext}"
        taken.add(name)
        names[path] = name
    return {p: names[absolute[p]] for p in paths}


def phrase_spans(prompt: str, phrases: List[str]) -> List[List[List[int]]]:
    """``[start, end)`` spans of each phrase in the caption (first occurrence, searched left to
    right so that repeated words map to successive occurrences)."""
    spans, cursor = [], 0
    for phrase in phrases:
        start = prompt.find(phrase, cursor)
        if start < 0:
            start = prompt.find(phrase)
        if start < 0 or not phrase.strip():
            raise ValueError(f"--phrases {phrase!r} is not a part of --prompt {prompt!r}")
        spans.append([[start, start + len(phrase)]])
        cursor = start + len(phrase)
    return spans


def video_frames(path: str) -> Tuple[Iterator[np.ndarray], float, int]:
    """(BGR frames, fps, frame count as the container reports it)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise OSError(f"Cannot open video {path}")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))

    def frames():
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    return frames(), fps, count


def batched(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO RLE of one (H, W) bool mask, json-ready: ``{"size": [H, W], "counts": str}``
    (pycocotools encodes the Fortran-ordered uint8 mask; ``counts`` bytes decoded to str)."""
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


class DetectionWriter:
    """Collects detections as a COCO-format json (with RLE ``segmentation`` for masks)."""

    def __init__(self, names: List[str]):
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]

    def add(self, image_info: dict, instances) -> None:
        """Add one image (``image_info``: file name, size, ...) and its detections
        (``Instances`` on the CPU in the image's pixels, optionally with ``pred_masks``)."""
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, **image_info})
        boxes = instances.pred_boxes.tensor.tolist()
        masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
        size = [image_info["height"], image_info["width"]]
        if masks is not None and list(masks.shape[1:]) != size:
            raise ValueError(
                f"pred_masks of {image_info['file_name']} are {masks.shape[1]}x{masks.shape[2]} "
                f"(HxW), not the image's {size[0]}x{size[1]}"
            )
        for k, (box, score, cls) in enumerate(
            zip(boxes, instances.scores.tolist(), instances.pred_classes.tolist())
        ):
            x1, y1, x2, y2 = box
            ann = {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "score": score,
                "iscrowd": 0,
            }
            if masks is not None:
                ann["segmentation"] = mask_to_rle(masks[k])
                ann["area"] = int(masks[k].sum())
            self.annotations.append(ann)

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(
                {
                    "images": self.images,
                    "categories": self.categories,
                    "annotations": self.annotations,
                },
                f,
                indent=1,
            )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument(
        "--input", nargs="+", required=True, help="images, videos, globs or folders"
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--categories", nargs="+", help="category names to detect (any number)")
    what.add_argument("--prompt", help="a caption whose phrases are grounded")
    what.add_argument(
        "--question", help="GLIPv2 VQA (a MODEL.VQA_ON model): a question about each image"
    )
    what.add_argument(
        "--caption",
        action="store_true",
        help="GLIPv2 captioning (a MODEL.CAPTION_ON model): describe each image",
    )
    parser.add_argument(
        "--ground",
        action="store_true",
        help="with --question / --caption: also ground the answer / the caption's noun phrases",
    )
    parser.add_argument(
        "--phrases",
        nargs="+",
        help="with --prompt: the phrases to ground, as parts of the caption (default: its noun "
        "phrases, found by spaCy)",
    )
    parser.add_argument("--output", required=True, help="folder for pictures, videos and json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--draw-iou-threshold",
        type=float,
        default=DRAW_IOU_THRESHOLD,
        help="pictures draw one label per object: a detection whose box overlaps a better one "
        "with IoU above this is not drawn (1: draw all; detections.json keeps all)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images or video frames per forward pass"
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = parser.parse_args(argv)
    if args.phrases and not args.prompt:
        parser.error("--phrases goes with --prompt")
    if args.ground and args.question is None and not args.caption:
        parser.error("--ground goes with --question or --caption")
    if args.question is not None and not args.question.strip():
        parser.error("--question is empty")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if not 0.0 <= args.draw_iou_threshold <= 1.0:
        parser.error("--draw-iou-threshold must be in [0, 1]")
    setup_logger(name="glip_d2")

    paths = expand_inputs(args.input)
    names_out = output_names(paths)
    cfg = setup_cfg(args.config_file, args.opts)
    predictor = GLIPPredictor(cfg)
    if args.question is not None or args.caption:
        return describe_images(args, predictor, paths, names_out)

    if args.prompt is not None:
        if args.phrases:
            spans = phrase_spans(args.prompt, args.phrases)
        else:
            spans = noun_phrase_spans(args.prompt, cfg.INPUT.PROMPT.SPACY_MODEL)
            if not spans:
                raise ValueError(f"--prompt {args.prompt!r} has no noun phrase; pass --phrases")
        names = [args.prompt[s[0][0] : s[0][1]] for s in spans]
        chunks = predictor.encode_caption(args.prompt, spans)
    else:
        names = list(args.categories)
        chunks = predictor.encode_categories(names)
    logger.info("Grounding %d phrase(s): %s", len(names), names)

    os.makedirs(args.output, exist_ok=True)
    writer = DetectionWriter(names)
    skipped: List[str] = []

    def run(frames: List[np.ndarray]):
        outputs = predictor.predict_encoded(frames, chunks)
        results = []
        for frame, out in zip(frames, outputs):
            inst = out["instances"].to("cpu")
            inst = inst[inst.scores >= args.confidence_threshold]
            picture = draw_instances(frame[:, :, ::-1], inst, iou_threshold=args.draw_iou_threshold)
            results.append((inst, picture[:, :, ::-1]))
        return results

    def skip(path: str, why: str):
        logger.warning("Skipping %s: %s", path, why)
        skipped.append(path)

    pending: List[Tuple[str, np.ndarray]] = []

    def flush_images():
        if not pending:
            return
        for (path, image), (inst, picture) in zip(pending, run([im for _, im in pending])):
            cv2.imwrite(os.path.join(args.output, names_out[path]), picture)
            info = {"file_name": path, "height": image.shape[0], "width": image.shape[1]}
            writer.add(dict(info, picture=names_out[path]), inst)
            logger.info("%s: %d detections -> %s", path, len(inst), names_out[path])
        pending.clear()

    for k, path in enumerate(paths):
        if not is_video(path):
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                skip(path, "cannot be read as an image (corrupt, empty or not an image file)")
                continue
            pending.append((path, image))
            if len(pending) == args.batch_size:
                flush_images()
            continue
        flush_images()
        try:
            frames, fps, count = video_frames(path)
        except OSError as e:
            skip(path, str(e))
            continue
        out_path = os.path.join(args.output, names_out[path])
        video, index = None, 0
        for batch in batched(frames, args.batch_size):
            for frame, (inst, picture) in zip(batch, run(batch)):
                if video is None:
                    h, w = picture.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    video = cv2.VideoWriter(out_path, fourcc, fps, (w, h))
                    if not video.isOpened():
                        raise OSError(f"Cannot write video {out_path}")
                video.write(np.ascontiguousarray(picture))
                info = {"file_name": path, "video": path, "frame_index": index}
                info.update(picture=names_out[path], height=frame.shape[0], width=frame.shape[1])
                writer.add(info, inst)
                index += 1
            logger.info("[%d/%d] %s: frame %d/%d", k + 1, len(paths), path, index, count)
        if video is None:
            skip(path, "the video has no readable frame")
            continue
        video.release()
        logger.info("[%d/%d] %s: %d frames -> %s", k + 1, len(paths), path, index, out_path)
    flush_images()
    writer.write(os.path.join(args.output, "detections.json"))
    logger.info(
        "Wrote pictures and detections.json (%d images, %d detections) to %s",
        len(writer.images),
        len(writer.annotations),
        os.path.abspath(args.output),
    )
    if skipped:
        logger.warning(
            "Skipped %d of %d inputs that could not be read: %s",
            len(skipped),
            len(paths),
            ", ".join(skipped),
        )
        return 1
    return 0


def _draw_text(image_bgr: np.ndarray, lines: List[str]) -> np.ndarray:
    """The picture with ``lines`` written in a white band above it."""
    scale = max(image_bgr.shape[1] / 640.0, 0.5)
    height = int(28 * scale)
    band = np.full((height * len(lines) + 8, image_bgr.shape[1], 3), 255, dtype=np.uint8)
    for i, line in enumerate(lines):
        y = height * (i + 1) - int(6 * scale)
        cv2.putText(
            band, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0), 1, cv2.LINE_AA
        )
    return np.concatenate([band, image_bgr], axis=0)


def describe_images(args, predictor: GLIPPredictor, paths: List[str], names_out) -> int:
    """``--question`` / ``--caption``: one answer or caption per image, drawn above the picture
    (with ``--ground`` also the grounded boxes) and listed in ``answers.json`` /
    ``captions.json`` (``file_name``, ``question``, ``answer``, ``score``, ``top_answers`` /
    ``file_name``, ``caption``)."""
    os.makedirs(args.output, exist_ok=True)
    results, skipped = [], []
    for k, path in enumerate(paths):
        image = None if is_video(path) else cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            why = "videos are not described" if is_video(path) else "cannot be read as an image"
            logger.warning("Skipping %s: %s", path, why)
            skipped.append(path)
            continue
        if args.question is not None:
            out = predictor.answer(image, args.question, ground=args.ground)
            record = {
                "file_name": path,
                "question": args.question,
                "answer": out["answer"],
                "score": out["score"],
                "top_answers": out["top_answers"],
            }
            lines = [f"Q: {args.question}", f"A: {out['answer']} ({out['score']:.2f})"]
        else:
            out = predictor.caption(image, ground=args.ground)
            record = {"file_name": path, "caption": out["caption"]}
            lines = [out["caption"]]
        picture = image
        if "instances" in out:
            inst = out["instances"].to("cpu")
            inst = inst[inst.scores >= args.confidence_threshold]
            record["boxes"] = [
                {"bbox": b.tolist(), "phrase": p, "score": float(sc)}
                for b, p, sc in zip(inst.pred_boxes.tensor, inst.pred_phrases, inst.scores)
            ]
            drawn = draw_instances(image[:, :, ::-1], inst, iou_threshold=args.draw_iou_threshold)
            picture = np.ascontiguousarray(drawn[:, :, ::-1])
        cv2.imwrite(os.path.join(args.output, names_out[path]), _draw_text(picture, lines))
        results.append(record)
        logger.info("[%d/%d] %s: %s", k + 1, len(paths), path, " | ".join(lines))
    name = "answers.json" if args.question is not None else "captions.json"
    with open(os.path.join(args.output, name), "w") as f:
        json.dump(results, f, indent=1)
    logger.info("Wrote %d results to %s", len(results), os.path.join(args.output, name))
    if skipped:
        logger.warning("Skipped %d of %d inputs: %s", len(skipped), len(paths), ", ".join(skipped))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
