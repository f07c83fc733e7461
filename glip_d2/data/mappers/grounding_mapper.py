"""The dataset mapper of GLIP: image, augmentation, prompt, tokens and positive maps.

One mapper serves detection records (a prompt from the dataset's category names: sampled
negatives in training, every category, chunked if needed, at test time) and grounding records
(the record's caption and phrase spans). See :class:`GroundingDatasetMapper` for the output.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances, PolygonMasks

from ..annotation_checks import MIN_TRAINING_BOX_SIDE
from ..prompts import (
    MLM_SCOPES,
    DetectionPromptSampler,
    Prompt,
    build_greenlight_map,
    build_grounding_prompt,
    build_tokenizer,
    check_char_spans,
    chunk_categories,
    concept_id,
    mask_tokens,
    mlm_generator,
    positive_map_from_encoding,
    span_cuts_token,
    tokenize_prompt,
)
from ..train_loader import STREAM_VISIT_KEY
from ..transforms import build_glip_augmentation

__all__ = ["BOX_ONLY_ANNOTATIONS", "MASK_FORMATS", "GroundingDatasetMapper", "ImageReadError"]

logger = logging.getLogger(__name__)

_MAX_SPAN_WARNINGS = 20

#: Values of ``MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS`` (the mapper's ``box_only_annotations``).
BOX_ONLY_ANNOTATIONS = ("skip", "box")
#: Values of ``INPUT.MASK_FORMAT`` (Detectron2's key; the mapper's ``mask_format``).
MASK_FORMATS = ("polygon", "bitmask")


class ImageReadError(RuntimeError):
    """An image file is missing, unreadable, or not the size its annotation says."""


class _Vocabulary:
    """The prompt material of one detection dataset (built once per mapper and dataset)."""

    def __init__(self, dataset_name: str, mapper: GroundingDatasetMapper):
        meta = MetadataCatalog.get(dataset_name)
        names = meta.get("prompt_names", None) or meta.get("thing_classes", None)
        if not names:
            raise ValueError(
                f"Dataset '{dataset_name}' has an empty category list (no prompt_names or "
                "thing_classes in its metadata): a detection prompt needs category names"
            )
        prefixes = meta.get("prompt_prefixes", None)
        suffixes = meta.get("prompt_suffixes", None)
        self.sampler: Optional[DetectionPromptSampler] = None
        self.test_fields: List[Dict[str, Any]] = []
        if mapper.is_train:
            self.sampler = DetectionPromptSampler(
                names,
                mapper.tokenizer,
                separator=mapper.separator,
                random_sample_neg=mapper.random_sample_neg,
                full_neg_prob=mapper.full_neg_prob,
                token_budget=mapper.token_budget,
                shuffle=mapper.shuffle,
                prefixes=prefixes,
                suffixes=suffixes,
                background_negative=mapper.background_negative,
            )
        else:
            chunks = chunk_categories(
                names,
                mapper.tokenizer,
                mapper.chunk_size,
                max_len=mapper.max_query_len,
                separator=mapper.separator,
                prefixes=prefixes,
                suffixes=suffixes,
            )
            self.test_fields = [p.encode(mapper.tokenizer, mapper.max_query_len) for p in chunks]


def _clone_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in fields.items()}


class _PromptTargets(NamedTuple):
    """A record's prompt fields and, per annotation, its token map, class and prompt row."""

    fields: Dict[str, Any]
    box_maps: torch.Tensor  # (N, L) bool
    classes: List[int]
    rows: List[int]  # row of ``positive_map`` per annotation (-1: not in the prompt)
    prompt: Optional[Prompt]  # None at test time for detection data
    data_kind: str  # "detection" or "grounding"


def _sample_key(d: Dict[str, Any]) -> int:
    """Stable non-negative key of a record for its MLM generator: its dataset and image id
    (ids repeat across datasets; several captions of one image have their own ids)."""
    text = f"{d.get('dataset_name', '')}\0{d.get('image_id', d.get('file_name'))}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 2


class GroundingDatasetMapper:
    """Map a grounding or detection record to the input dict of the GLIP model.

    Input records (Detectron2 dicts) come from :func:`glip_d2.data.register_coco_grounding`
    (detection: ``dataset_name`` names the metadata with the category names) or
    :func:`glip_d2.data.register_mdetr_grounding` (grounding: ``caption``, and per annotation
    ``tokens_positive`` character spans).

    Output dict: the record's fields (``file_name``, ``image_id``, ``height``, ``width`` = the
    original size, ...) without ``annotations``, plus

    * ``image``: (3, H, W) uint8 tensor in ``image_format`` (BGR by default), augmented;
    * ``caption`` (str); ``input_ids``, ``attention_mask``: (L,) int64, L = ``max_query_len``,
      ``[CLS] ... [SEP]`` then ``[PAD]``;
    * ``positive_map``: (K, L) bool, row k = the tokens (``[CLS]`` = index 0) of prompt entry k
      (a category of a detection prompt, a phrase of a caption);
    * ``prompt_class_ids``: (K,) int64, the contiguous 0-based class of row k (the phrase index
      k for captions; -1 for the optional ``background`` negative);
    * ``phrases``: list of K str, the text of each row;
    * training only, ``instances``: ``gt_boxes`` (``Boxes``, XYXY_ABS in augmented-image
      pixels, Detectron2's continuous convention), ``gt_classes`` (int64, class or phrase
      index), ``gt_positive_map`` (N, L) bool, the union of each box's spans' tokens, and
      ``gt_prompt_entry`` (N,) int64, the row of ``positive_map`` the box belongs to (its
      category's row; its phrase's row);
    * training with masks (``mask_on``, ``MODEL.MASK_ON``), also on ``instances``:
      ``gt_masks``, one mask per box in the augmented image (``PolygonMasks`` for
      ``mask_format="polygon"``, ``BitMasks`` (N, H, W) bool for ``"bitmask"``), made by
      Detectron2's ``transform_instance_annotations`` and ``annotations_to_instances`` (so a
      flip flips them), and ``gt_mask_valid`` (N,) bool, False where the mask is only a
      placeholder and must not be trained. A box without ``segmentation`` gets, by
      ``box_only_annotations``: ``"skip"`` a placeholder (the degenerate polygon
      ``[x1, y1, x1, y1, x1, y1]`` at its box's corner, which rasterises to no pixel, or an
      all-zero bitmask) with ``gt_mask_valid`` False; ``"box"`` its box as a filled rectangle
      (official ``ConvertCocoPolysToMask.get_box_mask``) with ``gt_mask_valid`` True.
      Polygons work with either format, an RLE needs ``"bitmask"``. An image without boxes
      gets ``gt_masks`` of length 0 and ``gt_mask_valid`` of shape (0,);
    * training only, ``prompt_concepts``: (K,) int64, the concept of row k
      (:func:`glip_d2.data.prompts.concept_id` of its text: equal for equal normalised text
      across images, datasets and processes), and ``prompt_is_phrase``: (K,) bool, True for
      caption phrases, False for category names;
    * training with MLM (``mlm``, GLIPv2 L_mlm, reference §3.3): ``mlm_input_ids`` (L,)
      int64, the corrupted ids (the model feeds them to the text encoder instead of
      ``input_ids``), ``mlm_labels`` (L,) int64, the original id at scored positions and -100
      elsewhere, and ``greenlight_map`` (L,) int8 in {-1, 0, 1}
      (:func:`glip_d2.data.prompts.build_greenlight_map`: the whole caption of grounding data,
      the positive category names of detection data). The masks are a function of
      ``(seed, dataset_name and image_id, record[STREAM_VISIT_KEY])``: the draw number the
      training loader adds (:mod:`glip_d2.data.train_loader`), so every pass masks differently
      and a run masks the same with any number of workers and after a resume;
    * test time, when a vocabulary needs several prompts: ``prompt_chunks``, a list of dicts
      with ``caption``, ``input_ids``, ``attention_mask``, ``positive_map``,
      ``prompt_class_ids`` and ``phrases`` (the top-level fields are chunk 0).

    Bad input: an unreadable image raises :class:`ImageReadError` naming the file, or (training
    with ``on_bad_image="skip"``) logs a warning naming it and maps the previous good record
    of this mapper instead (a blank image without boxes if there is none yet). Boxes are
    clipped to the image; boxes at most one pixel wide or high after clipping (the official
    inclusive-pixel rule) are dropped with their spans. A caption span outside the caption
    raises ``ValueError`` naming the annotation; a span that cuts a token is widened to the
    covering tokens with a warning (``on_bad_span="repair"``) or raises (``"error"``). With
    ``mask_on``, an RLE segmentation under ``mask_format="polygon"`` or an RLE whose size is not
    the image's raises ``ValueError`` naming the annotation and image.
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: Sequence[Union[T.Augmentation, T.Transform]],
        image_format: str,
        tokenizer: Any,
        max_query_len: int = 256,
        separator: str = ". ",
        random_sample_neg: int = 85,
        full_neg_prob: float = 0.5,
        token_budget: int = 254,
        shuffle: bool = True,
        chunk_size: int = 0,
        background_negative: bool = False,
        on_bad_image: str = "error",
        on_bad_span: str = "repair",
        mlm: bool = False,
        mlm_mask_prob: float = 0.15,
        mlm_scope: str = "greenlight",
        mlm_seed: int = 0,
        mask_on: bool = False,
        mask_format: str = "polygon",
        box_only_annotations: str = "skip",
        pseudo_min_score: float = 0.0,
        pseudo_score_weighting: bool = False,
    ):
        """
        Args:
            is_train (bool): training (sampled prompts, ``instances``) or test mode.
            augmentations (list): Detectron2 augmentations or transforms.
            image_format (str): ``"BGR"``, ``"RGB"``... (``INPUT.FORMAT``).
            tokenizer: a fast tokenizer, or its name / folder (loaded on first use).
            max_query_len (int): L, the padded token length.
            separator (str): joins category names in detection prompts.
            random_sample_neg, full_neg_prob, token_budget, shuffle, background_negative:
                training prompt sampling, see
                :class:`glip_d2.data.prompts.DetectionPromptSampler`.
            chunk_size (int): categories per test prompt; 0 = as many as fit in L tokens.
            on_bad_image (str): ``"error"`` or ``"skip"`` (training only).
            on_bad_span (str): ``"repair"`` or ``"error"``.
            mlm (bool): add the masked-language-modelling fields (training only; ignored at
                test time, which is never masked).
            mlm_mask_prob (float): share of maskable tokens selected (then 80% ``[MASK]``,
                10% random id, 10% kept).
            mlm_scope (str): which tokens are scored, one of
                :data:`glip_d2.data.prompts.MLM_SCOPES`.
            mlm_seed (int): non-negative seed of the masking (``SEED``; drawn when negative).
            mask_on (bool): add ``gt_masks`` and ``gt_mask_valid`` to the training instances
                (``MODEL.MASK_ON``; test outputs are the same either way).
            mask_format (str): one of :data:`MASK_FORMATS` (``INPUT.MASK_FORMAT``).
            box_only_annotations (str): one of :data:`BOX_ONLY_ANNOTATIONS`
                (``MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS``), the mask of an annotation
                without ``segmentation``: a placeholder with ``gt_mask_valid`` False, or its
                box.
            pseudo_min_score (float): training only: drop annotations whose ``score`` (a
                teacher's pseudo-label score) is below this; annotations without a score are
                gold and always kept (``INPUT.PSEUDO_LABELS.MIN_SCORE``).
            pseudo_score_weighting (bool): training only: add ``gt_weights`` (N,) to the
                instances, each box's ``score`` or 1 for gold boxes, by which the criterion
                weights the box's losses (``INPUT.PSEUDO_LABELS.SCORE_WEIGHTING``).
        """
        if not 0.0 <= pseudo_min_score <= 1.0:
            raise ValueError(
                "INPUT.PSEUDO_LABELS.MIN_SCORE (pseudo_min_score) must be in [0, 1], got "
                f"{pseudo_min_score}"
            )
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if on_bad_span not in ("repair", "error"):
            raise ValueError(f"on_bad_span must be 'repair' or 'error', got {on_bad_span!r}")
        if mlm_scope not in MLM_SCOPES:
            raise ValueError(f"mlm_scope must be one of {MLM_SCOPES}, got {mlm_scope!r}")
        if not 0.0 <= mlm_mask_prob <= 1.0:
            raise ValueError(f"mlm_mask_prob must be in [0, 1], got {mlm_mask_prob}")
        if isinstance(mlm_seed, bool) or not isinstance(mlm_seed, int) or mlm_seed < 0:
            raise ValueError(f"mlm_seed must be a non-negative int, got {mlm_seed!r}")
        if box_only_annotations not in BOX_ONLY_ANNOTATIONS:
            raise ValueError(
                "MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS (box_only_annotations) must be one of "
                f"{BOX_ONLY_ANNOTATIONS}, got {box_only_annotations!r}"
            )
        if mask_format not in MASK_FORMATS:
            raise ValueError(
                f"INPUT.MASK_FORMAT (mask_format) must be one of {MASK_FORMATS}, got "
                f"{mask_format!r}"
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(list(augmentations))
        self.image_format = image_format
        self._tokenizer = tokenizer
        self.max_query_len = max_query_len
        self.separator = separator
        self.random_sample_neg = random_sample_neg
        self.full_neg_prob = full_neg_prob
        self.token_budget = token_budget
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        self.background_negative = background_negative
        self.on_bad_image = on_bad_image
        self.on_bad_span = on_bad_span
        self.mlm = bool(mlm) and is_train
        self.mlm_mask_prob = mlm_mask_prob
        self.mlm_scope = mlm_scope
        self.mlm_seed = mlm_seed
        self.mask_on = bool(mask_on)
        self.mask_format = mask_format
        self.box_only_annotations = box_only_annotations
        self.pseudo_min_score = float(pseudo_min_score)
        self.pseudo_score_weighting = bool(pseudo_score_weighting)
        self._warned_no_visit = False
        self._vocabularies: Dict[str, _Vocabulary] = {}
        self._span_warnings = 0
        self._last_good: Optional[Dict[str, Any]] = None
        mode = "training" if is_train else "inference"
        logger.info(f"[GroundingDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        prompt = cfg.INPUT.PROMPT
        mlm = cfg.MODEL.GLIPV2.MLM
        seed = cfg.SEED
        if seed < 0:
            # Detectron2's "random seed": drawn once here, then pickled to every worker.
            seed = int(np.random.SeedSequence().entropy) % (1 << 62)
            if is_train and mlm.WEIGHT > 0:
                logger.info(f"SEED < 0: MLM masking seeded with {seed}")
        return {
            "is_train": is_train,
            "augmentations": build_glip_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "tokenizer": prompt.TOKENIZER,
            "max_query_len": cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
            "separator": prompt.SEPARATOR,
            "random_sample_neg": prompt.RANDOM_SAMPLE_NEG,
            "full_neg_prob": prompt.FULL_NEG_PROB,
            "token_budget": prompt.TOKEN_BUDGET,
            "shuffle": prompt.SHUFFLE,
            "chunk_size": prompt.CHUNK_SIZE,
            "background_negative": prompt.BACKGROUND_NEGATIVE,
            "on_bad_image": cfg.INPUT.ON_BAD_IMAGE,
            "on_bad_span": prompt.ON_BAD_SPAN,
            "mlm": is_train and mlm.WEIGHT > 0,
            "mlm_mask_prob": mlm.MASK_PROB,
            "mlm_scope": mlm.SCOPE,
            "mlm_seed": seed,
            "mask_on": cfg.MODEL.MASK_ON,
            "mask_format": cfg.INPUT.MASK_FORMAT,
            "box_only_annotations": cfg.MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS,
            "pseudo_min_score": cfg.INPUT.PSEUDO_LABELS.MIN_SCORE,
            "pseudo_score_weighting": cfg.INPUT.PSEUDO_LABELS.SCORE_WEIGHTING,
        }

    @property
    def tokenizer(self):
        """The fast tokenizer (loaded from its name on first use)."""
        if isinstance(self._tokenizer, str):
            self._tokenizer = build_tokenizer(self._tokenizer)
        return self._tokenizer

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Map one record (see the class docstring for the output).

        A skipped unreadable training image is replaced by the last record this mapper mapped
        successfully, or, before any, by a uniform grey image of the record's size without
        boxes. (Returning None, Detectron2's way of skipping, crashes its ``MapDataset`` retry
        on Python >= 3.11.)
        """
        d = copy.deepcopy(dataset_dict)
        image = self._read_image(d)
        if image is None:
            if self._last_good is not None:
                return self(self._last_good)
            shape = (d.get("height") or 64, d.get("width") or 64, 3)
            image = np.full(shape, 128, dtype=np.uint8)
            d["annotations"] = []
        elif self.is_train and self.on_bad_image == "skip":
            self._last_good = copy.deepcopy(dataset_dict)
        height, width = image.shape[:2]
        d.setdefault("height", height)
        d.setdefault("width", width)

        annos = [a for a in d.pop("annotations", []) if not a.get("iscrowd", 0)]
        if self.is_train and self.pseudo_min_score > 0:
            annos = [a for a in annos if a.get("score", 1.0) >= self.pseudo_min_score]
        boxes, annos = self._clip_boxes(annos, height, width, d)
        if self.is_train and self.pseudo_score_weighting:
            # One weight per box, in the order of the rows of ``box_maps`` below.
            box_weights = torch.tensor([float(a.get("score", 1.0)) for a in annos])
        if "caption" in d:
            targets = self._grounding_prompt(d, annos)
        else:
            targets = self._detection_prompt(d, annos)
        fields, box_maps, classes = targets.fields, targets.box_maps, targets.classes
        keep = box_maps.any(dim=1)  # boxes with no token in the prompt cannot be supervised
        boxes = boxes[keep.numpy()]
        with_masks = self.is_train and self.mask_on
        if with_masks:
            annos = [a for a, k in zip(annos, keep.tolist()) if k]  # aligned with ``boxes``
            self._check_segmentations(annos, d, height, width)

        aug_input = T.AugInput(image, boxes=boxes)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d.update(fields)
        if self.is_train:
            image_size = image.shape[:2]
            instances = Instances(image_size)
            gt_boxes = Boxes(torch.as_tensor(aug_input.boxes, dtype=torch.float32).reshape(-1, 4))
            gt_boxes.clip(image_size)
            instances.gt_boxes = gt_boxes
            instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)[keep]
            instances.gt_positive_map = box_maps[keep]
            instances.gt_prompt_entry = torch.as_tensor(targets.rows, dtype=torch.int64)[keep]
            if self.pseudo_score_weighting:
                instances.gt_weights = box_weights[keep]
            if with_masks:
                instances.gt_masks, instances.gt_mask_valid = self._gt_masks(
                    annos, transforms, image_size, gt_boxes
                )
            d["instances"] = instances[gt_boxes.nonempty()]
            d["prompt_concepts"] = torch.as_tensor(
                [concept_id(p) for p in fields["phrases"]], dtype=torch.int64
            )
            d["prompt_is_phrase"] = torch.full(
                (len(fields["phrases"]),), targets.data_kind == "grounding", dtype=torch.bool
            )
            if self.mlm:
                positives = [c for c, k in zip(classes, keep.tolist()) if k]
                d.update(self._mlm_fields(d, targets, positives))
        return d

    def _mlm_fields(
        self, d: Dict[str, Any], targets: _PromptTargets, positive_classes: List[int]
    ) -> Dict[str, torch.Tensor]:
        """Greenlight map and seeded BERT masking of the record's prompt (training)."""
        prompt = targets.prompt
        encoding = tokenize_prompt(self.tokenizer, prompt.caption, self.max_query_len)
        greenlight = build_greenlight_map(
            encoding,
            prompt,
            data_kind=targets.data_kind,
            positive_class_ids=positive_classes if targets.data_kind == "detection" else (),
            scope=self.mlm_scope,
        )
        visit = d.get(STREAM_VISIT_KEY)
        if visit is None:
            if not self._warned_no_visit:
                logger.warning(
                    f"Record of image {d.get('image_id')} has no '{STREAM_VISIT_KEY}' (it does not "
                    "come from glip_d2's training loader): MLM masks as in pass 0, the same in "
                    "every pass"
                )
                self._warned_no_visit = True
            visit = 0
        rng = mlm_generator(self.mlm_seed, _sample_key(d), int(visit))
        masked, labels = mask_tokens(
            d["input_ids"],
            greenlight,
            rng=rng,
            mask_token_id=self.tokenizer.mask_token_id,
            vocab_size=len(self.tokenizer),
            mask_prob=self.mlm_mask_prob,
        )
        return {
            "mlm_input_ids": masked,
            "mlm_labels": labels,
            "greenlight_map": greenlight.to(torch.int8),
        }

    # ------------------------------------------------------------------ image and boxes

    def _read_image(self, d: Dict[str, Any]) -> Optional[np.ndarray]:
        file_name = d["file_name"]
        try:
            image = utils.read_image(file_name, format=self.image_format)
        except Exception as e:  # any decoder error: reported with the file name below
            return self._bad_image(d, f"{type(e).__name__}: {e}")
        expected = (d.get("width"), d.get("height"))
        if None not in expected and (image.shape[1], image.shape[0]) != expected:
            return self._bad_image(
                d,
                f"the image is {image.shape[1]}x{image.shape[0]} (after EXIF orientation) but "
                f"the annotation says {expected[0]}x{expected[1]}",
            )
        return image

    def _bad_image(self, d: Dict[str, Any], reason: str) -> None:
        msg = f"Cannot use image '{d['file_name']}' (image_id {d.get('image_id')}): {reason}"
        if self.is_train and self.on_bad_image == "skip":
            logger.warning(f"{msg}. Skipped (INPUT.ON_BAD_IMAGE = 'skip'); another image is used.")
            return None
        raise ImageReadError(msg)

    @staticmethod
    def _clip_boxes(
        annos: List[Dict[str, Any]], height: int, width: int, d: Dict[str, Any]
    ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        boxes = np.array(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
            dtype=np.float32,
        ).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        # Official boxes are inclusive pixels (x2 = x + w - 1); width <= 1 is empty there.
        side = MIN_TRAINING_BOX_SIDE
        keep = (boxes[:, 2] - boxes[:, 0] > side) & (boxes[:, 3] - boxes[:, 1] > side)
        for a, k in zip(annos, keep):
            if not k:
                logger.debug(
                    f"Image {d.get('image_id')}: annotation {a.get('id')} box {a['bbox']} is "
                    "degenerate after clipping; dropped with its spans"
                )
        return boxes[keep], [a for a, k in zip(annos, keep) if k]

    # ------------------------------------------------------------------ masks

    def _check_segmentations(
        self, annos: List[Dict[str, Any]], d: Dict[str, Any], height: int, width: int
    ) -> None:
        """Errors Detectron2 would raise without naming the annotation (records that did not
        come through glip_d2's loaders, which check the rest)."""
        for a in annos:
            segm = a.get("segmentation")
            if not isinstance(segm, dict):
                continue
            where = f"Image {d.get('image_id')} ('{d.get('file_name')}'): annotation {a.get('id')}"
            if self.mask_format == "polygon":
                raise ValueError(
                    f"{where} has an RLE segmentation, which INPUT.MASK_FORMAT 'polygon' cannot "
                    "hold; set INPUT.MASK_FORMAT 'bitmask'"
                )
            size = [int(v) for v in segm.get("size", ())]
            if size != [height, width]:
                raise ValueError(
                    f"{where} has an RLE segmentation of size [height, width] = {size}, but the "
                    f"image is {[height, width]}"
                )

    def _gt_masks(
        self,
        annos: List[Dict[str, Any]],
        transforms: T.TransformList,
        image_size: Tuple[int, int],
        gt_boxes: Boxes,
    ) -> Tuple[Union[PolygonMasks, BitMasks], torch.Tensor]:
        """``gt_masks`` and ``gt_mask_valid`` of the boxes (one annotation per box, in order),
        in the augmented image of size ``image_size``; ``gt_boxes`` are the augmented boxes."""
        masked, valid = [], []
        for a, box in zip(annos, gt_boxes.tensor.tolist()):
            segm = None
            if a.get("segmentation"):
                anno = {k: a[k] for k in ("bbox", "bbox_mode", "segmentation")}
                anno = utils.transform_instance_annotations(anno, transforms, image_size)
                # A crop may remove every polygon of a box it keeps: nothing left to train.
                if not isinstance(anno["segmentation"], list) or anno["segmentation"]:
                    segm = anno["segmentation"]
            elif self.box_only_annotations == "box":
                x1, y1, x2, y2 = box
                segm = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            valid.append(segm is not None)
            if segm is None:
                segm = self._placeholder_mask(box, image_size)
            # category_id: annotations_to_instances reads one; only its gt_masks are used.
            masked.append(
                {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "segmentation": segm, "category_id": 0}
            )
        if masked:
            masks = utils.annotations_to_instances(masked, image_size, self.mask_format).gt_masks
        elif self.mask_format == "polygon":
            masks = PolygonMasks([])
        else:
            masks = BitMasks(torch.zeros((0, *image_size), dtype=torch.bool))
        return masks, torch.as_tensor(valid, dtype=torch.bool).reshape(-1)

    def _placeholder_mask(self, box: List[float], image_size: Tuple[int, int]):
        """The empty mask of a box without one (``gt_mask_valid`` False)."""
        if self.mask_format == "bitmask":
            return np.zeros(image_size, dtype=np.uint8)
        # PolygonMasks needs >= 3 points per instance; these three are the box's corner, so the
        # mask has zero area and rasterises (crop_and_resize too) to no pixel.
        x1, y1 = box[:2]
        return [[x1, y1, x1, y1, x1, y1]]

    # ------------------------------------------------------------------ prompts

    def _vocabulary(self, d: Dict[str, Any]) -> _Vocabulary:
        name = d.get("dataset_name")
        if name is None:
            raise ValueError(
                f"Record of '{d.get('file_name')}' has neither 'caption' nor 'dataset_name'; "
                "register detection sets with glip_d2.data.register_coco_grounding"
            )
        if name not in self._vocabularies:
            self._vocabularies[name] = _Vocabulary(name, self)
        return self._vocabularies[name]

    def _detection_prompt(self, d: Dict[str, Any], annos: List[Dict[str, Any]]):
        vocab = self._vocabulary(d)
        classes = [int(a["category_id"]) for a in annos]
        if not self.is_train:
            fields = _clone_fields(vocab.test_fields[0])
            if len(vocab.test_fields) > 1:
                fields["prompt_chunks"] = [_clone_fields(f) for f in vocab.test_fields]
            # No instances at test time; every box is kept for the augmentation.
            box_maps = torch.ones((len(classes), 1), dtype=torch.bool)
            return _PromptTargets(fields, box_maps, classes, [-1] * len(classes), None, "detection")
        prompt, dropped = vocab.sampler(classes)
        if dropped:
            logger.debug(f"Image {d.get('image_id')}: classes {dropped} did not fit the prompt")
        fields = prompt.encode(self.tokenizer, self.max_query_len)
        row_of = {c: k for k, c in enumerate(prompt.class_ids)}
        box_maps = torch.zeros((len(classes), self.max_query_len), dtype=torch.bool)
        for i, c in enumerate(classes):
            if c in row_of:
                box_maps[i] = fields["positive_map"][row_of[c]]
        rows = [row_of.get(c, -1) for c in classes]
        return _PromptTargets(fields, box_maps, classes, rows, prompt, "detection")

    def _grounding_prompt(self, d: Dict[str, Any], annos: List[Dict[str, Any]]):
        caption = d["caption"]
        what = f"Image {d.get('image_id')} ('{d.get('file_name')}')"
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{what}: empty caption; a grounding sample needs text")
        encoding = tokenize_prompt(self.tokenizer, caption, self.max_query_len)
        keys = []
        for a in annos:
            spans = a.get("tokens_positive") or []
            where = f"{what}: annotation {a.get('id')}"
            if not spans:
                raise ValueError(f"{where} has no tokens_positive spans")
            check_char_spans(caption, spans, where)
            for start, end in spans:
                if span_cuts_token(encoding, start, end, len(caption)):
                    self._bad_span(where, caption, start, end)
            keys.append(tuple(sorted((int(s), int(e)) for s, e in spans)))
        phrase_keys = sorted(set(keys))  # caption order
        if not self.is_train and "tokens_positive_eval" in d:
            phrase_spans = d["tokens_positive_eval"]
        else:
            phrase_spans = phrase_keys
        prompt: Prompt = build_grounding_prompt(caption, phrase_spans, what=what)
        fields = {"caption": caption}
        fields["input_ids"] = torch.as_tensor(encoding["input_ids"], dtype=torch.int64)
        fields["attention_mask"] = torch.as_tensor(encoding["attention_mask"], dtype=torch.int64)
        fields["positive_map"] = positive_map_from_encoding(
            encoding, len(caption), prompt.spans, self.max_query_len
        )
        fields["prompt_class_ids"] = torch.arange(len(prompt), dtype=torch.int64)
        fields["phrases"] = prompt.phrases
        box_maps = positive_map_from_encoding(encoding, len(caption), keys, self.max_query_len)
        for a, row in zip(annos, box_maps):
            if not row.any():
                logger.warning(
                    f"{what}: annotation {a.get('id')} spans {a.get('tokens_positive')} have no "
                    f"token within the first {self.max_query_len} tokens; the box is dropped"
                )
        classes = [phrase_keys.index(k) for k in keys]
        # Training prompts are the phrase keys, so a box's phrase index is its row.
        rows = classes if phrase_spans is phrase_keys else [-1] * len(classes)
        return _PromptTargets(fields, box_maps, classes, rows, prompt, "grounding")

    def _bad_span(self, where: str, caption: str, start: int, end: int) -> None:
        msg = (
            f"{where}: span [{start}, {end}) {caption[start:end]!r} of caption {caption!r} "
            "does not start and end on token boundaries"
        )
        if self.on_bad_span == "error":
            raise ValueError(msg)
        self._span_warnings += 1
        if self._span_warnings <= _MAX_SPAN_WARNINGS:
            suffix = " (further such warnings are not shown)"
            last = self._span_warnings == _MAX_SPAN_WARNINGS
            logger.warning(f"{msg}; it covers the whole tokens instead{suffix if last else ''}")
