"""Build the criterion of a config: GLIP's terms, plus the GLIPv2 terms whose weight is > 0."""

from __future__ import annotations

import logging

from ...data.prompts.mlm import MLM_SCOPES
from ..head.atss import GLIPBoxCoder
from .base import BoxLoss, GLIPCriterion, TokenAlignmentLoss
from .glipv2 import MaskedLanguageModelTerm, RegionWordTerm

logger = logging.getLogger(__name__)


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
    v2 = cfg.MODEL.GLIPV2
    if v2.REGION_WORD.WEIGHT > 0:
        rw = v2.REGION_WORD
        terms["region_word"] = RegionWordTerm(
            visual_dim=visual_dim,
            text_dim=lang_dim,
            embed_dim=rw.EMBED_DIM,
            log_scale_init=rw.LOG_SCALE_INIT,
            mode=rw.MODE,
            max_regions_per_image=rw.MAX_REGIONS_PER_IMAGE,
            phrase_positives=rw.PHRASE_POSITIVES,
        )
        weights["loss_region_word"] = rw.WEIGHT
    if v2.MLM.WEIGHT > 0:
        if v2.MLM.SCOPE not in MLM_SCOPES:
            raise ValueError(f"MODEL.GLIPV2.MLM.SCOPE '{v2.MLM.SCOPE}' is not one of {MLM_SCOPES}")
        if cfg.MODEL.FUSION.TYPE == "none":
            logger.warning(
                "MODEL.GLIPV2.MLM.WEIGHT > 0 with MODEL.FUSION.TYPE 'none': the LM head reads the "
                "language backbone's features, so masked words are predicted from the text alone"
            )
        term = MaskedLanguageModelTerm(bert_config)
        if v2.MLM.INIT_FROM_LM_HEAD and cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED:
            term.init_from_language_model(cfg.MODEL.LANGUAGE_BACKBONE.MODEL_NAME)
        if v2.MLM.TIE_WORD_EMBEDDINGS:
            term.tie_decoder_to(_word_embeddings(language_backbone))
        terms["mlm"] = term
        weights["loss_mlm"] = v2.MLM.WEIGHT
    return GLIPCriterion(terms, weights)


def _word_embeddings(language_backbone):
    model = getattr(language_backbone, "model", None)
    if model is None or not hasattr(model, "get_input_embeddings"):
        raise ValueError(
            "MODEL.GLIPV2.MLM.TIE_WORD_EMBEDDINGS needs a Hugging Face language backbone "
            f"(with get_input_embeddings); got {type(language_backbone).__name__}"
        )
    return model.get_input_embeddings().weight
