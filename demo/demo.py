"""Detect any categories in images with GLIP and draw them with Detectron2's Visualizer.

    python demo/demo.py --config-file configs/glip_swin_t.yaml \
        --input street.jpg 'photos/*.jpg' photos_dir/ --categories person bicycle "stop sign" \
        --output out/ [--confidence-threshold 0.5] [--opts MODEL.WEIGHTS glip_tiny.pth]

Writes one picture per image (boxes labelled with the grounded phrase and score) and
``detections.json`` (COCO results format: image file, xywh box, score, category index and name)
to ``--output``.
"""

import argparse
import glob
import json
import logging
import os
import sys

import cv2
import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from glip_d2.config import add_glip_config
from glip_d2.engine import GLIPPredictor
from glip_d2.engine.visualize import draw_instances

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_inputs(patterns):
    """Files, globs and folders -> image paths (sorted); an unmatched pattern is an error."""
    paths = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [os.path.join(pattern, f) for f in sorted(os.listdir(pattern))]
            found = [f for f in found if f.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise FileNotFoundError(f"--input {pattern!r} matches no image")
        paths.extend(found)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    parser.add_argument("--categories", nargs="+", required=True, help="names to detect")
    parser.add_argument("--output", required=True, help="folder for pictures and detections.json")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    args = parser.parse_args(argv)
    setup_logger(name="glip_d2")
    logger = logging.getLogger("glip_d2")

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    predictor = GLIPPredictor(cfg)
    os.makedirs(args.output, exist_ok=True)
    detections = []
    paths = expand_inputs(args.input)
    for k, path in enumerate(paths):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"Cannot read image {path}")
        inst = predictor(image, args.categories)["instances"].to("cpu")
        inst = inst[inst.scores >= args.confidence_threshold]
        picture = draw_instances(image[:, :, ::-1], inst)
        out_path = os.path.join(args.output, os.path.basename(path))
        cv2.imwrite(os.path.splitext(out_path)[0] + ".png", picture[:, :, ::-1])
        for box, score, cls in zip(
            inst.pred_boxes.tensor.tolist(), inst.scores.tolist(), inst.pred_classes.tolist()
        ):
            x1, y1, x2, y2 = box
            detections.append(
                {
                    "file_name": path,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                    "category_id": cls,
                    "category_name": args.categories[cls],
                }
            )
        logger.info("[%d/%d] %s: %d detections", k + 1, len(paths), path, len(inst))
    with open(os.path.join(args.output, "detections.json"), "w") as f:
        json.dump(detections, f, indent=1)
    logger.info("Wrote pictures and detections.json to %s", os.path.abspath(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
