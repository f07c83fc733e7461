"""The GLIP prediction head: VL-DyHead tower, box/centerness convs and the token classifier."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .dyhead import build_vldyhead_tower


class Scale(nn.Module):
    """A learnable scalar multiplier (per-level box-delta scale)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GLIPHead(nn.Module):
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
        num_levels: int,
        num_convs: int,
        num_groups: int,
        num_classes: int,
        fusion_type: str,
        fusion_embed_dim: int,
        fusion_num_heads: int,
        fusion_dropout: float,
        fused_dot_product: bool,
        use_dyrelu: bool,
        use_dyfuse: bool,
        use_deform: bool,
        use_checkpoint: bool,
        prior_prob: float,
        log_scale: float,
    ):
        """
        Args:
            in_channels (int): FPN channels C (also the fusion's v_dim).
            lang_dim (int): width D of the language features.
            bert_config: transformers ``BertConfig`` for the per-block BERT layers.
            num_levels (int): feature levels (5: P3-P7).
            num_convs (int): DyHead blocks.
            num_groups (int): GroupNorm groups.
            num_classes (int): width of the unused ``cls_logits`` conv (checkpoint compat).
            fusion_type (str): "MHA-B" or "none".
            fused_dot_product (bool): the dot product uses the tower's fused text features
                (T (C), L) rather than the backbone's masked output (T (A)).
            prior_prob (float): initial foreground probability of ``bias0``.
            log_scale (float): initial dot-product log temperature.
        """
        super().__init__()
        self.fused_dot_product = fused_dot_product and fusion_type != "none"
        self.dyhead_tower = build_vldyhead_tower(
            num_convs=num_convs,
            channels=in_channels,
            lang_dim=lang_dim,
            bert_config=bert_config,
            fusion_type=fusion_type,
            fused_dot_product=self.fused_dot_product,
            fusion_embed_dim=fusion_embed_dim,
            fusion_num_heads=fusion_num_heads,
            fusion_dropout=fusion_dropout,
            num_groups=num_groups,
            use_dyrelu=use_dyrelu,
            use_dyfuse=use_dyfuse,
            use_deform=use_deform,
            use_checkpoint=use_checkpoint,
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
    def from_config(cls, cfg, in_channels: int, lang_dim: int, bert_config):
        h, f = cfg.MODEL.GLIP_HEAD, cfg.MODEL.FUSION
        if f.DOT_PRODUCT_FEATURES not in ("fused", "backbone"):
            raise ValueError(
                f"MODEL.FUSION.DOT_PRODUCT_FEATURES must be 'fused' or 'backbone', got "
                f"'{f.DOT_PRODUCT_FEATURES}'"
            )
        return {
            "in_channels": in_channels,
            "lang_dim": lang_dim,
            "bert_config": bert_config,
            "num_levels": len(h.IN_FEATURES),
            "num_convs": h.NUM_CONVS,
            "num_groups": h.NUM_GROUPS,
            "num_classes": h.NUM_CLASSES,
            "fusion_type": f.TYPE,
            "fusion_embed_dim": f.EMBED_DIM,
            "fusion_num_heads": f.NUM_HEADS,
            "fusion_dropout": f.DROPOUT,
            "fused_dot_product": f.DOT_PRODUCT_FEATURES == "fused",
            "use_dyrelu": h.USE_DYRELU,
            "use_dyfuse": h.USE_DYFUSE,
            "use_deform": h.USE_DFCONV,
            "use_checkpoint": f.USE_CHECKPOINT,
            "prior_prob": h.PRIOR_PROB,
            "log_scale": h.LOG_SCALE,
        }

    def token_embeddings(self, lang: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project token features for the dot product.

        Args:
            lang (dict): language features after the tower (``hidden``, ``embedded``).

        Returns:
            (tokens, bias): tokens (B, L, C) projected, L2-normalised/2 features; bias (B, L).
        """
        embedding = lang["hidden"] if self.fused_dot_product else lang["embedded"]
        embedding = F.normalize(embedding, p=2, dim=-1)
        tokens = self.dot_product_projection_text(embedding / 2.0)
        bias = (embedding * self.bias_lang).sum(-1) + self.bias0
        return tokens, bias

    def forward(
        self, features: List[torch.Tensor], lang: Dict[str, torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """
        Args:
            features: per level (B, C, H_l, W_l), P3 first.
            lang (dict): ``hidden`` (B, L, D), ``embedded`` (B, L, D), ``masks`` (B, L).

        Returns:
            (logits, deltas, centerness), each a list over levels: dot-product logits
            (B, H_l*W_l, L); box deltas after the level's Scale (B, 4, H_l, W_l); centerness
            logits (B, 1, H_l, W_l).
        """
        state = self.dyhead_tower({"visual": list(features), "lang": dict(lang)})
        tokens, bias = self.token_embeddings(state["lang"])
        temperature = self.log_scale.exp()
        logits, deltas, centerness = [], [], []
        for level, x in enumerate(state["visual"]):
            deltas.append(self.scales[level](self.bbox_pred(x)))
            centerness.append(self.centerness(x))
            queries = x.flatten(2).transpose(1, 2)  # (B, HW, C), not normalised
            dot = torch.matmul(queries, tokens.transpose(-1, -2)) / temperature + bias[:, None]
            logits.append(dot.clamp(min=-50000, max=50000))
        return logits, deltas, centerness
