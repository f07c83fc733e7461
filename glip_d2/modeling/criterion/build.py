"""Build the criterion of a config: GLIP's terms, plus the GLIPv2 terms whose weight is > 0."""

from __future__ import annotations

from ..head.atss import GLIPBoxCoder
from .base import BoxLoss, GLIPCriterion, TokenAlignmentLoss


def build_criterion(
    cfg,
    *,
    box_coder: GLIPBoxCoder,
    visual_dim: int,
    lang_dim: int,
    bert_config,
    language_backbone=None,
) -> GLIPCriterion:
    """The criterion of ``cfg``.

    Args:
        box_coder (GLIPBoxCoder): the model's box coder.
        visual_dim (int): FPN width C; ``lang_dim`` (int): language width D.
        bert_config: the language model's ``BertConfig`` (vocabulary of the LM head).
        language_backbone: the built language backbone (its checkpoint may hold an LM head).
    """
    gh = cfg.MODEL.GLIP_HEAD
    terms = {
        "token": TokenAlignmentLoss(gh.FOCAL_ALPHA, gh.FOCAL_GAMMA),
        "box": BoxLoss(box_coder),
    }
    weights = {
        "loss_token": gh.TOKEN_LOSS_WEIGHT,
        "loss_giou": gh.REG_LOSS_WEIGHT,
        "loss_centerness": 1.0,
    }
    return GLIPCriterion(terms, weights)
