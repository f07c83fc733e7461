"""GLIPv2 visual question answering: an answer classifier on the fused trunk (reference §5).

The question is the text input of the whole GLIP trunk (language backbone, image-text fusion,
DyHead tower). GLIPv2's code was never released and the paper does not spell the head out
(reference §5 marks it unverified), so the choices here are ours, in the OSCAR/VinVL/UNITER
recipe the authors come from:

* **Pooling** (``MODEL.VQA.POOLING``): ``"text+visual"`` (default) concatenates the masked mean
  of the *fused* token features (each question word has attended over the image: "what colour
  is the circle" reads the circle's pixels) with the global mean of the fused visual maps
  (every level averaged, then the levels; the image side has read the question, which helps
  counting). ``"text"`` keeps only the first part, ``"cls"`` the fused ``[CLS]`` feature (as
  VinVL). The fused text carries the answer for attribute questions; the visual mean adds a
  whole-image summary that a few attending tokens can miss.
* **Classifier**: Linear(in, H) - GELU - LayerNorm - Linear(H, A), UNITER/VinVL's answer MLP.
* **Loss** (``loss_vqa``): binary cross-entropy against soft scores, summed over the A answers
  and averaged over the questions (VinVL's ``BCE mean x A``): a question's target for an answer
  is its VQA accuracy with the human answers (glip_d2.data's ``answer_targets``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fusion.tower import DenseHeadOutputs

__all__ = ["VQA_POOLINGS", "VQAHead"]

#: values of ``MODEL.VQA.POOLING``
VQA_POOLINGS = ("text+visual", "text", "cls")


class VQAHead(nn.Module):
    """Answer logits from one head pass of the question (see the module docstring).

    Attributes:
        answers (list[str]): the answer vocabulary; logit ``a`` scores ``answers[a]``.
    """

    def __init__(
        self,
        *,
        text_dim: int,
        visual_dim: int,
        answers: Sequence[str],
        hidden_dim: int = 0,
        pooling: str = "text+visual",
    ):
        """
        Args:
            text_dim (int): width D of the fused token features.
            visual_dim (int): width C of the fused visual maps.
            answers (list[str]): the answer vocabulary (A answers, normalised).
            hidden_dim (int): width H of the classifier; 0: twice its input width.
            pooling (str): one of :data:`VQA_POOLINGS`.
        """
        super().__init__()
        if pooling not in VQA_POOLINGS:
            raise ValueError(f"MODEL.VQA.POOLING '{pooling}' is not one of {list(VQA_POOLINGS)}")
        if len(answers) == 0:
            raise ValueError("MODEL.VQA: the answer vocabulary is empty")
        self.answers = list(answers)
        self.pooling = pooling
        in_dim = text_dim + (visual_dim if pooling == "text+visual" else 0)
        hidden = hidden_dim or 2 * in_dim
        self.classifier = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, eps=1e-12),
            nn.Linear(hidden, len(self.answers)),
        )

    @property
    def num_answers(self) -> int:
        return len(self.answers)

    def pool(self, head: DenseHeadOutputs) -> torch.Tensor:
        """(B, in_dim): the pooled representation of each (image, question) pair."""
        text = head.text_fused
        if self.pooling == "cls":
            return text[:, 0]
        mask = head.text_masks.to(text.dtype).unsqueeze(-1)
        pooled = (text * mask).sum(1) / mask.sum(1).clamp(min=1)
        if self.pooling == "text":
            return pooled
        visual = torch.stack([f.mean(dim=(2, 3)) for f in head.fused_visual]).mean(0)
        return torch.cat([pooled, visual.to(pooled.dtype)], dim=-1)

    def forward(self, head: DenseHeadOutputs) -> torch.Tensor:
        """
        Args:
            head (DenseHeadOutputs): the trunk's pass over (image, question).

        Returns:
            Tensor: (B, A) answer logits.
        """
        return self.classifier(self.pool(head))

    @staticmethod
    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """BCE summed over answers, averaged over questions.

        Args:
            logits (Tensor): (B, A).
            targets (Tensor): (B, A) soft scores in [0, 1].

        Returns:
            Tensor: scalar, float32.
        """
        if logits.shape != targets.shape:
            raise ValueError(
                f"VQA logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ"
            )
        bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
        return bce / max(logits.shape[0], 1)
