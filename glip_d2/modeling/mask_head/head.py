"""GLIPv2's language-conditioned ROI mask head, as a Detectron2 ``ROI_MASK_HEAD_REGISTRY``
entry (GLIPv2 reference §4).

The one-stage GLIP detections (or the GT boxes) are pooled from the **fused** DyHead maps,
refined by Hourglass blocks, upsampled to 28x28 and dotted with the fused token features: one
logit map per token, averaged over a phrase's tokens. It is class-agnostic but conditioned on
the prompt, so it segments whatever the prompt names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import BitMasks, PolygonMasks
from torch import nn

from .hourglass import HourglassFeatureExtractor
from .loss import mask_loss, mask_targets, match_rois, positive_rois
from .pooler import InclusiveROIPooler
from .predictor import VLMaskPredictor

__all__ = ["MaskTrainingStep", "VLHourglassMaskHead"]


@dataclass
class MaskTrainingStep:
    """One mask-loss computation, with what it was computed from (ROIs of all images
    concatenated, image 0 first).

    Attributes:
        loss (Tensor): ``loss_mask``, unweighted.
        levels (Tensor): (R,) pooler level of every ROI (0 = finest).
        matched (Tensor): (R,) matched GT index within its image, -1 below the IoU threshold.
        positive (Tensor): (P,) indices of the ROIs that get loss.
        targets (Tensor): (P, M, M) 0/1 targets.
        logits (Tensor): (P, M, M) phrase-mean mask logits.
    """

    loss: torch.Tensor
    levels: torch.Tensor
    matched: torch.Tensor
    positive: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor


@ROI_MASK_HEAD_REGISTRY.register()
class VLHourglassMaskHead(nn.Module):
    """GLIPv2's VL mask head (official ``ROIMaskHead`` with ``HourglassFPNFeatureExtractor``
    and ``VLMaskRCNNC4Predictor``).

    Built as Detectron2 builds mask heads, ``VLHourglassMaskHead(cfg, input_shape,
    lang_dim=D)``, with ``input_shape`` the head maps' ``ShapeSpec(channels=C)``. Called
    differently from Detectron2's ``(x, instances)`` heads, because the predictor needs the
    prompt:

    * ``head(features, boxes, text, token_maps) -> (R, M, M)`` mask logits, where
      ``features`` are the fused maps (per level (B, C, H_l, W_l), P3 first), ``boxes`` per
      image (R_i, 4) inclusive XYXY in input pixels, ``text`` the fused token features
      (B, L, D) and ``token_maps`` per image (R_i, L) bool (the tokens of each box's phrase);
    * ``head.training_step(features, rois, text, gt_boxes, gt_token_maps, gt_masks,
      gt_mask_valid)`` -> :class:`MaskTrainingStep` (``loss_mask`` and what it came from).

    Parameter names are the official ones under ``roi_heads.mask.`` (renamed to
    ``mask_head.`` by the checkpoint converter).
    """

    @configurable
    def __init__(
        self,
        *,
        channels: int,
        lang_dim: int,
        pooler: InclusiveROIPooler,
        num_hourglass: int = 1,
        hg_scale: int = 1,
        norm: str = "",
        num_groups: int = 32,
        log_scale_init: float = 0.0,
        match_iou: float = 0.5,
    ):
        """
        Args:
            channels (int): width of the fused maps (and of the Hourglass).
            lang_dim (int): width of the fused token features.
            pooler (InclusiveROIPooler): ROI pooling over the levels.
            num_hourglass, hg_scale, norm, num_groups: the Hourglass extractor.
            log_scale_init (float): the predictor's initial log temperature.
            match_iou (float): ROIs matching a GT at this IoU or more get loss.
        """
        super().__init__()
        self.pooler = pooler
        resolution = pooler.output_size[0]
        self.feature_extractor = HourglassFeatureExtractor(
            channels, num_hourglass, hg_scale, norm, num_groups, pooler_resolution=resolution
        )
        self.predictor = VLMaskPredictor(channels, lang_dim, log_scale_init)
        self.mask_size = 2 * resolution
        self.match_iou = match_iou

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec, lang_dim: Optional[int] = None):
        head = cfg.MODEL.ROI_MASK_HEAD
        if lang_dim is None:
            raise ValueError("VLHourglassMaskHead needs lang_dim (the token feature width)")
        strides = list(cfg.MODEL.ATSS.ANCHOR_STRIDES)
        return {
            "channels": input_shape.channels,
            "lang_dim": lang_dim,
            "pooler": InclusiveROIPooler(
                head.POOLER_RESOLUTION,
                scales=[1.0 / s for s in strides],
                sampling_ratio=head.POOLER_SAMPLING_RATIO,
                pooler_type=head.POOLER_TYPE,
            ),
            "num_hourglass": head.NUM_HOURGLASS,
            "hg_scale": head.HG_SCALE,
            "norm": head.NORM,
            "num_groups": cfg.MODEL.GLIP_HEAD.NUM_GROUPS,
            "log_scale_init": cfg.MODEL.GLIP_HEAD.LOG_SCALE,
            "match_iou": head.MATCH_IOU,
        }

    # ------------------------------------------------------------------ shared pieces
    def pixels(self, features: List[torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        """(R, C, M, M) per-pixel features of the ROIs (pool, Hourglass, upsample)."""
        return self.predictor.pixel_features(self.feature_extractor(self.pooler(features, boxes)))

    def _logits(self, pixels, text, image_of_roi, token_maps) -> torch.Tensor:
        tokens, bias = self.predictor.token_embeddings(text)
        return self.predictor.phrase_logits(
            pixels, tokens[image_of_roi], bias[image_of_roi], token_maps
        )

    @staticmethod
    def _image_of_roi(boxes: List[torch.Tensor], device) -> torch.Tensor:
        return torch.cat(
            [
                torch.full((len(b),), i, dtype=torch.int64, device=device)
                for i, b in enumerate(boxes)
            ]
        )

    # ------------------------------------------------------------------ inference
    def forward(
        self,
        features: List[torch.Tensor],
        boxes: List[torch.Tensor],
        text: torch.Tensor,
        token_maps: List[torch.Tensor],
    ) -> torch.Tensor:
        """Phrase-mean mask logits (R, M, M) of the given boxes (see the class docstring);
        ``sigmoid`` gives the official mask probabilities."""
        device = features[0].device
        if sum(len(b) for b in boxes) == 0:
            return features[0].new_zeros((0, self.mask_size, self.mask_size))
        pixels = self.pixels(features, boxes)
        maps = torch.cat([torch.as_tensor(m, device=device).bool() for m in token_maps])
        return self._logits(pixels, text, self._image_of_roi(boxes, device), maps)

    # ------------------------------------------------------------------ training
    def training_step(
        self,
        features: List[torch.Tensor],
        rois: List[torch.Tensor],
        text: torch.Tensor,
        gt_boxes: List[torch.Tensor],
        gt_token_maps: List[torch.Tensor],
        gt_masks: List[Union[PolygonMasks, BitMasks]],
        gt_mask_valid: List[torch.Tensor],
    ) -> MaskTrainingStep:
        """The official VL mask loss over a batch of any size.

        Every ROI is pooled (as the official head does; memory grows with the ROI count), but
        only ROIs matching a GT box at IoU >= ``match_iou`` whose GT has tokens and a mask
        (``gt_mask_valid``) are scored: their target is the GT mask cropped to the ROI and
        resized to M x M, their prediction the mean of the token logit maps over the GT's
        tokens; BCE-with-logits averaged over all their pixels.

        Args:
            features: fused maps per level (B, C, H_l, W_l).
            rois: per image (R_i, 4) inclusive training boxes (detections and/or GT boxes).
            text (Tensor): (B, L, D) fused token features.
            gt_boxes: per image (G_i, 4) inclusive GT boxes.
            gt_token_maps: per image (G_i, L) bool.
            gt_masks: per image G_i masks (``PolygonMasks`` or ``BitMasks``) in input pixels.
            gt_mask_valid: per image (G_i,) bool, False where an annotation has no mask.
        """
        device = features[0].device
        matched_all, positive, pos_boxes, pos_gt_maps, targets = [], [], [], [], []
        start = 0
        for i, boxes in enumerate(rois):
            matched = match_rois(gt_boxes[i], boxes, self.match_iou)
            matched_all.append(matched)
            inds, gt_inds = positive_rois(matched, gt_token_maps[i], gt_mask_valid[i])
            positive.append(inds + start)
            pos_boxes.append(boxes[inds])
            pos_gt_maps.append(gt_token_maps[i][gt_inds].bool())
            targets.append(mask_targets(gt_masks[i], gt_inds, boxes[inds], self.mask_size))
            start += len(boxes)
        positive = torch.cat(positive)
        # The official head runs the Hourglass on every ROI; only the scored ones reach the
        # loss, and each ROI's output depends on that ROI alone, so only they are computed
        # here: the same loss and gradients for a fraction of the memory.
        pixels = self.pixels(features, pos_boxes)
        if len(positive):
            image_of_roi = self._image_of_roi(rois, device)[positive]
            logits = self._logits(pixels, text, image_of_roi, torch.cat(pos_gt_maps))
        else:
            # Nothing to score: a zero that still reaches every parameter of the head (so
            # DistributedDataParallel sees them all used).
            tokens, bias = self.predictor.token_embeddings(text)
            zero = (pixels.sum() + tokens.sum() + bias.sum() + self.predictor.log_scale.sum()) * 0
            logits = zero + pixels.new_zeros((0, self.mask_size, self.mask_size))
        targets = torch.cat(targets).to(device=logits.device, dtype=logits.dtype)
        all_rois = torch.cat(rois) if rois else features[0].new_zeros((0, 4))
        return MaskTrainingStep(
            loss=mask_loss(logits, targets),
            levels=self.pooler.levels(all_rois),
            matched=torch.cat(matched_all) if matched_all else all_rois.new_zeros(0).long(),
            positive=positive,
            targets=targets,
            logits=logits,
        )
