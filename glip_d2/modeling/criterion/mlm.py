"""Masked language modelling loss of GLIPv2 (L_mlm, reference §3.3) on the fused text features.

The head is transformers' ``BertLMPredictionHead`` (dense, activation, LayerNorm, decoder to the
vocabulary plus a bias), as the dormant GLIPv2 code of microsoft/GLIP (MIT licence) puts it at
``rpn.head.mlm_head``: its own weights, not tied to the word embeddings. Its state-dict keys
are the official ones (``transform.dense.*``, ``transform.LayerNorm.*``, ``decoder.weight``,
``decoder.bias``, ``bias``). The masking itself happens in the data path
(:mod:`glip_d2.data.prompts.mlm`); this module only scores the labelled positions.
"""

from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..language.bert_backbone import language_model_weights_file

__all__ = ["IGNORE_LABEL", "MaskedLanguageModelLoss", "mlm_cross_entropy"]

logger = logging.getLogger(__name__)

#: Label of positions that are not scored (the data path's ``IGNORE_LABEL``).
IGNORE_LABEL = -100

_LM_HEAD = "cls.predictions."
_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# Old BERT checkpoints (bert-base-uncased's pytorch_model.bin) name LayerNorm gamma / beta.
_LEGACY_NAMES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def mlm_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the scored positions; exactly 0 when there are none.

    The official loss is ``CrossEntropyLoss(ignore_index=-100)``, whose mean over no position
    is NaN (reference §7.7); here it is 0, still connected to ``logits`` so that every
    parameter behind them gets a (zero) gradient and DDP sees it used.

    Args:
        logits (Tensor): (K, V) logits at the K scored positions.
        targets (Tensor): (K,) int64 token ids in ``[0, V)``.

    Returns:
        Tensor: scalar, float32.
    """
    if logits.shape[0] == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), targets, reduction="mean")


def tie_lm_decoder(lm_head: nn.Module, word_embeddings: nn.Parameter, config_key: str) -> None:
    """Share a BERT LM head's decoder weight with the language model's (V, D) word embeddings
    (BERT's own tying); a shape mismatch is an error naming ``config_key``."""
    own = lm_head.decoder.weight
    if tuple(word_embeddings.shape) != tuple(own.shape):
        raise ValueError(
            f"{config_key}: word embeddings "
            f"{tuple(word_embeddings.shape)} differ from the LM decoder {tuple(own.shape)}"
        )
    lm_head.decoder.weight = word_embeddings


class MaskedLanguageModelLoss(nn.Module):
    """BERT LM head on the fused text features and the MLM cross-entropy.

    Attributes:
        head (BertLMPredictionHead): hidden D -> vocabulary V (``bert_config.vocab_size``).
    """

    def __init__(self, bert_config):
        """
        Args:
            bert_config (transformers.BertConfig): the language model's config (``hidden_size``
                D, ``vocab_size`` V, ``hidden_act``, ``layer_norm_eps``).
        """
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLMPredictionHead

        self.head = BertLMPredictionHead(bert_config)
        self.vocab_size = int(bert_config.vocab_size)

    def scored_logits(
        self, text_features: torch.Tensor, labels: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """LM logits at the scored positions only (the head is position-wise, so they equal
        the rows of the full (B, L, V) logits; the full tensor is never formed).

        Args:
            text_features (Tensor): (B, L, D) fused text features, before any normalisation.
            labels (Tensor): (B, L) int64 over token indices (``[CLS]`` = 0): the original id
                at scored positions, -100 elsewhere (the mapper's ``mlm_labels``).

        Returns:
            tuple[Tensor, Tensor]: ``logits`` (K, V) and ``targets`` (K,) int64, K = the number
            of scored positions, in row-major (image, token) order.

        Raises:
            ValueError: the shapes disagree, or a label is neither -100 nor in ``[0, V)``.
        """
        if text_features.dim() != 3 or labels.shape != text_features.shape[:2]:
            raise ValueError(
                f"MLM text_features {tuple(text_features.shape)} must be (B, L, D) and labels "
                f"{tuple(labels.shape)} (B, L)"
            )
        scored = labels != IGNORE_LABEL
        targets = labels[scored].long()
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= self.vocab_size):
            raise ValueError(
                f"MLM labels must be -100 or token ids in [0, {self.vocab_size}), got values "
                f"in [{int(targets.min())}, {int(targets.max())}]"
            )
        return self.head(text_features[scored]), targets

    def forward(self, text_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """
        Args:
            text_features (Tensor): (B, L, D) fused text features, before any normalisation.
            labels (Tensor): (B, L) int64, -100 = not scored (see :meth:`scored_logits`).

        Returns:
            Tensor: scalar, the mean cross-entropy over the scored positions of this batch (0
            when none is scored, see :func:`mlm_cross_entropy`).
        """
        return mlm_cross_entropy(*self.scored_logits(text_features, labels))

    @torch.no_grad()
    def init_from_language_model(
        self, path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]]
    ) -> bool:
        """Copy the language model's own LM head (``BertForMaskedLM`` / ``BertForPreTraining``
        ``cls.predictions.*``) into :attr:`head`, when its checkpoint has one.

        A decoder weight absent from the checkpoint (tied to the word embeddings, which
        ``save_pretrained`` does not store twice) is taken from
        ``[bert.]embeddings.word_embeddings.weight``.

        Args:
            path_or_state_dict: ``MODEL.LANGUAGE_BACKBONE.MODEL_NAME`` (a local folder,
                ``pkg://`` folder or hub name in the local cache; see
                :func:`glip_d2.modeling.language.bert_backbone.language_model_weights_file`),
                a weights file (``.safetensors`` or ``.bin``), or a state dict.

        Returns:
            bool: True if the head was initialised; False (logged at INFO) when there is no
            weights file or it has no LM head; the head is then left as it is.

        Raises:
            FileNotFoundError: a path that does not exist.
            ValueError: the checkpoint's head does not fit (shape mismatch, or the decoder
                weight missing with no word embeddings), naming the key and the file.
        """
        if isinstance(path_or_state_dict, Mapping):
            source, state = "the given state dict", dict(path_or_state_dict)
        else:
            source = language_model_weights_file(str(path_or_state_dict))
            if source is None:
                logger.info(
                    f"MLM head: {str(path_or_state_dict)!r} has no local weights file "
                    "(model.safetensors / pytorch_model.bin); the head keeps its fresh init"
                )
                return False
            state = _load_weights(source)
        found = _lm_head_state(state)
        if not found:
            logger.info(f"MLM head: {source} has no LM head (cls.predictions.*); fresh init")
            return False
        if "decoder.weight" not in found:
            words = [k for k in state if k.endswith(_WORD_EMBEDDINGS)]
            if not words:
                raise ValueError(
                    f"MLM head: {source} has cls.predictions.* but neither "
                    f"cls.predictions.decoder.weight nor {_WORD_EMBEDDINGS} (tied decoder)"
                )
            found["decoder.weight"] = state[min(words, key=len)]
        if "bias" not in found and "decoder.bias" in found:
            found["bias"] = found["decoder.bias"]
        found.pop("decoder.bias", None)  # the same tensor as ``bias`` in the head
        own = {k: v for k, v in self.head.state_dict().items() if k != "decoder.bias"}
        missing = sorted(set(own) - set(found))
        if missing:
            raise ValueError(f"MLM head: {source} lacks cls.predictions.{missing[0]}")
        for key, target in own.items():
            value = found[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"MLM head: cls.predictions.{key} in {source} has shape "
                    f"{tuple(value.shape)}, the head needs {tuple(target.shape)} (language "
                    "model config and checkpoint differ)"
                )
            target.copy_(value.to(target.dtype))
        logger.info(f"MLM head initialised from the LM head of {source}")
        return True


def _load_weights(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _lm_head_state(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``cls.predictions.<key>`` entries of a checkpoint as head keys (legacy names renamed)."""
    found: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        _, sep, sub = key.rpartition(_LM_HEAD)
        if not sep:
            continue
        for old, new in _LEGACY_NAMES.items():
            if sub.endswith(old):
                sub = sub[: -len(old)] + new
        found[sub] = value
    return found
