"""Official GLIP checkpoint keys to glip_d2 keys (reference §15).

The official model nests parts as ``rpn.head.*`` and ``language_backbone.body.model.*``;
glip_d2 names them ``head.*`` and ``language_backbone.model.*``. Everything else (Swin, FPN,
tower) keeps the official names, so the conversion is a prefix table plus a few entries that
are regenerated instead of loaded.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Tuple

import torch

logger = logging.getLogger(__name__)

#: official prefix -> glip_d2 prefix (first match wins)
PREFIX_TABLE: Tuple[Tuple[str, str], ...] = (
    # The dormant GLIPv2 pieces of the official code (GLIPv2 reference §3.2.2, §3.3.2).
    ("rpn.head.mlm_head.", "criterion.terms.mlm.head."),
    (
        "rpn.loss_evaluator.shallow_contrastive_projection_image.",
        "criterion.terms.region_word.projection_image.",
    ),
    (
        "rpn.loss_evaluator.shallow_contrastive_projection_text.",
        "criterion.terms.region_word.projection_text.",
    ),
    ("rpn.loss_evaluator.shallow_log_scale", "criterion.terms.region_word.log_scale"),
    # The dormant GLIPv2 VL mask head (GLIPv2 reference §4.2).
    ("roi_heads.mask.", "mask_head."),
    ("rpn.head.", "head."),
    ("rpn.tunable_linear.", "tunable_linear."),
    ("language_backbone.body.model.", "language_backbone.model."),
)

#: official keys rebuilt by glip_d2 rather than loaded (checked when the model can compare)
REGENERATED_PREFIXES = ("rpn.anchor_generator.cell_anchors.",)
#: buffers of older transformers releases, not part of the model with current ones
DROPPED_SUFFIXES = ("embeddings.position_ids",)


def is_official_glip_state_dict(state_dict: Mapping[str, object]) -> bool:
    """True when the keys use the official GLIP layout (``rpn.head.*`` etc.)."""
    return any(k.startswith(("rpn.", "language_backbone.body.", "roi_heads.")) for k in state_dict)


def strip_module_prefix(state_dict: Dict[str, object]) -> Dict[str, object]:
    """Remove a ``module.`` prefix (DistributedDataParallel) if every key has it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], List[str]]:
    """Rename official GLIP keys to glip_d2 keys.

    Args:
        state_dict: an official ``model`` state dict (optionally ``module.``-prefixed).

    Returns:
        (converted, regenerated, dropped): the renamed entries; the entries glip_d2 rebuilds
        itself (anchor buffers, keyed by their official names) for the caller to check; the
        names of entries dropped because the model no longer has them (old ``position_ids``).
    """
    state_dict = strip_module_prefix(dict(state_dict))
    converted, regenerated, dropped = {}, {}, []
    for key, value in state_dict.items():
        if key.startswith(REGENERATED_PREFIXES):
            regenerated[key] = value
            continue
        if key.endswith(DROPPED_SUFFIXES):
            dropped.append(key)
            continue
        new_key = key
        for old, new in PREFIX_TABLE:
            if key.startswith(old):
                new_key = new + key[len(old) :]
                break
        converted[new_key] = value
    return converted, regenerated, dropped


def unwrap_checkpoint(obj: object) -> Dict[str, torch.Tensor]:
    """The model state dict of a loaded checkpoint file (``{"model": ...}`` or bare)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return dict(obj["model"])
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"Expected a checkpoint dict, got {type(obj).__name__}")


def _detection_checkpointer_cls():
    from detectron2.checkpoint import DetectionCheckpointer

    return DetectionCheckpointer


class GLIPCheckpointer(_detection_checkpointer_cls()):
    """``DetectionCheckpointer`` that refuses shape mismatches instead of skipping them.

    Official GLIP files load through the model's own key conversion (``GLIP.load_state_dict``
    accepts official names); this class adds the strictness the converter promises: a tensor
    whose shape differs from the model's is an error naming the key and both shapes. Missing
    and unused keys are logged by name, as Detectron2 does.
    """

    def _load_file(self, filename: str):
        if filename.endswith((".pth", ".pt")):
            # Official checkpoints are pickles of older torch releases (not weights-only).
            loaded = torch.load(filename, map_location="cpu", weights_only=False)
            if not isinstance(loaded, dict) or "model" not in loaded:
                loaded = {"model": loaded}
            return loaded
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if incompatible is not None and incompatible.incorrect_shapes:
            lines = [
                f"{key}: checkpoint {tuple(src)} vs model {tuple(dst)}"
                for key, src, dst in incompatible.incorrect_shapes
            ]
            raise ValueError("Shape mismatch when loading weights:\n  " + "\n  ".join(lines))
        return incompatible
