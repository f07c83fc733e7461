"""Bidirectional image-text cross-attention: GLIP's early fusion of type ``MHA-B``.

Re-implemented from the description of ``BiMultiHeadAttention`` and
``BiAttentionBlockForCheckpoint`` (``maskrcnn_benchmark/utils/fuse_helper.py``) and ``VLFuse``
(``maskrcnn_benchmark/modeling/rpn/vldyhead.py``) in microsoft/GLIP (MIT licence); see
reference §5.1. Parameter names follow the official state dict.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Tuple

import torch
import torch.utils.checkpoint
from torch import nn

from .attention import get_fusion_attention

__all__ = ["BiMultiHeadAttention", "BiAttentionBlock", "VLFuse"]

logger = logging.getLogger(__name__)


class BiMultiHeadAttention(nn.Module):
    """Multi-head attention in both directions between image positions and text tokens.

    The image queries double as the keys of the text branch, so one logit matrix serves both
    softmaxes: over tokens for each image position and over image positions for each token.
    Without ``update_lang`` only the image branch exists (no ``values_v_proj``, ``out_l_proj``).
    """

    #: parameters of the text branch (absent without ``update_lang``)
    TEXT_BRANCH = ("values_v_proj", "out_l_proj")

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        update_lang: bool = True,
        attention_impl: str = "reassociated",
    ):
        """
        Args:
            v_dim (int): visual feature width C.
            l_dim (int): language feature width D.
            embed_dim (int): joint attention width (split over the heads).
            num_heads (int): number of heads.
            dropout (float): dropout on both attention probability maps (training only).
            update_lang (bool): also compute the text branch (image -> text attention).
            attention_impl (str): kernel name in ``FUSION_ATTENTION_IMPLS``.
        """
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.update_lang = update_lang
        self.attention_impl = attention_impl
        self.kernel = get_fusion_attention(attention_impl)

        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim) if update_lang else None
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim) if update_lang else None
        for layer in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, E) -> (B * heads, N, head_dim)
        bsz, n, _ = x.shape
        x = x.view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        return x.reshape(bsz * self.num_heads, n, self.head_dim)

    def _merge_heads(self, x: torch.Tensor, bsz: int) -> torch.Tensor:
        # (B * heads, N, head_dim) -> (B, N, E)
        n = x.shape[1]
        x = x.view(bsz, self.num_heads, n, self.head_dim).transpose(1, 2)
        return x.reshape(bsz, n, self.embed_dim)

    def forward(
        self,
        visual: torch.Tensor,
        lang: torch.Tensor,
        attention_mask_l: torch.Tensor | None = None,
    ) -> Tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            visual: (B, N, C) visual sequence (all levels concatenated).
            lang: (B, L, D) token features.
            attention_mask_l: (B, L) text attention mask (1 valid, 0 padding) or None.

        Returns:
            (delta_v, delta_l): (B, N, C) and (B, L, D) attention outputs (before layer scale);
            ``delta_l`` is None without ``update_lang``.
        """
        if getattr(self.kernel, "module_level", False):
            return self.kernel(self, visual, lang, attention_mask_l)
        bsz = visual.shape[0]
        query = self._split_heads(self.v_proj(visual) * self.scale)
        key = self._split_heads(self.l_proj(lang))
        value_l = self._split_heads(self.values_l_proj(lang))
        value_v = self._split_heads(self.values_v_proj(visual)) if self.update_lang else None
        out_v, out_l = self.kernel(
            query,
            key,
            value_l,
            value_v,
            attention_mask_l,
            num_heads=self.num_heads,
            dropout=self.dropout,
            training=self.training,
        )
        out_v = self.out_v_proj(self._merge_heads(out_v, bsz))
        if out_l is None:
            return out_v, None
        return out_v, self.out_l_proj(self._merge_heads(out_l, bsz))


class BiAttentionBlock(nn.Module):
    """Pre-norm bidirectional attention with layer scale (``BiAttentionBlockForCheckpoint``).

    The residual base is the layer-normed input: ``v_new = LN_v(v) + gamma_v * delta_v``. The
    official block replaces each stream by its normalised version, and released checkpoints
    depend on it (reference §5.1, §16.3). Without ``update_lang`` the text stream is only read
    (no ``gamma_l``, no text branch in :class:`BiMultiHeadAttention`).
    """

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        init_values: float = 1e-4,
        update_lang: bool = True,
        attention_impl: str = "reassociated",
    ):
        """
        Args:
            v_dim (int): visual feature width C.
            l_dim (int): language feature width D.
            embed_dim (int): joint attention width.
            num_heads (int): number of heads.
            dropout (float): attention-probability dropout.
            init_values (float): initial value of the layer-scale vectors (GLIP: 1/NUM_CONVS).
            update_lang (bool): also return updated token features.
            attention_impl (str): kernel name in ``FUSION_ATTENTION_IMPLS``.
        """
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(
            v_dim=v_dim,
            l_dim=l_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            update_lang=update_lang,
            attention_impl=attention_impl,
        )
        self.gamma_v = nn.Parameter(init_values * torch.ones(v_dim))
        if update_lang:
            self.gamma_l = nn.Parameter(init_values * torch.ones(l_dim))
        else:
            self.gamma_l = None

    def forward(
        self,
        visual: torch.Tensor,
        lang: torch.Tensor,
        attention_mask_l: torch.Tensor | None = None,
        text_to_image: bool = True,
    ) -> Tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            visual: (B, N, C) visual sequence.
            lang: (B, L, D) token features.
            attention_mask_l: (B, L) text attention mask or None.
            text_to_image (bool): False: the image features get no update from the text
                (``LN_v(v)`` is returned), so they depend on the image alone; the text still
                reads the image. Captioning uses it (see :class:`VLFuse`).

        Returns:
            (visual, lang): updated (B, N, C) and (B, L, D); ``lang`` is None without
            ``update_lang``.
        """
        visual = self.layer_norm_v(visual)
        lang = self.layer_norm_l(lang)
        delta_v, delta_l = self.attn(visual, lang, attention_mask_l=attention_mask_l)
        if not text_to_image:
            # The image stream keeps its layer norm but takes nothing from the text.
            return visual, None if delta_l is None else lang + self.gamma_l * delta_l
        visual = visual + self.gamma_v * delta_v
        if delta_l is None:
            return visual, None
        return visual, lang + self.gamma_l * delta_l


class VLFuse(nn.Module):
    """One early-fusion step of the head tower (``dyhead_tower.3i``).

    All feature levels are flattened row-major and concatenated (P3 first) into one visual
    sequence, fused with the tokens by :class:`BiAttentionBlock`, and split back per level.
    Image padding is not masked.

    ``update_lang=False`` builds a fusion that updates the image features only, for a block
    whose fused token features reach no loss (the last block when the dot product takes the
    language backbone's features). The official model computes that text update and discards
    it; building it would leave trainable parameters without a gradient, which
    DistributedDataParallel rejects. A checkpoint's text-update entries (``b_attn.gamma_l``,
    ``b_attn.attn.values_v_proj.*``, ``b_attn.attn.out_l_proj.*``) are dropped on load with
    a log line; the image-side outputs are unchanged.

    Causal text (``lang["causal"]``, GLIPv2 captioning): the text->image direction is switched
    off, so the image features stay a function of the image alone (``LN_v(v)``), while each
    token still attends over the image positions. A token's update is a softmax over image
    positions for that token alone, so with causal self-attention on the text side nothing of
    a later token reaches an earlier one through the image.
    """

    #: state-dict entries (relative to the module) that exist only with ``update_lang``
    TEXT_UPDATE_KEYS = ("b_attn.gamma_l",) + tuple(
        f"b_attn.attn.{name}.{p}"
        for name in BiMultiHeadAttention.TEXT_BRANCH
        for p in ("weight", "bias")
    )

    def __init__(
        self,
        v_dim: int,
        l_dim: int,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.1,
        init_values: float = 1e-4,
        use_checkpoint: bool = False,
        update_lang: bool = True,
        attention_impl: str = "reassociated",
    ):
        """
        Args:
            v_dim, l_dim, embed_dim, num_heads, dropout, init_values: see
                :class:`BiAttentionBlock`.
            use_checkpoint (bool): recompute the fusion in the backward pass during training
                (activation checkpointing; saves memory, numerically neutral).
            update_lang (bool): also update ``lang["hidden"]`` (else it passes through).
            attention_impl (str): kernel name in ``FUSION_ATTENTION_IMPLS``.
        """
        super().__init__()
        self.b_attn = BiAttentionBlock(
            v_dim=v_dim,
            l_dim=l_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            init_values=init_values,
            update_lang=update_lang,
            attention_impl=attention_impl,
        )
        self.use_checkpoint = use_checkpoint
        self.update_lang = update_lang
        if not update_lang:
            self._register_load_state_dict_pre_hook(self._drop_text_update_keys)

    def _drop_text_update_keys(self, state_dict, prefix, *args, **kwargs):
        dropped = [prefix + k for k in self.TEXT_UPDATE_KEYS if prefix + k in state_dict]
        for key in dropped:
            del state_dict[key]
        if dropped:
            logger.info(
                "Dropped checkpoint entries of a text update whose output reaches no loss "
                "(MODEL.FUSION.DOT_PRODUCT_FEATURES 'backbone', last fusion block): %s",
                dropped,
            )

    def _fuse(self, causal: bool, masks: torch.Tensor, hidden: torch.Tensor, *visual: torch.Tensor):
        sizes = [feat.shape[-2:] for feat in visual]
        flat = torch.cat([feat.flatten(2).transpose(1, 2) for feat in visual], dim=1)
        new_v, new_l = self.b_attn(flat, hidden, attention_mask_l=masks, text_to_image=not causal)
        new_v = new_v.transpose(1, 2)  # (B, C, N)
        out, start = [], 0
        for h, w in sizes:
            out.append(new_v[:, :, start : start + h * w].reshape(new_v.shape[0], -1, h, w))
            start += h * w
        return tuple(out) if new_l is None else (new_l, *out)

    def forward(self, state: Dict) -> Dict:
        """
        Args:
            state (dict): ``visual``: list of (B, C, H_l, W_l); ``lang``: dict with ``hidden``
                (B, L, D), ``masks`` (B, L) and optionally ``causal`` (bool; see below).

        Returns:
            dict: a new state with fused ``visual`` maps and (with ``update_lang``) fused
            ``lang["hidden"]``; other language entries are passed through.
        """
        visual: List[torch.Tensor] = list(state["visual"])
        lang = state["lang"]
        args = (bool(lang.get("causal", False)), lang["masks"], lang["hidden"], *visual)
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            outs = torch.utils.checkpoint.checkpoint(self._fuse, *args, use_reentrant=False)
        else:
            outs = self._fuse(*args)
        if not self.update_lang:
            return {"visual": list(outs), "lang": dict(lang)}
        return {"visual": list(outs[1:]), "lang": {**lang, "hidden": outs[0]}}
