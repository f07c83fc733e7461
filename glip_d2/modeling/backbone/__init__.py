"""Visual backbones: Swin Transformer and GLIP's FPN (registered in ``BACKBONE_REGISTRY``)."""

from .fpn import (
    GLIPFPN,
    DropBlock2d,
    GLIPSwinFPN,
    build_glip_resnet_fpn_backbone,
    build_glip_swin_fpn_backbone,
)
from .swin import GLIPSwinTransformer

__all__ = [
    "DropBlock2d",
    "GLIPFPN",
    "GLIPSwinFPN",
    "GLIPSwinTransformer",
    "build_glip_resnet_fpn_backbone",
    "build_glip_swin_fpn_backbone",
]
