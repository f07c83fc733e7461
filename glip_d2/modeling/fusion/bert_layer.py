"""The BERT encoder layer that follows each fusion step in GLIP's head tower.

Re-implemented from the description of ``BertEncoderLayer`` (``modeling/rpn/vldyhead.py``) and
the clamped attention/FFN of ``maskrcnn_benchmark/modeling/rpn/modeling_bert.py`` in
microsoft/GLIP (MIT licence), which itself adapts HuggingFace transformers' BERT (Apache-2.0);
see reference §5. Parameter names equal HuggingFace ``BertLayer``'s.
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torch import nn
from transformers.activations import ACT2FN

__all__ = ["BertFusionLayer"]

# GLIP clamps these activations so that they stay finite in fp16; a no-op at fp32 magnitudes.
_CLAMP = 50000.0


class _SelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_size % config.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                f"{config.num_attention_heads}"
            )
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        bsz, n, _ = x.shape
        return x.view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        query = self._split(self.query(hidden))
        key = self._split(self.key(hidden))
        value = self._split(self.value(hidden))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        # The official layer clamps before adding the mask (CLAMP_BERTATTN_* flags, on in all
        # configs), so masked logits stay at finfo.min.
        scores = scores.clamp(min=-_CLAMP, max=_CLAMP) + mask_bias
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, value).transpose(1, 2)
        return context.reshape(hidden.shape[0], hidden.shape[1], -1)


class _SelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class _Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _SelfOutput(config)

    def forward(self, hidden: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, mask_bias), hidden)


class _Intermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        act = config.hidden_act
        self.intermediate_act_fn = ACT2FN[act] if isinstance(act, str) else act

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The official FFN clamps before and after the activation unconditionally.
        hidden = self.dense(hidden).clamp(min=-_CLAMP, max=_CLAMP)
        return self.intermediate_act_fn(hidden).clamp(min=-_CLAMP, max=_CLAMP)


class _Output(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden = self.dropout(self.dense(hidden)).clamp(min=-_CLAMP, max=_CLAMP)
        return self.LayerNorm(hidden + residual).clamp(min=-_CLAMP, max=_CLAMP)


class BertFusionLayer(nn.Module):
    """One BERT encoder layer over the token features (``dyhead_tower.3i+1``).

    Self-attention + FFN with GLIP's clamps; only ``lang["hidden"]`` changes. Its width follows
    the BERT config (GLIP builds it from the language model's config, not from LANG_DIM).
    Weights keep PyTorch's default init, as in the official layer (it never calls BERT's
    ``init_weights``).
    """

    def __init__(self, config):
        """
        Args:
            config (transformers.BertConfig): uses ``hidden_size``, ``num_attention_heads``,
                ``intermediate_size``, ``hidden_act``, ``layer_norm_eps`` and the dropouts.
        """
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Output(config)

    def encode(
        self, hidden: torch.Tensor, masks: torch.Tensor, causal: bool = False
    ) -> torch.Tensor:
        """
        Args:
            hidden: (B, L, D) token features.
            masks: (B, L) attention mask, 1 for valid tokens and 0 for padding.
            causal (bool): token i attends only to tokens 0..i (captioning).

        Returns:
            (B, L, D) updated token features.
        """
        # HuggingFace's extended mask: (1 - mask) * finfo.min in the parameter dtype.
        dtype = self.attention.self.query.weight.dtype
        allowed = masks[:, None, None, :].to(dtype)
        if causal:
            length = masks.shape[-1]
            lower = torch.ones(length, length, dtype=dtype, device=masks.device).tril()
            allowed = allowed * lower
        mask_bias = (1.0 - allowed) * torch.finfo(dtype).min
        attended = self.attention(hidden, mask_bias)
        return self.output(self.intermediate(attended), attended)

    def forward(self, state: Dict) -> Dict:
        """
        Args:
            state (dict): ``visual`` (list of (B, C, H_l, W_l), passed through) and ``lang``
                with ``hidden`` (B, L, D), ``masks`` (B, L) and optionally ``causal`` (bool).

        Returns:
            dict: a new state whose ``lang["hidden"]`` is replaced.
        """
        lang = state["lang"]
        hidden = self.encode(lang["hidden"], lang["masks"], causal=bool(lang.get("causal", False)))
        return {"visual": state["visual"], "lang": {**lang, "hidden": hidden}}
