from detectron2.config import CfgNode
from detectron2.utils.registry import Registry
from torch import nn

LANGUAGE_BACKBONE_REGISTRY = Registry("LANGUAGE_BACKBONE")
LANGUAGE_BACKBONE_REGISTRY.__doc__ = """
Registry for text encoders, picked by ``cfg.MODEL.LANGUAGE_BACKBONE.NAME``.

A registered class is built as ``cls(cfg)`` (use ``@configurable``). Its forward takes
``input_ids`` (B, L) int64 and ``attention_mask`` (B, L) int64 and returns a dict with
``hidden`` (B, L, D) last-layer features, ``embedded`` (B, L, D) the same with pad rows zeroed,
``masks`` (B, L) the attention mask and ``aggregate`` (B, D) the masked mean over tokens.
It exposes ``out_dim`` (D) and ``bert_config`` (the transformers config the fusion layers copy).
"""


def build_language_backbone(cfg: CfgNode) -> nn.Module:
    """Build the text encoder named by ``cfg.MODEL.LANGUAGE_BACKBONE.NAME``."""
    return LANGUAGE_BACKBONE_REGISTRY.get(cfg.MODEL.LANGUAGE_BACKBONE.NAME)(cfg)
