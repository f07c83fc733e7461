#!/usr/bin/env python
"""Gradient norm of each training loss over a few training batches, and the scale that
full-model gradient clipping then gives every step.

    python tools/loss_gradient_norms.py --config-file configs/glipv2/glipv2_tiny_shapes.yaml \
        [--iters 8] [MODEL.WEIGHTS output/glipv2_tiny_shapes/model_final.pth]

GLIP's box and token losses form the group "grounding"; every other loss is its own group.
Prints one JSON line per batch and a last line with the means. Without MODEL.WEIGHTS the
model is at its initialisation (SEED), where loss weights matter most.
"""

import argparse
import json
import sys

import glip_d2  # noqa: F401  (registers the components, quietly, first)

# isort: split
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from glip_d2.config import setup_cfg
from glip_d2.engine import GLIPTrainer
from glip_d2.utils.checkpoint import GLIPCheckpointer
from glip_d2.utils.loss_gradients import clip_scale, loss_gradient_norms

GROUNDING = ("loss_token", "loss_giou", "loss_centerness")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--iters", type=int, default=8, help="training batches to measure")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error("--iters must be at least 1")
    cfg = setup_cfg(args.config_file, args.opts)
    torch.manual_seed(cfg.SEED if cfg.SEED >= 0 else 0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        GLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    clip = cfg.SOLVER.CLIP_GRADIENTS
    max_norm = clip.CLIP_VALUE if clip.ENABLED and clip.CLIP_TYPE == "full_model" else None
    loader = iter(GLIPTrainer.build_train_loader(cfg))
    rows = []
    with EventStorage(0):
        for it in range(args.iters):
            losses = model(next(loader))
            groups = {"grounding": GROUNDING}
            groups.update({k: [k] for k in losses if k not in GROUNDING})
            row = loss_gradient_norms(losses, params, groups)
            if max_norm is not None:
                row["clip_scale"] = clip_scale(row["all"], max_norm)
            rows.append(row)
            print(json.dumps({"iter": it, **{k: round(v, 4) for k, v in row.items()}}), flush=True)
    mean = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]}
    print(json.dumps({"mean": mean}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
