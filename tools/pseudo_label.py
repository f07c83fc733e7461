#!/usr/bin/env python
"""Pseudo-label image-text pairs (captions mode) or an image folder (ontology mode) with a
teacher GLIP; see glip_d2/autolabel/cli.py for the arguments and examples, or run with --help.

python tools/pseudo_label.py --config-file configs/glip_swin_t.yaml --captions pairs.jsonl \
    --image-root images/ --output-dir pseudo/ MODEL.WEIGHTS teacher.pth
"""

# First: glip_d2 hides fvcore's torch.jit.script deprecation warnings, which detectron2 triggers.
import glip_d2  # noqa: F401

# isort: split
from glip_d2.autolabel.cli import invoke_main

if __name__ == "__main__":
    invoke_main()
