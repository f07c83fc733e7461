"""DyHead blocks and the VL-DyHead tower of GLIP.

Re-implemented from the description of ``Conv3x3Norm``, ``DyConv`` and the tower construction
of ``VLDyHead`` (``maskrcnn_benchmark/modeling/rpn/vldyhead.py``), ``DYReLU``
(``maskrcnn_benchmark/layers/dyrelu.py``) and ``ModulatedDeformConv``
(``maskrcnn_benchmark/layers/deform_conv.py`` and its CUDA kernel) in microsoft/GLIP (MIT
licence); see reference §5 and §5.2. Parameter names follow the official state dict.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion.bert_layer import BertFusionLayer
from ..fusion.bi_attention import VLFuse
from .deform_conv import get_deform_conv

__all__ = [
    "ModulatedDeformConv",
    "Conv3x3Norm",
    "DyReLU",
    "DyConv",
    "build_vldyhead_tower",
]


def _h_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


def _reinterpret_planes(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Read a (B, K, H, W) buffer as (B, K, height, width), as the official CUDA kernel does.

    The kernel takes each sample's data pointer and indexes plane k at ``k * height * width``,
    without checking the buffer's shape; for a smaller output this reads the first
    ``K * height * width`` values of the sample in memory order.
    """
    bsz, planes = t.shape[:2]
    flat = t.reshape(bsz, -1)
    if flat.shape[1] < planes * height * width:
        raise ValueError(
            f"offset/mask buffer of shape {tuple(t.shape)} is too small for a "
            f"{height}x{width} output"
        )
    return flat[:, : planes * height * width].reshape(bsz, planes, height, width)


class ModulatedDeformConv(nn.Module):
    """Modulated deformable convolution (DCNv2), computed by a kernel picked by name
    (:data:`~glip_d2.modeling.head.deform_conv.DEFORM_CONV_IMPLS`).

    Offsets are (dy, dx) pairs per kernel tap in row-major tap order; the mask is already
    sigmoid-activated. When the offset/mask maps are larger than the output (GLIP computes them
    on the output level and reuses them for the coarser input level), they are reinterpreted
    like the official kernel does; official checkpoints were trained with this (reference §5.2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = True,
        impl: str = "auto",
    ):
        super().__init__()
        self._kernel = get_deform_conv(impl)  # a clear error for an unknown name
        self.impl = impl
        self.stride = stride
        self.padding = padding
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # The official layer's own init; DyConv.init_weights does not touch it (not nn.Conv2d).
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C_in, H_in, W_in) input.
            offset: (B, 2*k*k, H, W) sampling offsets with H*W >= the output's H_out*W_out.
            mask: (B, k*k, H, W) modulation in [0, 1].

        Returns:
            (B, C_out, H_out, W_out).
        """
        k, s, p = self.kernel_size, self.stride, self.padding
        out_h = (x.shape[-2] + 2 * p - k) // s + 1
        out_w = (x.shape[-1] + 2 * p - k) // s + 1
        if tuple(offset.shape[-2:]) != (out_h, out_w):
            offset = _reinterpret_planes(offset, out_h, out_w)
        if tuple(mask.shape[-2:]) != (out_h, out_w):
            mask = _reinterpret_planes(mask, out_h, out_w)
        return self._kernel(x, offset, self.weight, self.bias, s, p, mask)


class Conv3x3Norm(nn.Module):
    """3x3 conv (modulated deformable or plain) followed by GroupNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        num_groups: int,
        deformable: bool,
        deform_impl: str = "auto",
    ):
        """
        Args:
            in_channels (int): input channels.
            out_channels (int): output channels.
            stride (int): 1 or 2.
            num_groups (int): GroupNorm groups (GLIP: MODEL.GROUP_NORM.NUM_GROUPS = 16).
            deformable (bool): modulated deformable conv (needs offset/mask) or nn.Conv2d.
            deform_impl (str): the deformable conv's kernel (``DEFORM_CONV_IMPLS``).
        """
        super().__init__()
        if deformable:
            self.conv = ModulatedDeformConv(
                in_channels, out_channels, 3, stride=stride, padding=1, impl=deform_impl
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn = nn.GroupNorm(num_groups, out_channels)

    def forward(
        self,
        x: torch.Tensor,
        offset: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: (B, C_in, H_in, W_in).
            offset, mask: see :class:`ModulatedDeformConv` (deformable only).

        Returns:
            (B, C_out, H_out, W_out).
        """
        if isinstance(self.conv, ModulatedDeformConv):
            x = self.conv(x, offset, mask)
        else:
            x = self.conv(x)
        return self.bn(x)


class DyReLU(nn.Module):
    """Dynamic ReLU with two input-dependent linear pieces per channel (task-aware attention).

    ``out = max(x * a1 + b1, x * a2 + b2)`` with the coefficients predicted from the globally
    pooled input and centred at ``a1 = 1, a2 = b1 = b2 = 0``.
    """

    def __init__(self, channels: int, reduction: int = 4, lambda_a: float = 2.0):
        """
        Args:
            channels (int): channels C (input and output).
            reduction (int): squeeze factor of the hidden FC layer.
            lambda_a (float): range of the slopes around their initial values.
        """
        super().__init__()
        self.channels = channels
        self.lambda_a = lambda_a
        # Indices 0 and 2 match the official keys (relu.fc.0, relu.fc.2).
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, 4 * channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W).

        Returns:
            (B, C, H, W).
        """
        bsz, c = x.shape[:2]
        y = _h_sigmoid(self.fc(x.mean(dim=(2, 3)))).view(bsz, 4 * c, 1, 1)
        a1, b1, a2, b2 = torch.split(y, c, dim=1)
        a1 = (a1 - 0.5) * self.lambda_a + 1.0
        a2 = (a2 - 0.5) * self.lambda_a
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.max(x * a1 + b1, x * a2 + b2)


class DyConv(nn.Module):
    """One DyHead block over the feature pyramid (``dyhead_tower.3i+2``).

    For each level l it averages (with scale-aware attention) three convs: ``DyConv[1]`` on l,
    ``DyConv[2]`` (stride 2) on the finer level l-1 and ``DyConv[0]`` on the coarser level l+1,
    upsampled bilinearly with ``align_corners=True``. All three use the offsets/masks computed
    from level l. The result goes through DyReLU. Language features pass through.
    """

    def __init__(
        self,
        channels: int,
        num_groups: int = 16,
        use_dyrelu: bool = True,
        use_dyfuse: bool = True,
        use_deform: bool = True,
        deform_impl: str = "auto",
    ):
        """
        Args:
            channels (int): channels C of every level.
            num_groups (int): GroupNorm groups.
            use_dyrelu (bool): DyReLU (else ReLU).
            use_dyfuse (bool): scale-aware attention (else a plain mean).
            use_deform (bool): modulated deformable convs with a learned offset conv.
            deform_impl (str): their kernel (``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL``).
        """
        super().__init__()
        self.DyConv = nn.ModuleList(
            [
                Conv3x3Norm(channels, channels, 1, num_groups, use_deform, deform_impl),
                Conv3x3Norm(channels, channels, 1, num_groups, use_deform, deform_impl),
                Conv3x3Norm(channels, channels, 2, num_groups, use_deform, deform_impl),
            ]
        )
        if use_dyfuse:
            # Index 1 holds the conv so that keys read AttnConv.1.*; the ReLU before the hard
            # sigmoid keeps each level's weight in [0.5, 1].
            self.AttnConv = nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, 1, kernel_size=1),
                nn.ReLU(inplace=True),
            )
        else:
            self.AttnConv = None
        self.relu = DyReLU(channels) if use_dyrelu else nn.ReLU()
        # PyTorch default init, as officially (the offset conv is not zero-initialised).
        self.offset = nn.Conv2d(channels, 27, kernel_size=3, padding=1) if use_deform else None

        # Official init_weights: only nn.Conv2d inside DyConv (the plain-conv variant) and
        # AttnConv; deformable convs keep their own init.
        init_scope = [self.DyConv] if self.AttnConv is None else [self.DyConv, self.AttnConv]
        for module in (m for parent in init_scope for m in parent.modules()):
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, state: Dict) -> Dict:
        """
        Args:
            state (dict): ``visual``: list of (B, C, H_l, W_l), finest first, each level half
                the size of the previous one (rounded up); ``lang``: passed through.

        Returns:
            dict: a new state with the updated ``visual`` maps.
        """
        visual: List[torch.Tensor] = state["visual"]
        outputs = []
        for level, feature in enumerate(visual):
            kwargs = {}
            if self.offset is not None:
                offset_mask = self.offset(feature)
                kwargs = {"offset": offset_mask[:, :18], "mask": offset_mask[:, 18:].sigmoid()}

            gathered = [self.DyConv[1](feature, **kwargs)]
            if level > 0:
                gathered.append(self.DyConv[2](visual[level - 1], **kwargs))
            if level < len(visual) - 1:
                coarser = self.DyConv[0](visual[level + 1], **kwargs)
                gathered.append(
                    F.interpolate(
                        coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True
                    )
                )
            stacked = torch.stack(gathered)  # (n, B, C, H, W)
            if self.AttnConv is not None:
                attn = _h_sigmoid(torch.stack([self.AttnConv(fea) for fea in gathered]))
                stacked = stacked * attn
            outputs.append(stacked.mean(dim=0))

        return {"visual": [self.relu(x) for x in outputs], "lang": state["lang"]}


def build_vldyhead_tower(
    *,
    num_convs: int,
    channels: int,
    lang_dim: int,
    bert_config,
    fusion_type: str,
    fused_dot_product: bool,
    fusion_embed_dim: int = 2048,
    fusion_num_heads: int = 8,
    fusion_dropout: float = 0.1,
    num_groups: int = 16,
    use_dyrelu: bool = True,
    use_dyfuse: bool = True,
    use_deform: bool = True,
    use_checkpoint: bool = False,
    attention_impl: str = "reassociated",
    deform_impl: str = "auto",
) -> nn.Sequential:
    """Build GLIP's ``dyhead_tower`` with the official module indices.

    With ``fusion_type="MHA-B"`` block i occupies indices 3i (:class:`VLFuse`), 3i+1
    (:class:`BertFusionLayer`) and 3i+2 (:class:`DyConv`). When the dot product uses the
    backbone's text features, the last block's text outputs reach no loss: its BERT layer is
    ``nn.Identity`` (as officially) and its fusion has no text update (``update_lang=False``;
    the official model computes and discards it), so every trainable parameter gets a
    gradient, as DistributedDataParallel requires. With ``"none"`` the tower is
    ``num_convs`` :class:`DyConv` blocks. Each module maps a state dict
    ``{"visual": [(B, C, H_l, W_l)] * levels, "lang": {"hidden": (B, L, D), "masks": (B, L),
    "embedded": (B, L, D), ...}}`` to a new one.

    Args:
        num_convs (int): DyHead blocks.
        channels (int): visual channels C (FPN width; the fusion's v_dim).
        lang_dim (int): language width D (the fusion's l_dim).
        bert_config (transformers.BertConfig): config of the per-block BERT layers.
        fusion_type (str): "MHA-B" or "none".
        fused_dot_product (bool): the head's dot product uses the tower's fused text features,
            so the last block keeps its text update and BERT layer.
        fusion_embed_dim (int): fusion attention width (GLIP: 2048).
        fusion_num_heads (int): fusion heads (GLIP: 8).
        fusion_dropout (float): fusion attention dropout.
        num_groups (int): GroupNorm groups in the DyHead convs.
        use_dyrelu, use_dyfuse, use_deform (bool): see :class:`DyConv`.
        use_checkpoint (bool): activation checkpointing of the fusion in training.
        attention_impl (str): the fusion's attention kernel (``MODEL.FUSION.ATTENTION_IMPL``).
        deform_impl (str): the deformable convs' kernel (``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL``).

    Returns:
        nn.Sequential: the tower.
    """
    if fusion_type not in ("MHA-B", "none"):
        raise ValueError(f"fusion_type must be 'MHA-B' or 'none', got '{fusion_type}'")
    tower: List[nn.Module] = []
    for i in range(num_convs):
        if fusion_type == "MHA-B":
            # The fused text features of block i feed block i+1's fusion; those of the last
            # block reach a loss only through the fused dot product.
            update_lang = i < num_convs - 1 or fused_dot_product
            tower.append(
                VLFuse(
                    v_dim=channels,
                    l_dim=lang_dim,
                    embed_dim=fusion_embed_dim,
                    num_heads=fusion_num_heads,
                    dropout=fusion_dropout,
                    init_values=1.0 / num_convs,
                    use_checkpoint=use_checkpoint,
                    update_lang=update_lang,
                    attention_impl=attention_impl,
                )
            )
            tower.append(BertFusionLayer(bert_config) if update_lang else nn.Identity())
        tower.append(
            DyConv(
                channels,
                num_groups=num_groups,
                use_dyrelu=use_dyrelu,
                use_dyfuse=use_dyfuse,
                use_deform=use_deform,
                deform_impl=deform_impl,
            )
        )
    return nn.Sequential(*tower)
