"""Attention kernels of the fusion's bidirectional attention, picked by name.

``MODEL.FUSION.ATTENTION_IMPL`` names one entry of :data:`FUSION_ATTENTION_IMPLS`. A kernel
gets the projected, head-split tensors and returns the attended values of both directions;
the projections, layer scale and residuals stay in :class:`BiMultiHeadAttention`. A faster
kernel is added by registering a function with the same contract; no constructor changes.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["FUSION_ATTENTION_IMPLS", "register_fusion_attention", "get_fusion_attention"]

# GLIP clamps attention logits to this range (the CLAMP_*_FOR_UNDERFLOW/OVERFLOW flags, on in
# every released config) so that they stay finite in fp16.
CLAMP = 50000.0
# Additive bias for padded tokens in the image->text softmax (the official value; it overflows
# to -inf in fp16, as in the official code).
MASK_NEG = -9e15

#: Kernel signature: ``kernel(query, key, value_l, value_v, attention_mask_l, *, num_heads,
#: dropout, training) -> (out_v, out_l)`` with ``query`` (B*h, N, d) already scaled, ``key``
#: and ``value_l`` (B*h, L, d), ``value_v`` (B*h, N, d) or None (no text branch),
#: ``attention_mask_l`` (B, L) or None; ``out_v`` (B*h, N, d), ``out_l`` (B*h, L, d) or None.
AttentionKernel = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]

FUSION_ATTENTION_IMPLS: Dict[str, AttentionKernel] = {}


def register_fusion_attention(name: str) -> Callable[[AttentionKernel], AttentionKernel]:
    """Decorator: register a kernel under ``name`` (a value of MODEL.FUSION.ATTENTION_IMPL)."""

    def deco(fn: AttentionKernel) -> AttentionKernel:
        if name in FUSION_ATTENTION_IMPLS:
            raise KeyError(f"fusion attention kernel '{name}' is already registered")
        FUSION_ATTENTION_IMPLS[name] = fn
        return fn

    return deco


def get_fusion_attention(name: str) -> AttentionKernel:
    """The kernel registered as ``name``; a ``ValueError`` names the config key otherwise."""
    try:
        return FUSION_ATTENTION_IMPLS[name]
    except KeyError:
        raise ValueError(
            f"MODEL.FUSION.ATTENTION_IMPL '{name}' is not one of {sorted(FUSION_ATTENTION_IMPLS)}"
        ) from None


@register_fusion_attention("eager")
def eager_bi_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value_l: torch.Tensor,
    value_v: Optional[torch.Tensor],
    attention_mask_l: Optional[torch.Tensor],
    *,
    num_heads: int,
    dropout: float,
    training: bool,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The official arithmetic (reference §5.1): one clamped logit matrix serves both softmaxes.

    The text branch subtracts its per-row max (the official stabiliser) and sees every image
    position and pad token; the image branch adds the official mask bias (valid tokens +1,
    padding -9e15; the +1 cancels in the softmax).
    """
    attn = torch.bmm(query, key.transpose(1, 2))  # (B * heads, N, L)
    attn = attn.clamp(min=-CLAMP, max=CLAMP)

    attn_l = None
    if value_v is not None:
        attn_l = attn.transpose(1, 2)
        attn_l = attn_l - attn_l.max(dim=-1, keepdim=True)[0]
        attn_l = attn_l.clamp(min=-CLAMP, max=CLAMP).softmax(dim=-1)

    if attention_mask_l is not None:
        if attention_mask_l.dim() != 2:
            raise ValueError("attention_mask_l must be (B, L)")
        bsz = attention_mask_l.shape[0]
        mask_bias = attention_mask_l.to(torch.float32)
        mask_bias = mask_bias.masked_fill(attention_mask_l == 0, MASK_NEG).to(attn.dtype)
        n_img, n_tok = attn.shape[1], attn.shape[2]
        attn = attn.view(bsz, num_heads, n_img, n_tok) + mask_bias[:, None, None, :]
        attn = attn.view(bsz * num_heads, n_img, n_tok)
    attn_v = attn.softmax(dim=-1)

    attn_v = F.dropout(attn_v, p=dropout, training=training)
    out_v = torch.bmm(attn_v, value_l)
    if attn_l is None:
        return out_v, None
    attn_l = F.dropout(attn_l, p=dropout, training=training)
    return out_v, torch.bmm(attn_l, value_v)
