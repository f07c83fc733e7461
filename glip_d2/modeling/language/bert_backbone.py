"""BERT text encoder of GLIP (reference §4) on Hugging Face transformers."""

from __future__ import annotations

import os
from typing import Dict

import torch
from detectron2.config import configurable
from torch import nn

from ...utils.paths import resolve_path
from .build import LANGUAGE_BACKBONE_REGISTRY


def load_bert_config(model_name: str, config_file: str = ""):
    """BERT hyper-parameters from a config json, a local folder or a model name.

    ``bert-base-uncased`` resolves without network: ``transformers.BertConfig()`` defaults
    equal its config (the official GLIP inventories were measured that way).

    Args:
        model_name (str): Hugging Face name or local folder.
        config_file (str): optional json that takes precedence over ``model_name``.

    Returns:
        transformers.BertConfig
    """
    from transformers import BertConfig

    model_name = resolve_path(model_name)
    config_file = resolve_path(config_file) if config_file else ""
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"MODEL.LANGUAGE_BACKBONE.CONFIG_FILE not found: {config_file}")
        config = BertConfig.from_json_file(config_file)
    elif model_name == "bert-base-uncased" and not os.path.isdir(model_name):
        config = BertConfig()
    else:
        config = BertConfig.from_pretrained(model_name)
    # Eager attention is the implementation the official outputs were recorded with.
    config._attn_implementation = "eager"
    return config


@LANGUAGE_BACKBONE_REGISTRY.register()
class BertLanguageBackbone(nn.Module):
    """BERT without pooler over a padded query; outputs as the official ``BertEncoder``.

    State-dict keys are ``model.embeddings.*`` and ``model.encoder.layer.N.*`` (the official
    ``language_backbone.body.model.*``).
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        config_file: str = "",
        load_pretrained: bool = False,
        freeze: bool = False,
    ):
        """
        Args:
            model_name (str): Hugging Face name, local folder, or ``pkg://package/sub/path``.
            config_file (str): optional BERT config json overriding ``model_name``'s.
            load_pretrained (bool): load ``model_name``'s weights (else random init; weights
                then come from a GLIP checkpoint).
            freeze (bool): keep the parameters fixed.
        """
        super().__init__()
        from transformers import BertModel

        self.bert_config = load_bert_config(model_name, config_file)
        if load_pretrained:
            self.model = BertModel.from_pretrained(
                resolve_path(model_name), config=self.bert_config, add_pooling_layer=False
            )
        else:
            self.model = BertModel(self.bert_config, add_pooling_layer=False)
        self.out_dim = self.bert_config.hidden_size
        if freeze:
            for p in self.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        lb = cfg.MODEL.LANGUAGE_BACKBONE
        return {
            "model_name": lb.MODEL_NAME,
            "config_file": lb.CONFIG_FILE,
            "load_pretrained": lb.LOAD_PRETRAINED,
            "freeze": lb.FREEZE,
        }

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            input_ids (Tensor): (B, L) token ids, [CLS] ... [SEP] [PAD]...
            attention_mask (Tensor): (B, L) 1 for real tokens ([CLS]/[SEP] included).

        Returns:
            dict: ``hidden`` (B, L, D) last layer, not masked; ``embedded`` (B, L, D) last layer
            with pad rows zeroed; ``masks`` (B, L); ``aggregate`` (B, D) masked mean.
        """
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        mask = attention_mask.to(hidden.dtype)
        embedded = hidden * mask.unsqueeze(-1)
        aggregate = embedded.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return {
            "hidden": hidden,
            "embedded": embedded,
            "masks": attention_mask,
            "aggregate": aggregate,
        }
