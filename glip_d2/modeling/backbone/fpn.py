"""GLIP's FPN (P3-P7, P6/P7 from P5, DropBlock in training) on top of Swin (reference §3).

Written for glip_d2 after the architecture of the official ``microsoft/GLIP``
``modeling/backbone/fpn.py`` and ``layers/dropblock.py`` (MIT licence). Module attribute names
follow the official ones so that ``backbone.fpn.*`` checkpoint keys load unchanged.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from .swin import GLIPSwinTransformer

__all__ = ["DropBlock2d", "GLIPFPN", "GLIPSwinFPN", "build_glip_swin_fpn_backbone"]


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al., 2018) with the official GLIP semantics.

    In training, block centres are sampled with probability ``gamma = drop_prob / block_size**2``
    per position (one mask per image, shared by all channels), grown to ``block_size`` squares by
    a stride-1 max-pool, zeroed, and the output is rescaled by ``numel(mask) / sum(mask)`` over
    the whole batch. Identity in eval mode.

    Args:
        drop_prob (float): ``drop_prob`` of the paper (before the block-size correction).
        block_size (int): side of the dropped squares.
    """

    def __init__(self, drop_prob: float, block_size: int):
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.block_size = int(block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(N, C, H, W)``.

        Returns:
            Tensor: ``(N, C, H, W)``.
        """
        if not self.training or self.drop_prob == 0.0:
            return x
        gamma = self.drop_prob / self.block_size**2
        n, _, h, w = x.shape
        centres = (torch.rand(n, 1, h, w, device=x.device) < gamma).to(x.dtype)
        dropped = F.max_pool2d(
            centres, kernel_size=self.block_size, stride=1, padding=self.block_size // 2
        )
        if self.block_size % 2 == 0:
            # An even kernel with padding k//2 gives one extra row and column.
            dropped = dropped[:, :, :-1, :-1]
        keep = 1.0 - dropped
        # The clamp only matters when every position is dropped (a tiny map); the official
        # code divides by zero there.
        scale = keep.numel() / keep.sum().clamp(min=1.0)
        return x * keep * scale

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


def _kaiming_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
    # maskrcnn_benchmark's conv_with_kaiming_uniform without GN/ReLU: bias, "same" padding.
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2
    )
    nn.init.kaiming_uniform_(conv.weight, a=1)
    nn.init.constant_(conv.bias, 0)
    return conv


class LastLevelP6P7(nn.Module):
    """P6 = 3x3 stride-2 conv on P5; P7 = 3x3 stride-2 conv on ReLU(P6).

    Args:
        channels (int): channels of P5, P6 and P7.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = _kaiming_conv(channels, channels, 3, stride=2)
        self.p7 = _kaiming_conv(channels, channels, 3, stride=2)

    def forward(self, p5: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            p5 (Tensor): ``(N, C, H, W)`` FPN output (not the backbone's C5).

        Returns:
            list[Tensor]: ``[p6, p7]``, ``(N, C, ceil(H/2), ceil(W/2))`` and half of that.
        """
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class GLIPFPN(nn.Module):
    """Top-down FPN on three maps (strides 8, 16, 32) with P6/P7 on top.

    Lateral ``fpn_inner{2,3,4}`` 1x1 convs and output ``fpn_layer{2,3,4}`` 3x3 convs; the
    numbering starts at 2 because the official input list begins with an unused stride-4 entry.
    The coarser merged map is upsampled with nearest interpolation to the lateral's size.

    Args:
        in_channels (Sequence[int]): channels of the three inputs, finest first.
        out_channels (int): FPN channels.
        drop_block (nn.Module or None): applied in training to the merged maps of the two finer
            levels before their output conv (not to the coarsest level, and not to the map
            passed further down).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        drop_block: nn.Module | None = None,
    ):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"GLIPFPN takes 3 input levels, got {len(in_channels)}")
        self.num_inputs = len(in_channels)
        for idx, channels in enumerate(in_channels, start=2):
            self.add_module(f"fpn_inner{idx}", _kaiming_conv(channels, out_channels, 1))
            self.add_module(f"fpn_layer{idx}", _kaiming_conv(out_channels, out_channels, 3))
        self.top_blocks = LastLevelP6P7(out_channels)
        self.drop_block = drop_block

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features (Sequence[Tensor]): ``(N, C_l, H_l, W_l)``, finest first.

        Returns:
            list[Tensor]: five ``(N, out_channels, H_l, W_l)`` maps, P3 (finest) to P7.
        """
        idx = self.num_inputs + 1
        last_inner = getattr(self, f"fpn_inner{idx}")(features[-1])
        results = [getattr(self, f"fpn_layer{idx}")(last_inner)]
        for feature in reversed(features[:-1]):
            idx -= 1
            lateral = getattr(self, f"fpn_inner{idx}")(feature)
            if lateral.shape[-2:] != last_inner.shape[-2:]:
                last_inner = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + last_inner
            merged = last_inner
            if self.drop_block is not None and self.training:
                merged = self.drop_block(merged)
            results.insert(0, getattr(self, f"fpn_layer{idx}")(merged))
        results.extend(self.top_blocks(results[-1]))
        return results


class GLIPSwinFPN(Backbone):
    """GLIP's visual backbone: ``body`` (Swin) followed by ``fpn`` (:class:`GLIPFPN`).

    State-dict keys equal the official ``backbone.body.*`` and ``backbone.fpn.*`` keys.
    Outputs ``p3`` .. ``p7`` (names from the strides of ``in_features``).
    """

    @configurable
    def __init__(
        self,
        *,
        body: Backbone,
        in_features: Sequence[str] = ("stage3", "stage4", "stage5"),
        out_channels: int = 256,
        drop_block_prob: float = 0.3,
        drop_block_size: int = 3,
        size_divisibility: int = 32,
    ):
        """
        Args:
            body (Backbone): bottom-up network giving ``in_features`` (e.g.
                :class:`GLIPSwinTransformer`).
            in_features (Sequence[str]): three body outputs, finest first (strides 8, 16, 32).
            out_channels (int): FPN channels.
            drop_block_prob (float): DropBlock ``drop_prob`` in training; 0 disables it.
            drop_block_size (int): DropBlock block side.
            size_divisibility (int): input padding the model was trained with (the official
                ``DATALOADER.SIZE_DIVISIBILITY``); the network itself accepts any size.
        """
        super().__init__()
        body_shapes = body.output_shape()
        missing = [f for f in in_features if f not in body_shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not outputs of the body")
        self.body = body
        self.in_features = list(in_features)
        drop_block = DropBlock2d(drop_block_prob, drop_block_size) if drop_block_prob > 0 else None
        self.fpn = GLIPFPN(
            [body_shapes[f].channels for f in self.in_features], out_channels, drop_block
        )
        strides = [body_shapes[f].stride for f in self.in_features]
        strides += [strides[-1] * 2, strides[-1] * 4]
        self._out_features = [f"p{int(math.log2(s))}" for s in strides]
        self._out_feature_strides = dict(zip(self._out_features, strides))
        self._out_feature_channels = {f: out_channels for f in self._out_features}
        self._size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec | None = None):
        fpn = cfg.MODEL.GLIP_FPN
        return {
            "body": GLIPSwinTransformer(cfg, input_shape),
            "in_features": list(fpn.IN_FEATURES),
            "out_channels": fpn.OUT_CHANNELS,
            "drop_block_prob": fpn.DROP_PROB if fpn.DROP_BLOCK else 0.0,
            "drop_block_size": fpn.DROP_SIZE,
            "size_divisibility": cfg.DATALOADER.SIZE_DIVISIBILITY,
        }

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): ``(B, 3, H, W)`` normalised, padded images.

        Returns:
            dict[str, Tensor]: ``p3`` .. ``p7``, each ``(B, out_channels, ceil(H/s), ceil(W/s))``
            for strides ``s`` = 8 .. 128 (ceil at every halving).
        """
        features = self.body(x)
        outputs = self.fpn([features[f] for f in self.in_features])
        return dict(zip(self._out_features, outputs))

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_glip_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> GLIPSwinFPN:
    """Swin + FPN from ``MODEL.SWIN``, ``MODEL.GLIP_FPN`` and ``MODEL.BACKBONE.FREEZE_AT``.

    Args:
        cfg (CfgNode): a config with :func:`glip_d2.config.add_glip_config` applied.
        input_shape (ShapeSpec): image channels.

    Returns:
        GLIPSwinFPN: outputs ``p3`` .. ``p7``.
    """
    return GLIPSwinFPN(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_glip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> GLIPSwinFPN:
    """Detectron2's ResNet (``MODEL.RESNETS``, e.g. depth 50 or 101) + GLIP's FPN.

    The body is ``detectron2.modeling.build_resnet_backbone``; ``MODEL.GLIP_FPN.IN_FEATURES``
    must name three of its outputs (``res3``, ``res4``, ``res5``). Freezing follows Detectron2's
    ``MODEL.BACKBONE.FREEZE_AT`` for ResNets.

    Returns:
        GLIPSwinFPN: outputs ``p3`` .. ``p7`` (the class takes any body).
    """
    from detectron2.modeling.backbone import build_resnet_backbone

    fpn = cfg.MODEL.GLIP_FPN
    return GLIPSwinFPN(
        body=build_resnet_backbone(cfg, input_shape),
        in_features=list(fpn.IN_FEATURES),
        out_channels=fpn.OUT_CHANNELS,
        drop_block_prob=fpn.DROP_PROB if fpn.DROP_BLOCK else 0.0,
        drop_block_size=fpn.DROP_SIZE,
        size_divisibility=cfg.DATALOADER.SIZE_DIVISIBILITY,
    )
