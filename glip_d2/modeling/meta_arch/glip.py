"""The GLIP meta-architecture: detection as phrase grounding (GLIP, CVPR 2022)."""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ...utils.answer_vocab import load_answer_vocab
from ...utils.checkpoint import convert_official_state_dict, is_official_glip_state_dict
from ...utils.phrases import PhraseList
from ..criterion import GLIPCriterion, build_criterion
from ..fusion.tower import DenseHeadOutputs, VLDyHead
from ..head.atss import ATSSAssigner, ATSSAssignment, GLIPBoxCoder, cell_anchor, grid_anchors
from ..head.inference import GLIPPostProcessor
from ..language import build_language_backbone
from ..mask_head import MaskTrainingStep
from ..scratch import scratch_scope
from ..vl_tasks import CaptionHead, VQAHead, beam_search, greedy_search

logger = logging.getLogger(__name__)

#: ``TEST.PRECISION`` -> autocast dtype of inference (None: plain fp32).
INFERENCE_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_understanding_heads(cfg, visual_dim: int, language_backbone: nn.Module) -> Dict:
    """GLIPv2's VQA and caption heads from ``MODEL.VQA`` / ``MODEL.CAPTION`` (GLIP kwargs)."""
    out: Dict = {}
    bert_config = language_backbone.bert_config
    if cfg.MODEL.VQA_ON:
        v = cfg.MODEL.VQA
        out["vqa_head"] = VQAHead(
            text_dim=language_backbone.out_dim,
            visual_dim=visual_dim,
            answers=load_answer_vocab(v.ANSWER_VOCAB),
            hidden_dim=v.HIDDEN_DIM,
            pooling=v.POOLING,
        )
        out["vqa_loss_weight"] = v.LOSS_WEIGHT
    if cfg.MODEL.CAPTION_ON:
        c = cfg.MODEL.CAPTION
        head = CaptionHead(bert_config, label_smoothing=c.LABEL_SMOOTHING)
        if c.TIE_WORD_EMBEDDINGS:
            head.tie_decoder_to(language_backbone.model.embeddings.word_embeddings.weight)
        from transformers import BertTokenizerFast

        from ...utils.hub import load_pretrained

        tokenizer = load_pretrained(
            BertTokenizerFast.from_pretrained,
            cfg.INPUT.PROMPT.TOKENIZER,
            config_key="INPUT.PROMPT.TOKENIZER",
            needs="vocab.txt (or tokenizer.json)",
        )
        special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.unk_token_id]
        special.append(tokenizer.mask_token_id)
        out["caption_head"] = head
        out["caption_loss_weight"] = c.LOSS_WEIGHT
        out["caption_decoding"] = {
            "max_length": c.MAX_LENGTH,
            "beam_size": c.BEAM_SIZE,
            "length_penalty": c.LENGTH_PENALTY,
            "bos_id": tokenizer.cls_token_id,
            "eos_id": tokenizer.sep_token_id,
            "banned": special,
        }
        out["detokenize"] = _Detokenizer(tokenizer)
    return out


class _Detokenizer:
    """Token ids -> text with the prompt tokenizer (picklable, no state of its own)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


@dataclass
class TrainingStep:
    """One training forward: the losses, and what they were computed from.

    Attributes:
        losses (dict): loss name -> weighted scalar (what ``forward`` returns in training).
        head (DenseHeadOutputs): the head pass.
        assignment (ATSSAssignment): the ATSS assignment of the batch.
        anchors (list): per level (A_l, 4) inclusive anchors.
        mask_rois (list): with a mask head, per image the inclusive training ROIs.
        mask (MaskTrainingStep): with a mask head, its loss computation.
    """

    losses: Dict[str, torch.Tensor]
    head: DenseHeadOutputs
    assignment: ATSSAssignment
    anchors: List[torch.Tensor]
    mask_rois: Optional[List[torch.Tensor]] = None
    mask: Optional[MaskTrainingStep] = None


@META_ARCH_REGISTRY.register()
class GLIP(nn.Module):
    """GLIP: Swin/FPN + BERT, deep image-text fusion in a VL-DyHead, token-level ATSS head.

    Input: a list of Detectron2 dicts, one per image, as ``glip_d2.data`` mappers make them:

    * ``image``: (3, H, W) uint8/float tensor in ``INPUT.FORMAT`` channel order, resized;
    * ``height``, ``width``: the original image size, for the output boxes;
    * ``input_ids``, ``attention_mask``: (L,) int64, the prompt padded to L (256) tokens;
    * ``positive_map``: (K, L) bool, the tokens of each prompt entry (category or phrase);
    * ``prompt_class_ids``: (K,) int64, the 0-based class of each entry (``pred_classes``);
    * ``phrases`` (optional): K strings, the text of each entry;
    * ``prompt_chunks`` (optional, inference): a list of such prompt dicts (a large vocabulary
      in chunks) used instead of the top-level prompt fields; the backbone runs once and the
      chunks' detections are concatenated;
    * training only, ``instances`` with ``gt_boxes`` (XYXY_ABS, Detectron2's continuous
      convention, in resized-image pixels) and ``gt_positive_map`` (G, L) bool; with a mask
      head also ``gt_masks`` (``PolygonMasks``/``BitMasks``) and optionally ``gt_mask_valid``
      (G,) bool (False: no mask loss for that box).

    Output (inference): ``[{"instances": Instances}]`` in original-image pixels with
    ``pred_boxes`` (continuous XYXY, inside the image), ``scores``, ``pred_classes`` and
    ``pred_phrases`` (a :class:`PhraseList` of str), and with a mask head ``pred_masks``
    ((N, H, W) bool, pasted into the original image). Training returns the criterion's losses:
    ``loss_token``, ``loss_giou`` and ``loss_centerness``, plus GLIPv2's ``loss_region_word``
    and ``loss_mlm`` when their weights are > 0, and ``loss_mask`` with a mask head.

    GLIPv2's understanding tasks (``MODEL.VQA_ON``, ``MODEL.CAPTION_ON``): an input with
    ``task`` "vqa" carries the question as ``input_ids`` / ``attention_mask`` (and in
    training ``answer_target_ids`` / ``answer_target_scores``) and gives ``{"answer",
    "answer_scores"}`` (training: ``loss_vqa``); an input with ``task`` "caption" carries only
    the image at test time and gives ``{"caption", "caption_ids"}`` (training: the reference
    caption's ``input_ids``, ``loss_caption``). A batch is one task. See
    :mod:`glip_d2.modeling.vl_tasks`.

    Boxes are handled in the official inclusive convention inside (``x2 = x + w - 1``); the
    conversion happens once on the way in (``x2 - 1``) and once on the way out (``+ 1`` after
    rescaling), so Detectron2's evaluators give the official evaluation's numbers.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        language_backbone: nn.Module,
        head: VLDyHead,
        assigner: ATSSAssigner,
        criterion: GLIPCriterion,
        postprocessor: GLIPPostProcessor,
        mask_head: Optional[nn.Module] = None,
        in_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        size_divisibility: int = 32,
        anchor_sizes: Sequence[float],
        anchor_strides: Sequence[int],
        max_query_len: int = 256,
        tuning_mode: str = "full",
        prompt_batch_size: int = 8,
        mlm_grounding_prompt: str = "masked",
        mask_train_proposals: str = "atss+gt",
        mask_proposal_generator: Optional[GLIPPostProcessor] = None,
        mask_loss_weight: float = 1.0,
        precision: str = "fp32",
        text_cache_size: int = 16,
        vqa_head: Optional[VQAHead] = None,
        vqa_loss_weight: float = 1.0,
        caption_head: Optional[CaptionHead] = None,
        caption_loss_weight: float = 1.0,
        caption_decoding: Optional[Dict] = None,
        detokenize=None,
    ):
        """
        Args:
            backbone: Swin/ResNet + FPN giving ``in_features`` (P3-P7).
            language_backbone: text encoder (see ``LANGUAGE_BACKBONE_REGISTRY``).
            head (VLDyHead): fusion tower and dense predictions.
            assigner (ATSSAssigner): training-time anchor assignment.
            criterion (GLIPCriterion): the named loss terms and their weights.
            postprocessor (GLIPPostProcessor): test-time boxes from the dense predictions.
            mask_head: optional mask head on the fused maps (None: boxes only).
            anchor_sizes, anchor_strides: one square anchor per location and level.
            tuning_mode (str): which parameters train (reference §12): ``"full"`` all;
                ``"prompt_tuning"`` (official ``language_prompt_v2``) only the added
                ``tunable_linear``, one learned additive vector per token position, with the
                rest frozen and in eval mode; ``"linear_probe"`` only the head's final layers
                (``bbox_pred``, ``centerness``, ``dot_product_projection_text``, ``log_scale``,
                ``bias_lang``, ``bias0``).
            prompt_batch_size (int): (image, prompt chunk) pairs per language/head pass at
                inference (memory grows with it).
            mlm_grounding_prompt (str): with GLIPv2's MLM, the prompt the grounding losses
                see: ``"masked"`` (official: one pass over the masked prompt) or ``"clean"``
                (the unmasked prompt; L_mlm on a second pass over the masked one).
            mask_train_proposals (str): the mask head's training ROIs: ``"atss+gt"`` (the
                training pass's detections from ``mask_proposal_generator``, then every GT
                box; official) or ``"gt"`` (GT boxes only).
            mask_proposal_generator (GLIPPostProcessor): the official train-time ATSS
                post-processing (score threshold 0, its own top-N).
            mask_loss_weight (float): weight of ``loss_mask``.
            precision (str): inference arithmetic (``TEST.PRECISION``): ``"fp32"``, or
                ``"fp16"`` / ``"bf16"`` autocast for the backbones, fusion and heads (the box
                decoding, NMS and mask pasting stay fp32).
            text_cache_size (int): inference keeps the language features of this many recent
                prompt batches (``TEST.TEXT_CACHE_SIZE``; 0: off), so a fixed vocabulary is
                encoded once for a whole dataset or video. An entry is reused only while the
                language parameters are unchanged (their in-place version counters).
            vqa_head (VQAHead): GLIPv2 VQA (inputs with ``task`` "vqa"); None: no VQA.
            vqa_loss_weight (float): weight of ``loss_vqa``.
            caption_head (CaptionHead): GLIPv2 captioning (inputs with ``task`` "caption");
                None: no captioning.
            caption_loss_weight (float): weight of ``loss_caption``.
            caption_decoding (dict): ``max_length``, ``beam_size``, ``length_penalty``,
                ``bos_id``, ``eos_id``, ``pad_id``, ``banned`` (token ids never generated).
            detokenize (callable): token ids -> text, for the ``caption`` outputs (Detectron2's
                evaluators read the model's outputs directly; the model never tokenizes).
        """
        super().__init__()
        self.backbone = backbone
        self.language_backbone = language_backbone
        self.head = head
        self.in_features = list(in_features)
        self.input_format = input_format
        self.size_divisibility = size_divisibility
        self.anchor_sizes = list(anchor_sizes)
        self.anchor_strides = list(anchor_strides)
        self.assigner = assigner
        self.criterion = criterion
        self.postprocessor = postprocessor
        self.mask_head = mask_head
        self.max_query_len = max_query_len
        self.prompt_batch_size = prompt_batch_size
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"TEST.PRECISION '{precision}' is not one of {sorted(INFERENCE_PRECISIONS)}"
            )
        self.precision = precision
        self.text_cache_size = int(text_cache_size)
        self._text_cache: OrderedDict[tuple, Dict] = OrderedDict()
        if mlm_grounding_prompt not in ("masked", "clean"):
            raise ValueError(
                f"MODEL.GLIPV2.MLM.GROUNDING_PROMPT '{mlm_grounding_prompt}' is not one of "
                "['clean', 'masked']"
            )
        self.mlm_grounding_prompt = mlm_grounding_prompt
        if mask_train_proposals not in ("atss+gt", "gt"):
            raise ValueError(
                f"MODEL.ROI_MASK_HEAD.TRAIN_PROPOSALS '{mask_train_proposals}' is not one of "
                "['atss+gt', 'gt']"
            )
        self.mask_train_proposals = mask_train_proposals
        self.mask_proposal_generator = mask_proposal_generator
        self.mask_loss_weight = mask_loss_weight
        if tuning_mode not in self.TUNING_MODES:
            raise ValueError(
                f"SOLVER.TUNING_MODE '{tuning_mode}' is not one of {sorted(self.TUNING_MODES)}"
            )
        self.tuning_mode = tuning_mode
        if tuning_mode == "prompt_tuning":
            lang_dim = language_backbone.out_dim
            # Official shape (1000, D); only the first L rows are used. Zero init (reference §12).
            self.tunable_linear = nn.Linear(lang_dim, 1000, bias=False)
            nn.init.zeros_(self.tunable_linear.weight)
        else:
            self.tunable_linear = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.vqa_head = vqa_head
        self.vqa_loss_weight = vqa_loss_weight
        self.caption_head = caption_head
        self.caption_loss_weight = caption_loss_weight
        self.caption_decoding = dict(caption_decoding or {})
        self.detokenize = detokenize
        self._register_load_state_dict_pre_hook(self._convert_official_keys)
        if caption_head is not None:
            self._register_load_state_dict_pre_hook(
                lambda state_dict, prefix, *args: CaptionHead.adopt_mlm_head(state_dict, prefix)
            )
        self._freeze_for_tuning_mode()

    #: tuning mode -> parameter-name prefixes that train (None: all)
    TUNING_MODES = {
        "full": None,
        "prompt_tuning": ("tunable_linear.",),
        "linear_probe": (
            "head.bbox_pred.",
            "head.centerness.",
            "head.dot_product_projection_text.",
            "head.log_scale",
            "head.bias_lang",
            "head.bias0",
        ),
    }

    def _freeze_for_tuning_mode(self) -> None:
        trainable = self.TUNING_MODES[self.tuning_mode]
        if trainable is None:
            return
        for name, param in self.named_parameters():
            if not name.startswith(trainable):
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        """In prompt tuning the frozen network also stays in eval mode (no dropout), as the
        official ``RPN.FREEZE`` does."""
        super().train(mode)
        if mode and self.tuning_mode == "prompt_tuning":
            for module in (self.backbone, self.language_backbone, self.head):
                module.eval()
        return self

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        language_backbone = build_language_backbone(cfg)
        in_features = cfg.MODEL.GLIP_HEAD.IN_FEATURES
        shapes = backbone.output_shape()
        channels = {shapes[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"GLIP head needs equal channels on {in_features}, got {channels}")
        bert_config = language_backbone.bert_config
        visual_dim = channels.pop()
        # GLIPv2's LM head, mask head, VQA and caption heads read the token features after the
        # last block.
        needs_fused_text = (
            cfg.MODEL.GLIPV2.MLM.WEIGHT > 0
            or cfg.MODEL.MASK_ON
            or cfg.MODEL.VQA_ON
            or cfg.MODEL.CAPTION_ON
        )
        head = VLDyHead(
            cfg,
            in_channels=visual_dim,
            lang_dim=language_backbone.out_dim,
            bert_config=bert_config,
            keep_last_text_update=needs_fused_text,
        )
        strides = [shapes[f].stride for f in in_features]
        if list(strides) != list(cfg.MODEL.ATSS.ANCHOR_STRIDES):
            raise ValueError(
                f"MODEL.ATSS.ANCHOR_STRIDES {list(cfg.MODEL.ATSS.ANCHOR_STRIDES)} differ from the "
                f"backbone strides {strides} of {in_features}"
            )
        atss = cfg.MODEL.ATSS
        box_coder = GLIPBoxCoder(atss.BBOX_REG_WEIGHTS)
        criterion = build_criterion(
            cfg,
            box_coder=box_coder,
            visual_dim=visual_dim,
            lang_dim=language_backbone.out_dim,
            bert_config=bert_config,
            language_backbone=language_backbone,
        )
        mask_head, mask_proposals = None, None
        if cfg.MODEL.MASK_ON:
            mask_cfg = cfg.MODEL.ROI_MASK_HEAD
            mask_head = ROI_MASK_HEAD_REGISTRY.get(mask_cfg.NAME)(
                cfg, ShapeSpec(channels=visual_dim), lang_dim=language_backbone.out_dim
            )
            mask_proposals = GLIPPostProcessor(
                box_coder,
                score_thresh=0.0,
                pre_nms_top_n=mask_cfg.PRE_NMS_TOP_N_TRAIN,
                nms_thresh=atss.NMS_TH,
                detections_per_img=mask_cfg.POST_NMS_TOP_N_TRAIN,
                score_agg=cfg.MODEL.GLIP_HEAD.SCORE_AGG,
            )
        return {
            **build_understanding_heads(cfg, visual_dim, language_backbone),
            "backbone": backbone,
            "language_backbone": language_backbone,
            "mask_head": mask_head,
            "mask_train_proposals": cfg.MODEL.ROI_MASK_HEAD.TRAIN_PROPOSALS,
            "mask_proposal_generator": mask_proposals,
            "mask_loss_weight": cfg.MODEL.ROI_MASK_HEAD.LOSS_WEIGHT,
            "head": head,
            "assigner": ATSSAssigner(atss.TOPK),
            "criterion": criterion,
            "postprocessor": GLIPPostProcessor.from_config(cfg, box_coder),
            "in_features": in_features,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "size_divisibility": cfg.DATALOADER.SIZE_DIVISIBILITY,
            "anchor_sizes": atss.ANCHOR_SIZES,
            "anchor_strides": atss.ANCHOR_STRIDES,
            "max_query_len": cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN,
            "tuning_mode": cfg.SOLVER.TUNING_MODE,
            "prompt_batch_size": cfg.TEST.PROMPT_BATCH_SIZE,
            "precision": cfg.TEST.PRECISION,
            "text_cache_size": cfg.TEST.TEXT_CACHE_SIZE,
            "mlm_grounding_prompt": cfg.MODEL.GLIPV2.MLM.GROUNDING_PROMPT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ checkpoints
    def _convert_official_keys(self, state_dict, prefix, *args, **kwargs):
        """Accept official GLIP state dicts in ``load_state_dict`` (so ``DetectionCheckpointer``
        loads an official ``.pth`` directly): rename keys, check and drop the anchor buffers."""
        own = {k[len(prefix) :]: k for k in state_dict if k.startswith(prefix)}
        if not is_official_glip_state_dict(own):
            return
        sub = {k: state_dict.pop(full) for k, full in own.items()}
        converted, regenerated, dropped = convert_official_state_dict(sub)
        for key, value in regenerated.items():
            level = int(key.rsplit(".", 1)[1])
            ours = cell_anchor(self.anchor_strides[level], self.anchor_sizes[level])
            if value.shape != ours.shape or not torch.allclose(value.float(), ours):
                raise ValueError(
                    f"Checkpoint anchor buffer '{key}' is {value.tolist()}, but this config "
                    f"generates {ours.tolist()} (MODEL.ATSS.ANCHOR_SIZES/ANCHOR_STRIDES)"
                )
        if dropped:
            logger.info("Dropped checkpoint entries the model does not have: %s", dropped)
        for key, value in converted.items():
            state_dict[prefix + key] = value

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise (BGR x 255 with the Detectron mean/std) and zero-pad to the divisibility."""
        images = []
        for x in batched_inputs:
            image = x["image"].to(self.device).float()
            if self.input_format == "RGB":
                image = image.flip(0)
            images.append((image - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.size_divisibility)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, causal: bool = False
    ) -> Dict:
        """Language features (see ``LANGUAGE_BACKBONE_REGISTRY``), plus the prompt-tuning vectors.

        Args:
            input_ids, attention_mask: (B, L) int64.
            causal (bool): causal text (captioning): token i sees tokens 0..i only, in the
                language backbone and, through ``lang["causal"]``, in the whole tower (see
                :mod:`glip_d2.modeling.vl_tasks.captioning`). Not cached.
        """
        if causal:
            lang = self.language_backbone(input_ids, attention_mask, causal=True)
            return dict(lang, causal=True)
        cached = self.text_cache_size > 0 and not self.training and not torch.is_grad_enabled()
        if cached:
            key = self._text_cache_key(input_ids, attention_mask)
            hit = self._text_cache.get(key)
            if hit is not None:
                self._text_cache.move_to_end(key)
                return dict(hit)
        lang = self.language_backbone(input_ids, attention_mask)
        if self.tunable_linear is not None:
            delta = self.tunable_linear.weight[: input_ids.shape[1]].unsqueeze(0)
            lang = dict(lang, embedded=lang["embedded"] + delta, hidden=lang["hidden"] + delta)
        if cached:
            self._text_cache[key] = dict(lang)
            while len(self._text_cache) > self.text_cache_size:
                self._text_cache.popitem(last=False)
        return lang

    def _text_cache_key(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        """The prompt batch, the arithmetic it runs in, and the state of every parameter the
        language features depend on (optimizer steps and ``load_state_dict`` bump it)."""
        params = list(self.language_backbone.parameters())
        if self.tunable_linear is not None:
            params += list(self.tunable_linear.parameters())
        device_type = input_ids.device.type
        autocast = torch.is_autocast_enabled(device_type)
        return (
            tuple(input_ids.shape),
            input_ids.cpu().numpy().tobytes(),
            attention_mask.cpu().numpy().tobytes(),
            str(input_ids.device),
            autocast and torch.get_autocast_dtype(device_type),
            tuple((id(p), p._version) for p in params),
        )

    def extract_features(self, images: ImageList) -> List[torch.Tensor]:
        """FPN maps P3..P7, each (B, C, H_l, W_l)."""
        features = self.backbone(images.tensor)
        return [features[f] for f in self.in_features]

    def anchors(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per level (H_l * W_l, 4) inclusive anchors for the given maps."""
        shapes = [tuple(f.shape[-2:]) for f in features]
        return grid_anchors(shapes, self.anchor_strides, self.anchor_sizes, self.device)

    @staticmethod
    def _stack_prompt(batched_inputs: List[Dict], key: str, device) -> torch.Tensor:
        try:
            return torch.stack([torch.as_tensor(x[key]) for x in batched_inputs]).to(device)
        except KeyError as e:
            raise KeyError(
                f"GLIP input dicts need '{key}' (made by glip_d2.data prompts/mappers)"
            ) from e

    def forward(self, batched_inputs: List[Dict]):
        """See the class docstring for the input and output formats."""
        task = self.input_task(batched_inputs)
        if task != "grounding":
            return self.forward_understanding(task, batched_inputs)
        if self.training:
            return self.forward_train(batched_inputs).losses
        # One scope of scratch buffers for every chunk and image of the batch (no autograd).
        with scratch_scope(enabled=not torch.is_grad_enabled()), self.inference_autocast():
            images = self.preprocess_image(batched_inputs)
            features = self.extract_features(images)
            return self.inference(batched_inputs, images, features)

    def inference_autocast(self):
        """The autocast context of ``TEST.PRECISION`` (a no-op context for fp32)."""
        dtype = INFERENCE_PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def dense_head(
        self,
        features: List[torch.Tensor],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        causal: bool = False,
    ) -> DenseHeadOutputs:
        """Language backbone + fusion head for one prompt per image (see ``VLDyHead``);
        ``causal``: causal text (see :meth:`encode_text`)."""
        return self.head(features, self.encode_text(input_ids, attention_mask, causal=causal))

    def run_head(
        self, features: List[torch.Tensor], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor], DenseHeadOutputs]:
        """The per-level (logits, deltas, centerness) of :meth:`dense_head`, and its output."""
        out = self.dense_head(features, input_ids, attention_mask)
        return out.logits, out.deltas, out.centerness, out

    def forward_train(self, batched_inputs: List[Dict]) -> TrainingStep:
        """One training forward: head pass, ATSS assignment and the criterion's losses.

        With GLIPv2's masked language modelling on, the inputs carry ``mlm_input_ids`` (the
        prompt with masked tokens, made by the mapper). With ``mlm_grounding_prompt`` "masked"
        they replace ``input_ids`` for the whole forward, so the grounding losses of the step
        see the masked prompt (official, GLIPv2 reference §7.6); with "clean" the grounding
        losses see ``input_ids`` and L_mlm reads a second head pass over ``mlm_input_ids``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        masked = "mlm_input_ids" in batched_inputs[0]
        separate = masked and self.mlm_grounding_prompt == "clean"
        ids_key = "mlm_input_ids" if masked and not separate else "input_ids"
        input_ids = self._stack_prompt(batched_inputs, ids_key, self.device)
        attention_mask = self._stack_prompt(batched_inputs, "attention_mask", self.device)
        head = self.dense_head(features, input_ids, attention_mask)
        cache = {}
        if separate:
            mlm_ids = self._stack_prompt(batched_inputs, "mlm_input_ids", self.device)
            cache["mlm_head"] = self.dense_head(features, mlm_ids, attention_mask)
        gt_boxes, gt_maps, instances = [], [], []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            boxes = inst.gt_boxes.tensor.clone()
            boxes[:, 2:] -= 1  # continuous -> inclusive (reference §10: x2 = x + w - 1)
            gt_boxes.append(boxes)
            gt_maps.append(inst.gt_positive_map)
            instances.append(inst)
        anchors = self.anchors(features)
        assignment = self.assigner(anchors, gt_boxes)
        losses = self.criterion(
            head,
            assignment,
            torch.cat(anchors, dim=0),
            gt_boxes,
            gt_maps,
            batched_inputs,
            cache=cache,
        )
        step = TrainingStep(losses=losses, head=head, assignment=assignment, anchors=anchors)
        if self.mask_head is not None:
            self._mask_training_step(step, images, instances, gt_boxes, gt_maps)
        return step

    # ------------------------------------------------------------------ VQA and captioning
    #: values of an input's ``task`` (absent: "grounding", detection and phrase grounding)
    TASKS = ("grounding", "vqa", "caption")

    def input_task(self, batched_inputs: List[Dict]) -> str:
        """The task of a batch: every input's ``task`` ("grounding" when absent), all equal."""
        tasks = {x.get("task", "grounding") for x in batched_inputs}
        if len(tasks) != 1:
            raise ValueError(
                f"A batch mixes the tasks {sorted(tasks)}; each batch must be one task (give "
                "VQA, caption and grounding data their own runs or loaders)"
            )
        task = tasks.pop()
        if task not in self.TASKS:
            raise ValueError(f"Input task '{task}' is not one of {list(self.TASKS)}")
        head = {"vqa": self.vqa_head, "caption": self.caption_head}.get(task, True)
        if head is None:
            key = "MODEL.VQA_ON" if task == "vqa" else "MODEL.CAPTION_ON"
            raise ValueError(f"Inputs of task '{task}' need a model built with {key}: True")
        return task

    def _prompt_batch(self, batched_inputs: List[Dict]) -> Tuple[torch.Tensor, torch.Tensor]:
        input_ids = self._stack_prompt(batched_inputs, "input_ids", self.device)
        attention_mask = self._stack_prompt(batched_inputs, "attention_mask", self.device)
        # Shared padding never reaches a real token (see ``inference``): dropped.
        length = int(attention_mask.sum(1).max())
        return input_ids[:, :length], attention_mask[:, :length]

    def forward_understanding(self, task: str, batched_inputs: List[Dict]):
        """VQA or captioning: losses in training, else ``[{"answer": str, "answer_scores":
        (A,)}]`` (VQA) or ``[{"caption": str, "caption_ids": list[int]}]`` (captioning)."""
        images = self.preprocess_image(batched_inputs)
        if self.training:
            features = self.extract_features(images)
            input_ids, attention_mask = self._prompt_batch(batched_inputs)
            if task == "vqa":
                head = self.dense_head(features, input_ids, attention_mask)
                logits = self.vqa_head(head)
                targets = self._vqa_targets(batched_inputs, logits)
                return {"loss_vqa": self.vqa_head.loss(logits, targets) * self.vqa_loss_weight}
            head = self.dense_head(features, input_ids, attention_mask, causal=True)
            loss = self.caption_head.loss(head.text_fused, input_ids, attention_mask)
            return {"loss_caption": loss * self.caption_loss_weight}
        with self.inference_autocast():
            features = self.extract_features(images)
            if task == "vqa":
                return self.answer_questions(batched_inputs, features)
            return self.generate_captions(features)

    def _vqa_targets(self, batched_inputs: List[Dict], logits: torch.Tensor) -> torch.Tensor:
        targets = torch.zeros_like(logits, dtype=torch.float32)
        for i, x in enumerate(batched_inputs):
            if "answer_target_ids" not in x:
                raise KeyError(
                    f"VQA training input {x.get('question_id', i)} has no 'answer_target_ids' / "
                    "'answer_target_scores' (made by glip_d2.data's VQA mapping in training)"
                )
            ids = torch.as_tensor(x["answer_target_ids"], dtype=torch.long, device=logits.device)
            scores = torch.as_tensor(x["answer_target_scores"], dtype=torch.float32)
            targets[i, ids] = scores.to(logits.device)
        return targets

    @torch.no_grad()
    def answer_questions(self, batched_inputs: List[Dict], features) -> List[Dict]:
        """Test-time VQA: the best-scoring answer of every (image, question) input."""
        input_ids, attention_mask = self._prompt_batch(batched_inputs)
        head = self.dense_head(features, input_ids, attention_mask)
        scores = self.vqa_head(head).float().sigmoid()
        best = scores.argmax(-1).tolist()
        return [
            {"answer": self.vqa_head.answers[b], "answer_scores": scores[i]}
            for i, b in enumerate(best)
        ]

    @torch.no_grad()
    def generate_captions(
        self,
        features: List[torch.Tensor],
        beam_size: Optional[int] = None,
        max_length: Optional[int] = None,
    ) -> List[Dict]:
        """Captions of a batch of images by greedy (``beam_size`` 1) or beam search.

        Args:
            features: the backbone's per-level maps of B images.
            beam_size (int): default ``MODEL.CAPTION.BEAM_SIZE``.
            max_length (int): generated tokens at most; default ``MODEL.CAPTION.MAX_LENGTH``.

        Returns:
            list[dict]: per image ``caption`` (str, when the model has a detokenizer) and
            ``caption_ids`` (list[int], without ``[CLS]`` / ``[SEP]``).
        """
        dec = self.caption_decoding
        beam = int(beam_size or dec["beam_size"])
        limit = int(max_length or dec["max_length"])
        num = features[0].shape[0]
        rows = torch.arange(num, device=self.device).repeat_interleave(beam)
        expanded = [f.index_select(0, rows) for f in features] if beam > 1 else features

        def step(ids: torch.Tensor) -> torch.Tensor:
            mask = torch.ones_like(ids)
            head = self.dense_head(expanded, ids, mask, causal=True)
            logits = self.caption_head.logits(head.text_fused[:, -1]).float()
            return logits.log_softmax(-1)

        common = {
            "bos_id": dec["bos_id"],
            "eos_id": dec["eos_id"],
            "max_length": limit,
            "banned": dec.get("banned", ()),
            "device": self.device,
        }
        if beam == 1:
            found = greedy_search(step, num, **common)
        else:
            found = beam_search(
                step, num, beam_size=beam, length_penalty=dec["length_penalty"], **common
            )
        out = []
        for ids in found:
            item: Dict = {"caption_ids": ids}
            if self.detokenize is not None:
                item["caption"] = self.detokenize(ids)
            out.append(item)
        return out

    def mask_training_rois(
        self,
        head: DenseHeadOutputs,
        anchors: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
        gt_boxes: List[torch.Tensor],
        gt_maps: List[torch.Tensor],
    ) -> List[torch.Tensor]:
        """Per image, the inclusive ROIs the mask head trains on: ``"gt"``: the GT boxes;
        ``"atss+gt"``: the official train-time detections of this pass (each GT box's token
        map is one "class"; no gradient) followed by every GT box."""
        if self.mask_train_proposals == "gt":
            return [b.detach() for b in gt_boxes]
        rois = []
        with torch.no_grad():
            logits = [lg.detach() for lg in head.logits]
            deltas = [d.detach() for d in head.deltas]
            centerness = [c.detach() for c in head.centerness]
            for i, gt in enumerate(gt_boxes):
                if len(gt):
                    boxes, _, _ = self.mask_proposal_generator(
                        logits, deltas, centerness, anchors, i, gt_maps[i], image_sizes[i]
                    )
                else:
                    boxes = gt.new_zeros((0, 4))
                rois.append(torch.cat([boxes.to(gt.dtype), gt.detach()]))
        return rois

    def _mask_training_step(self, step, images, instances, gt_boxes, gt_maps) -> None:
        gt_masks, valid = [], []
        for i, inst in enumerate(instances):
            if not inst.has("gt_masks"):
                raise KeyError(
                    f"MODEL.MASK_ON: training image {i} of the batch has no 'gt_masks' in its "
                    "instances (the mapper adds them when MODEL.MASK_ON is set)"
                )
            gt_masks.append(inst.gt_masks)
            valid.append(
                inst.gt_mask_valid
                if inst.has("gt_mask_valid")
                else torch.ones(len(inst), dtype=torch.bool, device=self.device)
            )
        rois = self.mask_training_rois(
            step.head, step.anchors, images.image_sizes, gt_boxes, gt_maps
        )
        mask = self.mask_head.training_step(
            step.head.fused_visual, rois, step.head.text_fused, gt_boxes, gt_maps, gt_masks, valid
        )
        step.losses["loss_mask"] = mask.loss * self.mask_loss_weight
        step.mask_rois, step.mask = rois, mask

    @torch.no_grad()
    def masked_token_logits(
        self, batched_inputs: List[Dict], mask_token_id: int
    ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """GLIPv2's LM head on the fused token features at the ``[MASK]`` tokens of each
        prompt: with fusion, what the model reads from the image fills the blank.

        Args:
            batched_inputs: test-time input dicts whose ``input_ids`` contain ``mask_token_id``.
            mask_token_id (int): the tokenizer's ``[MASK]`` id.

        Returns:
            list: per input, ``(positions (n,), logits (n, V))`` of its masked tokens.
        """
        if "mlm" not in self.criterion.terms:
            raise ValueError("this model has no LM head (MODEL.GLIPV2.MLM.WEIGHT is 0)")
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        input_ids = self._stack_prompt(batched_inputs, "input_ids", self.device)
        attention_mask = self._stack_prompt(batched_inputs, "attention_mask", self.device)
        head = self.dense_head(features, input_ids, attention_mask)
        lm_head = self.criterion.terms["mlm"].head
        out = []
        for i in range(len(batched_inputs)):
            positions = (input_ids[i] == mask_token_id).nonzero().flatten()
            out.append((positions, lm_head(head.text_fused[i, positions])))
        return out

    def detect(
        self,
        logits: List[torch.Tensor],
        deltas: List[torch.Tensor],
        centerness: List[torch.Tensor],
        anchors: List[torch.Tensor],
        index: int,
        positive_map: torch.Tensor,
        image_size: Tuple[int, int],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Official post-processing for image ``index`` of the batch (inclusive boxes in
        resized-image pixels, scores, prompt-entry indices)."""
        return self.postprocessor(
            logits, deltas, centerness, anchors, index, positive_map, image_size
        )

    @staticmethod
    def prompt_chunks(x: Dict) -> List[Dict]:
        """The prompts of one input: ``x["prompt_chunks"]`` (a vocabulary split into chunks,
        each a dict with the prompt fields) or the prompt fields of ``x`` itself."""
        if "prompt_chunks" in x:
            return list(x["prompt_chunks"])
        return [x]

    @staticmethod
    def _trimmed_positive_map(positive_map: torch.Tensor, length: int) -> torch.Tensor:
        positive_map = torch.as_tensor(positive_map)
        if positive_map[:, length:].any():
            raise ValueError(
                f"A positive map marks tokens at or after index {length}, past the prompt's "
                "last real token (its attention mask): the prompt and its map do not match"
            )
        return positive_map[:, :length]

    def inference(self, batched_inputs, images, features):
        """Detections for every prompt chunk of every image; the backbone ran once.

        The (image, chunk) pairs run through the language backbone and head in groups of
        ``prompt_batch_size``; each chunk's detections get the official NMS and cap on their
        own, as the official chunked LVIS evaluation does, and an image's chunks are
        concatenated.
        """
        anchors = self.anchors(features)
        chunks = [self.prompt_chunks(x) for x in batched_inputs]
        pairs = [
            (i, j)
            for j in range(max(map(len, chunks)))
            for i in range(len(chunks))
            if j < len(chunks[i])
        ]
        found = [[] for _ in batched_inputs]
        group = max(self.prompt_batch_size, 1)
        for start in range(0, len(pairs), group):
            part = pairs[start : start + group]
            prompts = [chunks[i][j] for i, j in part]
            input_ids = self._stack_prompt(prompts, "input_ids", self.device)
            attention_mask = self._stack_prompt(prompts, "attention_mask", self.device)
            # Pad tokens never influence real tokens (masked in BERT and in the image-side
            # softmax; the text side is per token), so inference drops the padding the group
            # shares: same outputs, less work in the language model, fusion and head.
            length = int(attention_mask.sum(1).max())
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
            index = torch.tensor([i for i, _ in part], device=self.device)
            same = len(part) == len(batched_inputs) and all(i == k for k, (i, _) in enumerate(part))
            sub = features if same else [f.index_select(0, index) for f in features]
            out = self.dense_head(sub, input_ids, attention_mask)
            # Box decoding and NMS in fp32 whatever TEST.PRECISION is (no-ops in fp32).
            logits, deltas, centerness = (
                [t.float() for t in ts] for ts in (out.logits, out.deltas, out.centerness)
            )
            for k, ((i, _), prompt) in enumerate(zip(part, prompts)):
                positive_map = self._trimmed_positive_map(prompt["positive_map"], length)
                with torch.autocast(device_type=self.device.type, enabled=False):
                    boxes, scores, labels = self.detect(
                        logits, deltas, centerness, anchors, k, positive_map, images.image_sizes[i]
                    )
                masks = None
                if self.mask_head is not None:
                    masks = (
                        self.mask_head(
                            [f[k : k + 1] for f in out.fused_visual],
                            [boxes],
                            out.text_fused[k : k + 1],
                            [positive_map.to(boxes.device)[labels]],
                        )
                        .float()
                        .sigmoid()
                    )
                found[i].append(
                    self.to_instances(
                        prompt,
                        batched_inputs[i],
                        images.image_sizes[i],
                        boxes,
                        scores,
                        labels,
                        masks=masks,
                    )
                )
        return [{"instances": r[0] if len(r) == 1 else Instances.cat(r)} for r in found]

    def to_instances(
        self,
        prompt: Dict,
        x: Dict,
        image_size: Tuple[int, int],
        boxes: torch.Tensor,
        scores: torch.Tensor,
        labels: torch.Tensor,
        masks: Optional[torch.Tensor] = None,
    ) -> Instances:
        """Detections in original-image pixels and Detectron2's box convention.

        Boxes are scaled by original/resized size per axis (as the official ``BoxList.resize``),
        then ``x2, y2`` get +1: the official evaluation's ``w = x2 - x1 + 1`` equals Detectron2's
        ``w = x2 - x1`` of the converted box. The result is clipped to the original image: for an
        image that was scaled up, the +1 after scaling would otherwise reach up to
        ``1 - original/resized`` pixels past its right and bottom edges (x = 2 on a 1x1 image;
        the official code leaves it there).

        ``masks`` (N, M, M) probabilities in box coordinates are pasted into the original
        image at the output boxes and thresholded at 0.5 (Detectron2's
        ``paste_masks_in_image``), giving ``pred_masks`` (N, H, W) bool.
        """
        h, w = image_size
        out_h, out_w = x.get("height", h), x.get("width", w)
        scale = boxes.new_tensor([out_w / w, out_h / h, out_w / w, out_h / h])
        boxes = boxes * scale
        boxes[:, 2:] += 1
        num_entries = len(prompt["positive_map"])
        class_ids = torch.as_tensor(prompt.get("prompt_class_ids", torch.arange(num_entries)))
        inst = Instances((out_h, out_w))
        inst.pred_boxes = Boxes(boxes)
        inst.pred_boxes.clip((out_h, out_w))
        inst.scores = scores
        inst.pred_classes = class_ids.to(labels.device)[labels]
        phrases = prompt.get("phrases")
        if phrases is not None:
            inst.pred_phrases = PhraseList(phrases)[labels]
        if masks is not None:
            pasted = paste_masks_in_image(masks, inst.pred_boxes, (out_h, out_w), threshold=0.5)
            inst.pred_masks = pasted.bool()
        return inst
