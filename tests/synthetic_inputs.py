"""Shared test builders: the tiny GLIP config and model, and synthetic prompts and inputs.

A synthetic prompt of ``n`` entries is ``[CLS] a b . a b . ... [SEP]``-shaped: ``3n + 1`` real
tokens, entry ``k`` covering tokens ``3k+1`` and ``3k+2``, padded to ``L`` = 256 tokens.
"""

from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from glip_d2.config import add_glip_config

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"
L = 256


def tiny_cfg(**opts):
    """The tiny GLIP config on CPU; ``opts`` are ``{"MODEL.X.Y": value}`` overrides."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(TINY_CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list([item for pair in opts.items() for item in pair])
    return cfg


def tiny_model(seed=0, **opts):
    """A tiny GLIP in eval mode, its weights drawn after ``torch.manual_seed(seed)``."""
    cfg = tiny_cfg(**opts)
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def prompt_tensors(n_entries, first_id=1000, generator=None):
    """``(input_ids, attention_mask, positive_map)`` of a synthetic prompt of ``n_entries``.

    The ids are ``first_id, first_id + 1, ...``, or drawn from ``[1000, 5000)`` with
    ``generator`` when one is given.
    """
    n = 3 * n_entries + 1
    ids = torch.zeros(L, dtype=torch.long)
    if generator is None:
        ids[:n] = torch.arange(first_id, first_id + n)
    else:
        ids[:n] = torch.randint(1000, 5000, (n,), generator=generator)
    mask = torch.zeros(L, dtype=torch.long)
    mask[:n] = 1
    pmap = torch.zeros(n_entries, L, dtype=torch.bool)
    for k in range(n_entries):
        pmap[k, 3 * k + 1 : 3 * k + 3] = True
    return ids, mask, pmap


def model_input(generator, h, w, ids, mask, pmap, **extra):
    """A model input dict: a random ``h`` x ``w`` uint8 image drawn from ``generator``, the
    prompt tensors, and any ``extra`` fields (instances, phrases, ...)."""
    return {
        "image": torch.randint(0, 255, (3, h, w), generator=generator, dtype=torch.uint8),
        "height": h,
        "width": w,
        "input_ids": ids,
        "attention_mask": mask,
        "positive_map": pmap,
        **extra,
    }


def random_prompt_input(n_entries, seed, h, w):
    """A random image and a prompt of ``n_entries`` with random ids, all from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    ids, mask, pmap = prompt_tensors(n_entries, generator=g)
    return model_input(g, h, w, ids, mask, pmap)
