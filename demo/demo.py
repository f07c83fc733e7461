"""Detect any categories, or ground a caption's phrases, in images and videos with GLIP.

    python demo/demo.py --config-file configs/glip_swin_t.yaml \
        --input street.jpg 'photos/*.jpg' photos_dir/ clip.mp4 \
        --categories person bicycle "stop sign" \
        --output out/ [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS glip_tiny.pth]

    python demo/demo.py ... --prompt "a man riding a bike next to a red car" \
        [--phrases "a man" "a bike" "a red car"]

``--categories`` takes a vocabulary of any size (large ones are run in chunks, the backbone once
per image). ``--prompt`` takes a caption; its phrases are ``--phrases`` (substrings of the
caption) or, by default, its noun phrases found by spaCy (``INPUT.PROMPT.SPACY_MODEL``).

Writes to ``--output``:

* one picture per image (``<name>.png``) and one video per input video (``<name>.mp4``), the
  boxes drawn by Detectron2's ``Visualizer`` and labelled with the grounded phrase and score;
* ``detections.json`` in COCO format: ``images`` (file name, size; for video frames also
  ``video`` and ``frame_index``), ``categories`` (id = 1 + index into the categories or phrases,
  name) and ``annotations`` (xywh ``bbox`` in original pixels, ``score``, ``category_id``). It
  loads with ``pycocotools.coco.COCO``.
"""

import argparse
import glob
import json
import logging
import os
import sys
from typing import Iterator, List, Tuple

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from glip_d2.config import add_glip_config
from glip_d2.engine import GLIPPredictor
from glip_d2.engine.predictor import noun_phrase_spans
from glip_d2.engine.visualize import draw_instances

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


class DetectionWriter:
    """Collects detections as a COCO-format json."""

    def __init__(self, names: List[str]):
        self.images: List[dict] = []
        self.annotations: List[dict] = []
        self.categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]

    def add(self, image_info: dict, instances) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, **image_info})
        boxes = instances.pred_boxes.tensor.tolist()
        for box, score, cls in zip(
            boxes, instances.scores.tolist(), instances.pred_classes.tolist()
        ):
            x1, y1, x2, y2 = box
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(cls) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "score": score,
                    "iscrowd": 0,
                }
            )

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
    parser.add_argument(
        "--phrases",
        nargs="+",
        help="with --prompt: the phrases to ground, as parts of the caption (default: its noun "
        "phrases, found by spaCy)",
    )
    parser.add_argument("--output", required=True, help="folder for pictures, videos and json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images or video frames per forward pass"
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = parser.parse_args(argv)
    if args.phrases and not args.prompt:
        parser.error("--phrases goes with --prompt")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    setup_logger(name="glip_d2")

    paths = expand_inputs(args.input)
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    predictor = GLIPPredictor(cfg)

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

    def run(frames: List[np.ndarray]):
        outputs = predictor.predict_encoded(frames, chunks)
        results = []
        for frame, out in zip(frames, outputs):
            inst = out["instances"].to("cpu")
            inst = inst[inst.scores >= args.confidence_threshold]
            results.append((inst, draw_instances(frame[:, :, ::-1], inst)[:, :, ::-1]))
        return results

    pending: List[Tuple[str, np.ndarray]] = []

    def flush_images():
        if not pending:
            return
        for (path, image), (inst, picture) in zip(pending, run([im for _, im in pending])):
            stem = os.path.splitext(os.path.basename(path))[0]
            cv2.imwrite(os.path.join(args.output, stem + ".png"), picture)
            info = {"file_name": path, "height": image.shape[0], "width": image.shape[1]}
            writer.add(info, inst)
            logger.info("%s: %d detections", path, len(inst))
        pending.clear()

    for k, path in enumerate(paths):
        if not is_video(path):
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is None:
                raise OSError(f"Cannot read image {path}")
            pending.append((path, image))
            if len(pending) == args.batch_size:
                flush_images()
            continue
        flush_images()
        stem = os.path.splitext(os.path.basename(path))[0]
        frames, fps, count = video_frames(path)
        out_path = os.path.join(args.output, stem + ".mp4")
        video, index = None, 0
        for batch in batched(frames, args.batch_size):
            for inst, picture in run(batch):
                if video is None:
                    h, w = picture.shape[:2]
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    video = cv2.VideoWriter(out_path, fourcc, fps, (w, h))
                    if not video.isOpened():
                        raise OSError(f"Cannot write video {out_path}")
                video.write(np.ascontiguousarray(picture))
                info = {"file_name": path, "video": path, "frame_index": index}
                writer.add(dict(info, height=picture.shape[0], width=picture.shape[1]), inst)
                index += 1
            logger.info("[%d/%d] %s: frame %d/%d", k + 1, len(paths), path, index, count)
        if video is None:
            raise OSError(f"Video {path} has no readable frame")
        video.release()
        logger.info("[%d/%d] %s: %d frames -> %s", k + 1, len(paths), path, index, out_path)
    flush_images()
    writer.write(os.path.join(args.output, "detections.json"))
    logger.info("Wrote pictures and detections.json to %s", os.path.abspath(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
