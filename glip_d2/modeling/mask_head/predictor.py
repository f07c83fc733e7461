"""The language-conditioned mask predictor of GLIPv2 (official ``VLMaskRCNNC4Predictor``,
GLIPv2 reference §4.2): one mask logit map per token, from the fused token features."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VLMaskPredictor"]


class VLMaskPredictor(nn.Module):
    """``relu(ConvTranspose2d(C, C, 2, stride 2))`` doubles the ROI maps (14 -> 28); each pixel
    is then dotted with the projected, L2-normalised fused tokens:

        e = normalize(text);  t = Linear_D->C(e / 2);  b = e . bias_lang
        logit[r, j, y, x] = (pixel[r, :, y, x] . t_j) / exp(log_scale) + b_j,  clamped +-50000

    There is no scalar ``bias0`` (unlike the detection head). Initialisation: kaiming-normal
    (fan_out, relu) for every weight, the text Linear included; zero biases and ``bias_lang``;
    ``log_scale`` = ``log_scale_init``.
    """

    def __init__(self, channels: int, lang_dim: int, log_scale_init: float = 0.0):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(channels, channels, 2, 2)
        self.dot_product_projection_text = nn.Linear(lang_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        self.bias_lang = nn.Parameter(torch.zeros(lang_dim))
        for layer in (self.conv5_mask, self.dot_product_projection_text):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def pixel_features(self, roi_features: torch.Tensor) -> torch.Tensor:
        """(R, C, S, S) extractor output -> (R, C, 2S, 2S)."""
        return F.relu(self.conv5_mask(roi_features))

    def token_embeddings(self, text: torch.Tensor):
        """(B, L, D) fused token features -> projected tokens (B, L, C) and biases (B, L)."""
        e = F.normalize(text, p=2, dim=-1)
        return self.dot_product_projection_text(e / 2.0), (e * self.bias_lang).sum(-1)

    def phrase_logits(
        self,
        pixels: torch.Tensor,
        tokens: torch.Tensor,
        bias: torch.Tensor,
        token_maps: List[torch.Tensor],
    ) -> torch.Tensor:
        """The mean over each ROI's tokens of its per-token logit maps (the mean of logits,
        as the official loss and post-processor take it).

        Args:
            pixels (Tensor): (R, C, M, M) from :meth:`pixel_features`.
            tokens (Tensor): (R, L, C) projected tokens of each ROI's image.
            bias (Tensor): (R, L) token biases of each ROI's image.
            token_maps: (R, L) bool, the tokens of each ROI's phrase (at least one each).

        Returns:
            Tensor: (R, M, M) logits.
        """
        token_maps = torch.as_tensor(token_maps)
        if len(pixels) == 0:
            return pixels.new_zeros((0,) + tuple(pixels.shape[-2:]))
        counts = token_maps.sum(1)
        if bool((counts == 0).any()):
            raise ValueError("every ROI needs at least one token of its phrase")
        r, c, m, _ = pixels.shape
        # Only the tokens some ROI uses are scored (the official [R, 256, M, M] map would hold
        # every token slot).
        used = token_maps.any(0).nonzero().flatten()
        flat = pixels.flatten(2).transpose(1, 2)  # (R, M*M, C)
        logits = torch.bmm(flat, tokens[:, used].transpose(1, 2)) / self.log_scale.exp()
        logits = (logits + bias[:, None, used]).clamp(min=-50000, max=50000)
        weights = token_maps[:, used].to(logits.dtype) / counts[:, None].to(logits.dtype)
        return torch.bmm(logits, weights[:, :, None]).view(r, m, m)
