"""BERT text encoder of GLIP (reference §4) on Hugging Face transformers."""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
from typing import Dict, Iterator, Optional

import torch
from detectron2.config import configurable
from torch import nn

from ...utils.hub import load_pretrained as load_hf_pretrained
from ...utils.paths import resolve_path
from .build import LANGUAGE_BACKBONE_REGISTRY

_MODEL_NAME_KEY = "MODEL.LANGUAGE_BACKBONE.MODEL_NAME"
#: Weight files of a Hugging Face model folder, in the order ``from_pretrained`` prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_POOLER_KEY = re.compile(r"(^|\.)pooler\.")
_UNUSED_WEIGHTS = re.compile(r"were not used when initializing \w+: (\[[^\]]*\])")


class _UnusedPoolerFilter(logging.Filter):
    """Drops transformers' "Some weights ... were not used" warning when the only unused
    weights are BERT's pooler, which GLIP does not have (``add_pooling_layer=False``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _UNUSED_WEIGHTS.search(record.getMessage())
        if match is None:
            return True
        try:
            keys = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return True
        return not (keys and all(_POOLER_KEY.search(str(k)) for k in keys))


@contextlib.contextmanager
def _unused_pooler_not_reported() -> Iterator[None]:
    model_logger = logging.getLogger("transformers.modeling_utils")
    quiet = _UnusedPoolerFilter()
    model_logger.addFilter(quiet)
    try:
        yield
    finally:
        model_logger.removeFilter(quiet)


def load_bert_config(model_name: str, config_file: str = ""):
    """BERT hyper-parameters from a config json, a local folder or a model name.

    ``bert-base-uncased`` resolves without network: ``transformers.BertConfig()`` defaults
    equal its config (the official GLIP inventories were measured that way).

    Args:
        model_name (str): Hugging Face name (from the local Hugging Face cache, else the hub),
            local folder or ``pkg://package/sub/path``.
        config_file (str): optional json that takes precedence over ``model_name``.

    Returns:
        transformers.BertConfig

    Raises:
        FileNotFoundError: ``config_file`` or a ``model_name`` path does not exist.
        glip_d2.utils.hub.HubUnreachableError: ``model_name`` is not cached and the hub cannot
            be reached (see :func:`glip_d2.utils.hub.load_pretrained`).
    """
    from transformers import BertConfig

    config_file = resolve_path(config_file) if config_file else ""
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"MODEL.LANGUAGE_BACKBONE.CONFIG_FILE not found: {config_file}")
        config = BertConfig.from_json_file(config_file)
    elif model_name == "bert-base-uncased" and not os.path.isdir(model_name):
        config = BertConfig()
    else:
        config = load_hf_pretrained(
            BertConfig.from_pretrained, model_name, config_key=_MODEL_NAME_KEY, needs="config.json"
        )
    # Eager attention is the implementation the official outputs were recorded with.
    config._attn_implementation = "eager"
    return config


def language_model_weights_file(model_name: str) -> Optional[str]:
    """The weights file of ``MODEL.LANGUAGE_BACKBONE.MODEL_NAME``, found without network.

    Resolved as :class:`BertLanguageBackbone` resolves the name: a local folder or
    ``pkg://package/sub/path`` is searched for :data:`WEIGHT_FILES`; a hub name is looked up
    in the local Hugging Face cache only (nothing is downloaded).

    Args:
        model_name (str): Hugging Face name, local folder, ``pkg://`` folder, or a weights
            file (``.safetensors`` / ``.bin``) itself.

    Returns:
        str or None: the path of the first weights file found, or None when there is none
        (a folder without weights, a hub name that is not cached).

    Raises:
        FileNotFoundError: ``model_name`` is a path (or ``pkg://`` name) that does not exist.
    """
    path = os.path.expanduser(resolve_path(model_name))
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in WEIGHT_FILES:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        return None
    if os.path.isabs(path) or path.startswith((".", "~")):
        raise FileNotFoundError(f"{_MODEL_NAME_KEY} {model_name!r}: no such file or folder")
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_FILES:
        cached = try_to_load_from_cache(path, name)
        if isinstance(cached, str):
            return cached
    return None


def causal_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) key mask -> (B, L, L): query i may attend to key j iff j <= i and j is a token.

    Args:
        attention_mask (Tensor): (B, L), 1 for real tokens.

    Returns:
        Tensor: (B, L, L) of the input's dtype.
    """
    length = attention_mask.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return (lower[None] & attention_mask.bool()[:, None, :]).to(attention_mask.dtype)


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
                then come from a GLIP checkpoint). The checkpoint's pooler, which GLIP does not
                use, is not reported as unused.
            freeze (bool): keep the parameters fixed.
        """
        super().__init__()
        from transformers import BertModel

        self.bert_config = load_bert_config(model_name, config_file)
        if load_pretrained:
            with _unused_pooler_not_reported():
                self.model = load_hf_pretrained(
                    BertModel.from_pretrained,
                    model_name,
                    config_key=_MODEL_NAME_KEY,
                    needs="config.json and the weights (model.safetensors or pytorch_model.bin)",
                    config=self.bert_config,
                    add_pooling_layer=False,
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
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            input_ids (Tensor): (B, L) token ids, [CLS] ... [SEP] [PAD]...
            attention_mask (Tensor): (B, L) 1 for real tokens ([CLS]/[SEP] included).
            causal (bool): token i attends only to tokens 0..i (captioning, GLIPv2); the
                (B, L, L) mask goes to BERT as its extended attention mask.

        Returns:
            dict: ``hidden`` (B, L, D) last layer, not masked; ``embedded`` (B, L, D) last layer
            with pad rows zeroed; ``masks`` (B, L); ``aggregate`` (B, D) masked mean.
        """
        mask_in = causal_attention_mask(attention_mask) if causal else attention_mask
        out = self.model(input_ids=input_ids, attention_mask=mask_in)
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
