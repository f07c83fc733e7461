"""The command line of ``tools/pseudo_label.py``: a teacher GLIP labels captions or an image folder.

Captions mode (image-text pairs in, an MDETR grounding json out)::

    python tools/pseudo_label.py --config-file configs/glip_swin_t.yaml \\
        --captions pairs.jsonl --image-root images/ --output-dir pseudo/ \\
        MODEL.WEIGHTS teacher.pth

Ontology mode (an image folder and ``{prompt: class_name}`` in, a COCO json out)::

    python tools/pseudo_label.py --config-file configs/glip_swin_t.yaml \\
        --ontology ontology.json --image-root images/ --output-dir pseudo/ --yolo-dir yolo/ \\
        MODEL.WEIGHTS teacher.pth AUTOLABEL.SCORE_THRESHOLD 0.4

Several processes (``--num-gpus N``: N processes per machine, NCCL on GPUs, gloo on CPUs) and
machines (``--num-machines``, ``--machine-rank``, ``--dist-url``) split the shards between them,
as ``train_net.py`` does. Rerunning the same command resumes a killed run.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional

from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_glip_config
from ..engine.launch import cpu_fallback, launch_from_args, share_cpu_threads
from .core import LabelSettings, label_captions, label_ontology, load_caption_records, load_ontology

__all__ = ["build_parser", "setup", "main", "invoke_main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Detectron2's launcher arguments plus the inputs and outputs of pseudo-labelling."""
    parser = default_argument_parser(epilog=__doc__)
    parser.description = "Pseudo-label captions or an image folder with a teacher GLIP."
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--captions",
        help="json list or jsonl of {file_name, caption[, phrase_spans]} records (captions mode)",
    )
    mode.add_argument("--ontology", help="json {prompt: class_name} (ontology mode)")
    parser.add_argument("--image-root", required=True, help="the folder file names are in")
    parser.add_argument("--output-dir", required=True, help="gets pseudo_labels.json, shards/")
    parser.add_argument("--yolo-dir", default=None, help="ontology mode: also write YOLO labels")
    parser.add_argument(
        "--output-name", default="pseudo_labels.json", help="the merged json's file name"
    )
    return parser


def setup(args: argparse.Namespace):
    """The frozen config of the run (``--config-file`` then the trailing ``KEY VALUE`` opts)."""
    cfg = get_cfg()
    add_glip_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cpu_fallback(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            "MODEL.WEIGHTS is empty: pseudo-labelling needs a trained teacher (an official GLIP "
            ".pth or a glip_d2 checkpoint); add 'MODEL.WEIGHTS path/to/teacher.pth'"
        )
    cfg.freeze()
    share_cpu_threads(cfg)
    return cfg


def main(args: argparse.Namespace) -> Optional[str]:
    """Label in this process's shards; rank 0 merges and returns the json's path."""
    os.makedirs(args.output_dir, exist_ok=True)
    setup_logger(output=args.output_dir, distributed_rank=comm.get_rank(), name="glip_d2")
    cfg = setup(args)
    # The inputs are read (and checked) before the teacher is built: a bad file fails fast.
    if args.captions:
        records = load_caption_records(args.captions)
        logger.info(f"{len(records)} caption records from {args.captions}")
    else:
        ontology = load_ontology(args.ontology)
        logger.info(f"Ontology of {len(ontology)} prompts from {args.ontology}")
    from ..engine.predictor import GLIPPredictor

    teacher = GLIPPredictor(cfg)
    settings = LabelSettings.from_config(cfg)
    if args.captions:
        path = label_captions(
            teacher,
            records,
            args.image_root,
            args.output_dir,
            settings,
            output_name=args.output_name,
        )
    else:
        path = label_ontology(
            teacher,
            args.image_root,
            ontology,
            args.output_dir,
            settings,
            yolo_dir=args.yolo_dir,
            output_name=args.output_name,
        )
    return path


def invoke_main(argv=None) -> None:
    """Parse ``argv`` (default: the command line) and run :func:`main` in every process."""
    args = build_parser().parse_args(argv)
    if args.eval_only or args.resume:
        raise SystemExit("--eval-only and --resume do not apply; rerunning resumes by itself")
    launch_from_args(main, args)
