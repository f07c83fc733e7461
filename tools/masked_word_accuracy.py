#!/usr/bin/env python
"""Masked-word accuracy of a GLIPv2 model's LM head on a grounding set's captions.

    python tools/masked_word_accuracy.py --config-file configs/glipv2/glipv2_tiny_shapes.yaml \
        MODEL.WEIGHTS output/glipv2_tiny_shapes/model_final.pth

Prints a JSON object ``{group: {"accuracy": %, "count": n}}``. The default word groups are the
colours and shapes of the built-in glip_shapes captions.
"""

import argparse
import json
import sys

import glip_d2  # noqa: F401  (registers the components, quietly, first)

# isort: split
from detectron2.modeling import build_model

from glip_d2.config import setup_cfg
from glip_d2.data.mappers import GroundingDatasetMapper
from glip_d2.evaluation.masked_words import masked_word_accuracy
from glip_d2.utils.checkpoint import GLIPCheckpointer

SHAPES_WORDS = {
    "colour": ["red", "green", "blue"],
    "shape": ["circle", "square", "triangle", "circles", "squares", "triangles"],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default="glip_shapes_val_grounding")
    parser.add_argument("--words", help='JSON {"group": ["word", ...]} (default: shapes)')
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides")
    args = parser.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model(cfg)
    GLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    words = json.loads(args.words) if args.words else SHAPES_WORDS
    mapper = GroundingDatasetMapper(cfg, is_train=False)
    result = masked_word_accuracy(model, args.dataset, mapper, words)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
