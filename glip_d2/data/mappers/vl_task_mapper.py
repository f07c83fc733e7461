"""Mapping of GLIPv2's understanding records (VQA questions, image captions) to model inputs.

A record with ``task`` "vqa" or "caption" (what ``register_vqa``, ``register_coco_karpathy``
and the ``glip_shapes`` VQA / caption sets give) keeps the image path of
:class:`GroundingDatasetMapper` (reading, bad-image handling, ``INPUT`` augmentations) and gets
its text here; every other record is mapped by :class:`GroundingDatasetMapper` unchanged.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from ...utils.answer_vocab import load_answer_vocab
from ..prompts import mlm_generator, tokenize_prompt
from ..train_loader import STREAM_VISIT_KEY
from .grounding_mapper import GroundingDatasetMapper, _sample_key

__all__ = ["UNDERSTANDING_TASKS", "VLTaskDatasetMapper", "load_answer_vocab"]

logger = logging.getLogger(__name__)

#: record ``task`` values mapped here
UNDERSTANDING_TASKS = ("vqa", "caption")


class VLTaskDatasetMapper(GroundingDatasetMapper):
    """:class:`GroundingDatasetMapper` plus VQA and caption records.

    Output of a VQA record: ``image``, ``height``, ``width``, ``image_id``, ``question_id``,
    ``task`` "vqa", ``input_ids`` / ``attention_mask`` (L,) of ``[CLS] question [SEP]``; in
    training also ``answer_target_ids`` (K,) int64 and ``answer_target_scores`` (K,) float32:
    the vocabulary answers with a non-zero soft score (its VQA accuracy against the record's
    ``answers``). Questions whose answers are all outside the vocabulary keep an all-zero
    target (as in VQAv2 practice; they still teach the "no" of every answer).

    Output of a caption record: ``image``, ``height``, ``width``, ``image_id``, ``task``
    "caption"; in training also ``input_ids`` / ``attention_mask`` of ``[CLS] caption [SEP]``,
    the caption being one of the record's ``captions`` per visit, drawn from (``SEED``, the
    record, the pass over the data), so a run draws the same with any worker count or resume.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        answers: Optional[Sequence[str]] = None,
        caption_seed: int = 0,
        **kwargs,
    ):
        """
        Args:
            is_train (bool): training or test mode.
            answers (list[str]): the VQA answer vocabulary (``MODEL.VQA.ANSWER_VOCAB``); None
                without VQA.
            caption_seed (int): non-negative seed of the reference drawn per visit.
            kwargs: :class:`GroundingDatasetMapper` arguments.
        """
        super().__init__(is_train, **kwargs)
        self.answers = list(answers) if answers is not None else None
        self._answer_index = {a: i for i, a in enumerate(self.answers or [])}
        self.caption_seed = int(caption_seed)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        args = GroundingDatasetMapper.from_config(cfg, is_train)
        args["caption_seed"] = args["mlm_seed"]
        if cfg.MODEL.VQA_ON:
            args["answers"] = load_answer_vocab(cfg.MODEL.VQA.ANSWER_VOCAB)
        return args

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        task = dataset_dict.get("task")
        if task not in UNDERSTANDING_TASKS:
            return super().__call__(dataset_dict)
        d = dict(dataset_dict)
        image = self._read_image(d)
        if image is None:  # a skipped unreadable training image: the last good one
            if self._last_good is not None:
                return self(self._last_good)
            shape = (d.get("height") or 64, d.get("width") or 64, 3)
            image = np.full(shape, 128, dtype=np.uint8)
        elif self.is_train and self.on_bad_image == "skip":
            self._last_good = dict(dataset_dict)
        d.setdefault("height", image.shape[0])
        d.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if task == "vqa":
            d.update(self._vqa_fields(d))
        elif self.is_train:
            d.update(self._text_fields(self._draw_caption(d)))
        d.pop("annotations", None)
        return d

    def _text_fields(self, text: str) -> Dict[str, torch.Tensor]:
        enc = tokenize_prompt(self.tokenizer, text, self.max_query_len)
        return {
            "input_ids": torch.as_tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.as_tensor(enc["attention_mask"], dtype=torch.long),
        }

    def _vqa_fields(self, d: Dict[str, Any]) -> Dict[str, Any]:
        question = d.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                f"VQA record {d.get('question_id')} (image {d.get('file_name')}) has no question"
            )
        fields: Dict[str, Any] = self._text_fields(question)
        if self.is_train:
            if self.answers is None:
                raise ValueError(
                    "VQA training records need MODEL.VQA_ON and an answer vocabulary "
                    "(MODEL.VQA.ANSWER_VOCAB)"
                )
            answers = d.get("answers")
            if not answers:
                raise ValueError(
                    f"VQA training record {d.get('question_id')} (image {d.get('file_name')}) "
                    "has no answers"
                )
            from ..datasets.vqa import answer_targets

            targets = answer_targets(answers, self._answer_index)
            ids = sorted(targets)
            fields["answer_target_ids"] = torch.tensor(ids, dtype=torch.long)
            fields["answer_target_scores"] = torch.tensor(
                [targets[i] for i in ids], dtype=torch.float32
            )
        return fields

    def _draw_caption(self, d: Dict[str, Any]) -> str:
        captions = d.get("captions")
        if not captions:
            raise ValueError(
                f"Caption record of image {d.get('image_id')} ({d.get('file_name')}) has no "
                "captions"
            )
        visit = int(d.get(STREAM_VISIT_KEY, 0))
        rng = mlm_generator(self.caption_seed, _sample_key(d), visit)
        return str(captions[int(rng.integers(len(captions)))])
