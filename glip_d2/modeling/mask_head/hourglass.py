"""The Hourglass ROI feature extractor of GLIPv2's VL mask head (GLIPv2 reference §4.2).

Parameter names follow the official checkpoint (``mask_hg{i}.{up1,low1,low2,low3}.conv{1,2,3}``),
so ``roi_heads.mask.feature_extractor.*`` loads by a prefix rename. Two official details that
are easy to miss:

* every conv is **3x3**: the official layer builder's third argument is the dilation, not the
  kernel size, so the bottleneck's middle conv is 3x3 with dilation 3 (padding 3) and the
  outer two 3x3 with dilation 1;
* GroupNorm (``NORM "GN"``) only exists inside ``low2`` / ``low3`` and the recursive
  Hourglass; ``up1`` and ``low1`` never get it. With GN a conv has no bias and is stored as
  ``convN.0`` (conv) / ``convN.1`` (norm), the layout of the official builder's
  ``nn.Sequential`` (not covered by an official fixture: the fixture has no GN).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Residual", "Hourglass", "HourglassFeatureExtractor"]


def _conv3x3(in_ch: int, out_ch: int, dilation: int, norm: str, num_groups: int) -> nn.Module:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=not norm)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    if not norm:
        return conv
    if norm != "GN":
        raise ValueError(f"MODEL.ROI_MASK_HEAD.NORM '{norm}' is not one of ['', 'GN']")
    return nn.Sequential(conv, nn.GroupNorm(num_groups, out_ch))


class Residual(nn.Module):
    """Pre-activation bottleneck: ``x + conv3(relu(conv2(relu(conv1(relu(x))))))``, widths
    C -> C/2 -> C/2 -> C_out, dilations 1, 3, 1 (all 3x3); a 3x3 ``skip`` conv replaces the
    identity when C != C_out."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "", num_groups: int = 32):
        super().__init__()
        mid = out_ch // 2
        self.conv1 = _conv3x3(in_ch, mid, 1, norm, num_groups)
        self.conv2 = _conv3x3(mid, mid, 3, norm, num_groups)
        self.conv3 = _conv3x3(mid, out_ch, 1, norm, num_groups)
        self.skip: Optional[nn.Module] = (
            _conv3x3(in_ch, out_ch, 1, "", num_groups) if in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(x))
        y = self.conv2(F.relu(y))
        y = self.conv3(F.relu(y))
        return y + (x if self.skip is None else self.skip(x))


class Hourglass(nn.Module):
    """``up1(x) + upsample_nearest_2x(low3(low2(low1(maxpool_2x2(x)))))``; ``low2`` is an
    Hourglass of depth ``n - 1`` when ``n > 1``, else a Residual. Spatial sizes must halve
    evenly ``n`` times (14x14 ROIs: ``n = 1``)."""

    def __init__(self, n: int, channels: int, norm: str = "", num_groups: int = 32):
        super().__init__()
        if n < 1:
            raise ValueError(f"MODEL.ROI_MASK_HEAD.HG_SCALE must be >= 1, got {n}")
        self.up1 = Residual(channels, channels)
        self.low1 = Residual(channels, channels)
        self.low2 = (
            Hourglass(n - 1, channels, norm, num_groups)
            if n > 1
            else Residual(channels, channels, norm, num_groups)
        )
        self.low3 = Residual(channels, channels, norm, num_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2, 2))))
        return self.up1(x) + F.interpolate(low, scale_factor=2, mode="nearest")


class HourglassFeatureExtractor(nn.Module):
    """``NUM_HOURGLASS`` blocks ``relu(mask_hg{i}(x))`` on the pooled (R, C, S, S) ROIs; the
    width C stays that of the head's maps."""

    def __init__(
        self,
        channels: int,
        num_hourglass: int = 1,
        hg_scale: int = 1,
        norm: str = "",
        num_groups: int = 32,
        pooler_resolution: int = 14,
    ):
        super().__init__()
        if pooler_resolution % (2**hg_scale):
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION {pooler_resolution} does not halve "
                f"evenly HG_SCALE={hg_scale} times (14 needs HG_SCALE 1)"
            )
        self.blocks = []
        for i in range(1, num_hourglass + 1):
            name = f"mask_hg{i}"
            self.add_module(name, Hourglass(hg_scale, channels, norm, num_groups))
            self.blocks.append(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.blocks:
            x = F.relu(getattr(self, name)(x))
        return x
