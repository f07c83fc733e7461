"""GLIPv2's pre-training terms as criterion terms (GLIPv2 reference §3.2, §3.3).

* :class:`RegionWordTerm` (``loss_region_word``): :class:`RegionWordContrastiveLoss` fed from
  the head pass, the ATSS assignment and the mapper's concept fields.
* :class:`MaskedLanguageModelTerm` (``loss_mlm``): :class:`MaskedLanguageModelLoss` on the
  fused token features against the mapper's ``mlm_labels``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .base import CriterionInputs, LossTerm
from .mlm import MaskedLanguageModelLoss, tie_lm_decoder
from .region_word import RegionWordContrastiveLoss, RegionWordState

__all__ = ["RegionWordTerm", "MaskedLanguageModelTerm"]

#: region label of caption-phrase boxes in code mode (the official ``original_od_label`` pad)
_CODE_PHRASE_BOX = -10
#: concept that never matches (tokens without an entry, caption phrases in code mode)
_NO_CONCEPT = -1


def _field(x: Mapping[str, Any], key: str, term: str) -> Any:
    if key not in x:
        raise KeyError(
            f"{term} needs the input field '{key}' (made by glip_d2.data's "
            f"GroundingDatasetMapper in training); image {x.get('image_id', x.get('file_name'))} "
            "lacks it"
        )
    return x[key]


class RegionWordTerm(RegionWordContrastiveLoss, LossTerm):
    """L_inter on the head pass.

    Paper mode reads the pre-fusion token features and, per prompt entry, the mapper's
    ``prompt_concepts`` (the normalised category name or phrase text); ``phrase_positives``
    False gives caption phrases no concept, so they match only inside their own image (through
    the box's own token map). Code mode reads the dot product's normalised token features and
    the contiguous class ids of detection prompts (caption boxes -10, caption tokens -1), as
    the official code does with dataset category ids.

    ``selection_override`` (a list of per-image ``(positives, pads)`` anchor indices) replays a
    recorded draw instead of drawing, and ``record_state`` keeps the last call's
    :class:`RegionWordState` in ``last_state``; both are for tests and debugging.
    """

    names = ("loss_region_word",)

    def __init__(self, *, phrase_positives: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.phrase_positives = phrase_positives
        self.selection_override: Optional[Sequence[Tuple[torch.Tensor, torch.Tensor]]] = None
        self.record_state = False
        self.last_state: Optional[RegionWordState] = None

    def _concepts(self, x: Mapping[str, Any], device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(entry concepts (K,), GT-box concepts (G,)) of one input."""
        name = "MODEL.GLIPV2.REGION_WORD"
        is_phrase = torch.as_tensor(_field(x, "prompt_is_phrase", name), device=device).bool()
        entry_of_box = x["instances"].gt_prompt_entry.to(device).long()
        if self.mode == "paper":
            entries = torch.as_tensor(_field(x, "prompt_concepts", name), device=device).long()
            if not self.phrase_positives:
                entries = torch.where(is_phrase, torch.full_like(entries, _NO_CONCEPT), entries)
            boxes = entries[entry_of_box]
        else:
            class_ids = torch.as_tensor(_field(x, "prompt_class_ids", name), device=device).long()
            entries = torch.where(is_phrase, torch.full_like(class_ids, _NO_CONCEPT), class_ids)
            boxes = torch.where(
                is_phrase[entry_of_box],
                torch.full_like(entry_of_box, _CODE_PHRASE_BOX),
                entries[entry_of_box],
            )
        return entries, boxes

    def forward(self, inputs: CriterionInputs) -> Dict[str, torch.Tensor]:
        head = inputs.head
        device = head.text_masks.device
        entry_maps: List[torch.Tensor] = []
        entry_concepts: List[torch.Tensor] = []
        gt_concepts: List[torch.Tensor] = []
        length = head.text_masks.shape[1]
        for x in inputs.targets:
            entries, boxes = self._concepts(x, device)
            entry_maps.append(torch.as_tensor(x["positive_map"], device=device).bool()[:, :length])
            entry_concepts.append(entries)
            gt_concepts.append(boxes)
        text = head.text_prefusion if self.mode == "paper" else head.text_for_dot_product
        loss = super().forward(
            visual=head.flat_fpn_features(),
            text=text,
            text_mask=head.text_masks,
            matched=inputs.assignment.matched,
            is_pos=inputs.assignment.is_pos,
            gt_concepts=gt_concepts,
            gt_token_maps=[m.bool() for m in inputs.gt_token_maps],
            entry_maps=entry_maps,
            entry_concepts=entry_concepts,
            num_pos_avg=inputs.num_pos_avg,
            selection=self.selection_override,
            return_state=self.record_state,
        )
        if self.record_state:
            loss, self.last_state = loss
        return {"loss_region_word": loss}


class MaskedLanguageModelTerm(MaskedLanguageModelLoss, LossTerm):
    """L_mlm: the LM head on the fused token features (before normalisation) against the
    mapper's ``mlm_labels`` (-100 = not scored); 0, not NaN, when nothing is scored."""

    names = ("loss_mlm",)

    def tie_decoder_to(self, word_embeddings: torch.nn.Parameter) -> None:
        """Share the decoder weight with the language model's (V, D) word embeddings."""
        tie_lm_decoder(self.head, word_embeddings, "MODEL.GLIPV2.MLM.TIE_WORD_EMBEDDINGS")

    def forward(self, inputs: CriterionInputs) -> Dict[str, torch.Tensor]:
        # The masked prompt's own head pass when the grounding losses saw the clean prompt
        # (MODEL.GLIPV2.MLM.GROUNDING_PROMPT "clean"), else the one shared pass.
        head = inputs.cache.get("mlm_head", inputs.head)
        labels = torch.stack(
            [torch.as_tensor(_field(x, "mlm_labels", "MODEL.GLIPV2.MLM")) for x in inputs.targets]
        ).to(head.text_fused.device)
        return {"loss_mlm": super().forward(head.text_fused, labels)}
