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

from ..scratch import scratch_buffer

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


def module_level(fn):
    """Mark an implementation that replaces the whole ``BiMultiHeadAttention`` computation:
    it is called as ``fn(attention_module, visual (B, N, C), lang (B, L, D), attention_mask_l)
    -> (delta_v, delta_l)`` with the module's own parameters, instead of on projected,
    head-split tensors."""
    fn.module_level = True
    return fn


def _softmax(x: torch.Tensor, dim: int, buffer_name: str) -> torch.Tensor:
    """``x.softmax(dim)``, written into a scratch buffer inside a scratch scope."""
    buf = scratch_buffer(buffer_name, x.shape, x.dtype, x.device)
    if buf is None:
        return x.softmax(dim=dim)
    return torch.softmax(x, dim, out=buf)


@register_fusion_attention("reassociated")
@module_level
def reassociated_bi_attention(module, visual, lang, attention_mask_l):
    """The official arithmetic with the matrix products reassociated (GLIP reference §5.1):
    nothing of size (image positions x embed_dim) is built.

    Per head h, with ``W_q, W_vv, W_o`` the head's slices of ``v_proj``, ``values_v_proj`` and
    ``out_v_proj``:

    * logits: ``s (v W_q^T + b_q) k^T = v (s W_q^T k^T) + s b_q k^T`` (a (C, L) matrix per head);
    * text branch: ``P_l (v W_vv^T + b_vv) = (P_l v) W_vv^T + rowsum(P_l) b_vv``;
    * image branch: ``out_v_proj`` of the merged heads ``= sum_h P_v,h (values_l,h W_o,h^T) +
      b_o``.

    The logits are the same numbers (up to float rounding), so the clamps, the text branch's
    max-subtraction and the padding bias act exactly as in :func:`eager_bi_attention`. Work
    per image position drops from ``3 C E + 3 E L`` to ``3 C h L`` multiply-adds (E = embed
    width, h heads, L tokens): with GLIP-T's C = 256, E = 2048, h = 8 and ~200 tokens, 2.3x
    fewer. Dropout (training only) draws its masks in a different layout than the eager
    kernel, so training with attention dropout is statistically, not bitwise, the same.
    """
    bsz, n, c = visual.shape
    num_tok = lang.shape[1]
    h, d = module.num_heads, module.head_dim
    key = module.l_proj(lang).view(bsz, num_tok, h, d).permute(0, 2, 3, 1)  # (B, h, d, L)
    w_q = module.v_proj.weight.view(h, d, c).transpose(1, 2)  # (h, C, d)
    proj = torch.matmul(w_q, key) * module.scale  # (B, h, C, L)
    bias = torch.matmul(module.v_proj.bias.view(h, 1, d), key) * module.scale  # (B, h, 1, L)
    proj = proj.permute(0, 2, 1, 3).reshape(bsz, c, h * num_tok)
    # (B, N, h*L): position-major, then head, then token. Inside a scratch scope (inference)
    # the three (N, h*L) maps live in reused buffers, consumed before this returns.
    shape = (bsz, n, h * num_tok)
    logits_buf = scratch_buffer("fusion.logits", shape, visual.dtype, visual.device)
    if logits_buf is not None:
        attn = torch.baddbmm(bias.reshape(bsz, 1, h * num_tok), visual, proj, out=logits_buf)
    else:
        attn = torch.baddbmm(bias.reshape(bsz, 1, h * num_tok), visual, proj)
    # In place only where autograd does not need the overwritten values.
    inplace = not (torch.is_grad_enabled() and attn.requires_grad)
    if inplace:
        attn = attn.clamp_(min=-CLAMP, max=CLAMP).view(bsz, n, h, num_tok)
    else:
        attn = attn.clamp(min=-CLAMP, max=CLAMP).view(bsz, n, h, num_tok)

    attn_l = None
    if module.update_lang:
        # Softmax over the image positions, per (head, token): dim 1 here. The official code
        # subtracts the max and clamps to [-CLAMP, CLAMP] first; softmax subtracts the max
        # itself (and x - max = x - max exactly), and a clamped value had exp() = 0 in every
        # float format anyway, so this is bitwise the official result in three fewer passes.
        attn_l = _softmax(attn, 1, "fusion.attn_l")
    if attention_mask_l is not None:
        if attention_mask_l.dim() != 2:
            raise ValueError("attention_mask_l must be (B, L)")
        padded = attention_mask_l == 0
        if bool(padded.any()):
            # Officially valid tokens get +1 (a shift the softmax removes) and padded ones
            # -9e15 (exp() = 0; -inf in fp16, as officially); the same softmax up to rounding.
            fill = padded[:, None, None, :]
            value = MASK_NEG if torch.finfo(attn.dtype).max > -MASK_NEG else float("-inf")
            if inplace:
                attn = attn.masked_fill_(fill, value)
            else:
                attn = attn.masked_fill(fill, value)
    attn_v = _softmax(attn, -1, "fusion.attn_v")
    attn_v = F.dropout(attn_v, p=module.dropout, training=module.training)

    values_l = module.values_l_proj(lang).view(bsz, num_tok, h, d).transpose(1, 2)  # (B,h,L,d)
    w_o = module.out_v_proj.weight.view(c, h, d).permute(1, 2, 0)  # (h, d, C)
    values_out = torch.matmul(values_l, w_o).reshape(bsz, h * num_tok, c)  # (B, h*L, C)
    delta_v = torch.baddbmm(
        module.out_v_proj.bias.view(1, 1, c), attn_v.view(bsz, n, h * num_tok), values_out
    )
    if attn_l is None:
        return delta_v, None
    attn_l = F.dropout(attn_l, p=module.dropout, training=module.training)
    flat_l = attn_l.view(bsz, n, h * num_tok).transpose(1, 2)  # (B, h*L, N)
    pooled = torch.bmm(flat_l, visual).view(bsz, h, num_tok, c)  # (B, h, L, C)
    w_vv = module.values_v_proj.weight.view(h, d, c).transpose(1, 2)  # (h, C, d)
    out_l = torch.matmul(pooled, w_vv)  # (B, h, L, d)
    bias_vv = module.values_v_proj.bias.view(1, h, 1, d)
    if module.training and module.dropout > 0:
        # Dropout breaks the softmax's unit row sums: weight the bias by the kept mass.
        out_l = out_l + flat_l.sum(-1).view(bsz, h, num_tok, 1) * bias_vv
    else:
        out_l = out_l + bias_vv  # each softmax row sums to 1
    out_l = out_l.transpose(1, 2).reshape(bsz, num_tok, h * d)
    return delta_v, module.out_l_proj(out_l)


# The straightforward implementation under the name the parity tests use as a second check.
FUSION_ATTENTION_IMPLS["reference"] = eager_bi_attention
