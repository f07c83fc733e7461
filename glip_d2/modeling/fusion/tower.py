"""The fusion + DyHead tower of GLIP with its dense predictions, as one module.

:class:`VLDyHead` runs the image-text fusion tower (reference §5) on the FPN maps and the
language features and returns a :class:`DenseHeadOutputs`: the per-level predictions the ATSS
losses and the post-processor use, and the intermediate features that other heads and losses
read (GLIPv2's region-word loss reads the pre-fusion maps, its LM and mask heads the fused
ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..head.dyhead import build_vldyhead_tower
from ..scratch import scratch_scope
from .attention import get_fusion_attention

__all__ = ["FusionSpec", "DenseHeadOutputs", "VLDyHead", "Scale"]


@dataclass(frozen=True)
class FusionSpec:
    """The image-text fusion settings (``MODEL.FUSION``), in one object.

    Attributes:
        type (str): ``"MHA-B"`` (bidirectional attention before every DyHead block) or
            ``"none"``.
        embed_dim (int), num_heads (int), dropout (float): the attention's width, heads and
            attention-probability dropout.
        use_checkpoint (bool): activation checkpointing of the fusion in training.
        attention_impl (str): kernel name (``FUSION_ATTENTION_IMPLS``).
        fused_dot_product (bool): the dot product reads the tower's fused token features
            (T (C), L) instead of the language backbone's (T (A)).
    """

    type: str = "MHA-B"
    embed_dim: int = 2048
    num_heads: int = 8
    dropout: float = 0.1
    use_checkpoint: bool = False
    attention_impl: str = "reassociated"
    fused_dot_product: bool = True

    def __post_init__(self):
        if self.type not in ("MHA-B", "none"):
            raise ValueError(f"MODEL.FUSION.TYPE must be 'MHA-B' or 'none', got '{self.type}'")
        get_fusion_attention(self.attention_impl)  # a clear error for an unknown name
        if self.type == "none":
            object.__setattr__(self, "fused_dot_product", False)

    @classmethod
    def from_config(cls, cfg) -> FusionSpec:
        f = cfg.MODEL.FUSION
        if f.DOT_PRODUCT_FEATURES not in ("fused", "backbone"):
            raise ValueError(
                f"MODEL.FUSION.DOT_PRODUCT_FEATURES must be 'fused' or 'backbone', got "
                f"'{f.DOT_PRODUCT_FEATURES}'"
            )
        return cls(
            type=f.TYPE,
            embed_dim=f.EMBED_DIM,
            num_heads=f.NUM_HEADS,
            dropout=f.DROPOUT,
            use_checkpoint=f.USE_CHECKPOINT,
            attention_impl=f.ATTENTION_IMPL,
            fused_dot_product=f.DOT_PRODUCT_FEATURES == "fused",
        )


@dataclass
class DenseHeadOutputs:
    """What one pass of :class:`VLDyHead` computes. Lists run over levels, P3 first.

    Attributes:
        logits: (B, H_l*W_l, L) dot-product (anchor, token) logits.
        deltas: (B, 4, H_l, W_l) box deltas after the level's ``Scale``.
        centerness: (B, 1, H_l, W_l) centerness logits.
        fused_visual: (B, C, H_l, W_l) the tower's output maps (the predictions' input).
        fpn_features: (B, C, H_l, W_l) the tower's input maps (pre-fusion).
        text_prefusion: (B, L, D) the language backbone's token features (``hidden``).
        text_fused: (B, L, D) the token features after the tower (equal to
            ``text_prefusion`` without fusion).
        text_for_dot_product: (B, L, D) the L2-normalised token features the dot product
            reads (fused or backbone, ``FusionSpec.fused_dot_product``).
        token_embeddings: (B, L, C) the projected tokens of the dot product.
        token_bias: (B, L) the per-token logit bias.
        text_masks: (B, L) the attention mask.
    """

    logits: List[torch.Tensor]
    deltas: List[torch.Tensor]
    centerness: List[torch.Tensor]
    fused_visual: List[torch.Tensor]
    fpn_features: List[torch.Tensor]
    text_prefusion: torch.Tensor
    text_fused: torch.Tensor
    text_for_dot_product: torch.Tensor
    token_embeddings: torch.Tensor
    token_bias: torch.Tensor
    text_masks: torch.Tensor

    def flat_logits(self) -> torch.Tensor:
        """(B, A, L): every level's logits, concatenated."""
        return torch.cat(self.logits, dim=1)

    def flat_deltas(self) -> torch.Tensor:
        """(B, A, 4): box deltas in anchor order (level-major, row-major inside a level)."""
        return torch.cat([_flat(d, 4) for d in self.deltas], dim=1)

    def flat_centerness(self) -> torch.Tensor:
        """(B, A): centerness logits in anchor order."""
        return torch.cat([_flat(c, 1) for c in self.centerness], dim=1).squeeze(-1)

    def flat_fpn_features(self) -> torch.Tensor:
        """(B, A, C): the pre-fusion FPN feature of every anchor, in anchor order."""
        return torch.cat([_flat(f, f.shape[1]) for f in self.fpn_features], dim=1)


def _flat(t: torch.Tensor, k: int) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, k)


class Scale(nn.Module):
    """A learnable scalar multiplier (per-level box-delta scale)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class VLDyHead(nn.Module):
    """Fusion + DyHead tower and the per-level predictions of GLIP (reference §5).

    State-dict keys equal the official ``rpn.head.*`` keys without the ``rpn.head.`` prefix:
    ``dyhead_tower.N.*``, ``cls_logits``, ``bbox_pred``, ``centerness``, ``scales.N.scale``,
    ``dot_product_projection_text``, ``log_scale``, ``bias_lang``, ``bias0``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        lang_dim: int,
        bert_config,
        fusion: FusionSpec,
        num_levels: int,
        num_convs: int,
        num_groups: int,
        num_classes: int,
        use_dyrelu: bool,
        use_dyfuse: bool,
        use_deform: bool,
        prior_prob: float,
        log_scale: float,
        keep_last_text_update: bool = False,
        deform_impl: str = "auto",
    ):
        """
        Args:
            in_channels (int): FPN channels C (also the fusion's v_dim).
            lang_dim (int): width D of the language features.
            bert_config: transformers ``BertConfig`` for the per-block BERT layers.
            fusion (FusionSpec): the fusion settings.
            num_levels (int): feature levels (5: P3-P7).
            num_convs (int): DyHead blocks.
            num_groups (int): GroupNorm groups.
            num_classes (int): width of the unused ``cls_logits`` conv (checkpoint compat).
            prior_prob (float): initial foreground probability of ``bias0``.
            log_scale (float): initial dot-product log temperature.
            keep_last_text_update (bool): build the last block's text update even when the dot
                product does not read it, because another loss does (GLIPv2's LM head).
            deform_impl (str): the DyHead deformable convs' kernel
                (``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL``).
        """
        super().__init__()
        self.fusion = fusion
        self.fused_dot_product = fusion.fused_dot_product
        self.dyhead_tower = build_vldyhead_tower(
            num_convs=num_convs,
            channels=in_channels,
            lang_dim=lang_dim,
            bert_config=bert_config,
            fusion_type=fusion.type,
            fused_dot_product=self.fused_dot_product or keep_last_text_update,
            fusion_embed_dim=fusion.embed_dim,
            fusion_num_heads=fusion.num_heads,
            fusion_dropout=fusion.dropout,
            num_groups=num_groups,
            use_dyrelu=use_dyrelu,
            use_dyfuse=use_dyfuse,
            use_deform=use_deform,
            use_checkpoint=fusion.use_checkpoint,
            attention_impl=fusion.attention_impl,
            deform_impl=deform_impl,
        )
        bias_value = -math.log((1 - prior_prob) / prior_prob)
        # Kept only so that official checkpoints load; frozen and never used (reference §5.3).
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(in_channels, 1, kernel_size=1)
        for conv in (self.cls_logits, self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.constant_(conv.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, bias_value)
        for p in self.cls_logits.parameters():
            p.requires_grad_(False)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        self.dot_product_projection_text = nn.Linear(lang_dim, in_channels, bias=True)
        self.log_scale = nn.Parameter(torch.tensor([log_scale], dtype=torch.float32))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        self.bias0 = nn.Parameter(torch.tensor([bias_value], dtype=torch.float32))

    @classmethod
    def from_config(
        cls, cfg, in_channels: int, lang_dim: int, bert_config, keep_last_text_update=False
    ):
        h = cfg.MODEL.GLIP_HEAD
        return {
            "in_channels": in_channels,
            "lang_dim": lang_dim,
            "bert_config": bert_config,
            "fusion": FusionSpec.from_config(cfg),
            "num_levels": len(h.IN_FEATURES),
            "num_convs": h.NUM_CONVS,
            "num_groups": h.NUM_GROUPS,
            "num_classes": h.NUM_CLASSES,
            "use_dyrelu": h.USE_DYRELU,
            "use_dyfuse": h.USE_DYFUSE,
            "use_deform": h.USE_DFCONV,
            "prior_prob": h.PRIOR_PROB,
            "log_scale": h.LOG_SCALE,
            "keep_last_text_update": keep_last_text_update,
            "deform_impl": h.DEFORM_CONV_IMPL,
        }

    def forward(
        self, features: List[torch.Tensor], lang: Dict[str, torch.Tensor]
    ) -> DenseHeadOutputs:
        """
        Args:
            features: per level (B, C, H_l, W_l), P3 first.
            lang (dict): ``hidden`` (B, L, D), ``embedded`` (B, L, D), ``masks`` (B, L).

        Returns:
            DenseHeadOutputs.
        """
        # Without autograd the tower's large intermediates reuse scratch buffers.
        with scratch_scope(enabled=not torch.is_grad_enabled()):
            state = self.dyhead_tower({"visual": list(features), "lang": dict(lang)})
        fused_lang = state["lang"]
        embedding = fused_lang["hidden"] if self.fused_dot_product else fused_lang["embedded"]
        embedding = F.normalize(embedding, p=2, dim=-1)
        tokens = self.dot_product_projection_text(embedding / 2.0)
        bias = (embedding * self.bias_lang).sum(-1) + self.bias0
        temperature = self.log_scale.exp()
        logits, deltas, centerness = [], [], []
        for level, x in enumerate(state["visual"]):
            deltas.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
            queries = x.flatten(2).transpose(1, 2)  # (B, HW, C), not normalised
            dot = torch.matmul(queries, tokens.transpose(-1, -2)) / temperature + bias[:, None]
            logits.append(dot.clamp(min=-50000, max=50000))
        return DenseHeadOutputs(
            logits=logits,
            deltas=deltas,
            centerness=centerness,
            fused_visual=list(state["visual"]),
            fpn_features=list(features),
            text_prefusion=lang["hidden"],
            text_fused=fused_lang["hidden"],
            text_for_dot_product=embedding,
            token_embeddings=tokens,
            token_bias=bias,
            text_masks=lang["masks"],
        )
