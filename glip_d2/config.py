"""Config keys of glip_d2, added to a Detectron2 config by :func:`add_glip_config`.

Defaults describe GLIP-T (C) (the official ``glip_Swin_T_O365_GoldG.yaml`` merged onto the
official defaults); YAML files under ``configs/`` override what differs.
"""

from typing import Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_glip_config(cfg: CN) -> None:
    """Add the GLIP keys to a Detectron2 config, in place.

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``.
    """
    _C = cfg
    _C.MODEL.META_ARCHITECTURE = "GLIP"
    # Detectron-v1 BGR x 255 inputs with the official mean/std (reference §11).
    _C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
    _C.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    _C.MODEL.BACKBONE.NAME = "build_glip_swin_fpn_backbone"
    # GLIP's FREEZE_CONV_BODY_AT: -1 none; 0 or 1 patch embedding; k >= 2 also stages 1..k-1.
    _C.MODEL.BACKBONE.FREEZE_AT = -1

    # ---------------------------------------------------------------- Swin (reference §2)
    _C.MODEL.SWIN = CN()
    _C.MODEL.SWIN.EMBED_DIM = 96  # channels of stage 1; stage i has EMBED_DIM * 2**(i-1)
    _C.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage
    _C.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage
    _C.MODEL.SWIN.WINDOW_SIZE = 7
    _C.MODEL.SWIN.MLP_RATIO = 4.0
    _C.MODEL.SWIN.DROP_PATH_RATE = 0.2  # stochastic depth, linear from 0 over all blocks
    # Stage outputs; the FPN reads the last three (strides 8, 16, 32).
    _C.MODEL.SWIN.OUT_FEATURES = ["stage3", "stage4", "stage5"]
    # Activation checkpointing in the Swin blocks (saves memory when training, same values).
    _C.MODEL.SWIN.USE_CHECKPOINT = False

    # ---------------------------------------------------------------- FPN (reference §3)
    _C.MODEL.GLIP_FPN = CN()
    _C.MODEL.GLIP_FPN.IN_FEATURES = ["stage3", "stage4", "stage5"]
    _C.MODEL.GLIP_FPN.OUT_CHANNELS = 256
    # DropBlock on the merged P4/P3 maps before their output conv, in training only.
    _C.MODEL.GLIP_FPN.DROP_BLOCK = True
    _C.MODEL.GLIP_FPN.DROP_PROB = 0.3
    _C.MODEL.GLIP_FPN.DROP_SIZE = 3

    # ---------------------------------------------------------------- language (reference §4)
    _C.MODEL.LANGUAGE_BACKBONE = CN()
    # Registered name in LANGUAGE_BACKBONE_REGISTRY.
    _C.MODEL.LANGUAGE_BACKBONE.NAME = "BertLanguageBackbone"
    # Hugging Face model name or local folder (config.json, and weights if LOAD_PRETRAINED).
    _C.MODEL.LANGUAGE_BACKBONE.MODEL_NAME = "bert-base-uncased"
    # Optional BERT config json that replaces MODEL_NAME's architecture (e.g. a reduced model).
    _C.MODEL.LANGUAGE_BACKBONE.CONFIG_FILE = ""
    # Load MODEL_NAME's pretrained weights; False builds the architecture only (weights then come
    # from MODEL.WEIGHTS, e.g. an official GLIP checkpoint, or stay random).
    _C.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED = False
    # Every query is padded to this many tokens (the official 256).
    _C.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN = 256
    # Freeze the language backbone's parameters.
    _C.MODEL.LANGUAGE_BACKBONE.FREEZE = False

    # ---------------------------------------------------------------- fusion (reference §5.1)
    _C.MODEL.FUSION = CN()
    # "MHA-B" (bidirectional image-text attention before every DyHead block) or "none".
    _C.MODEL.FUSION.TYPE = "MHA-B"
    _C.MODEL.FUSION.EMBED_DIM = 2048  # hard-coded in the official code
    _C.MODEL.FUSION.NUM_HEADS = 8
    _C.MODEL.FUSION.DROPOUT = 0.1  # attention-probability dropout (training only)
    # Token features for the dot product: the tower's fused features ("fused", T (C), L) or the
    # masked language-backbone output ("backbone", T (A)).
    _C.MODEL.FUSION.DOT_PRODUCT_FEATURES = "fused"
    # Run the fusion blocks under torch.utils.checkpoint in training (memory only).
    _C.MODEL.FUSION.USE_CHECKPOINT = False
    # Implementation of the fusion's bidirectional attention, by name (see
    # glip_d2.modeling.fusion.FUSION_ATTENTION_IMPLS). "reassociated" (default): the official
    # arithmetic with the products reassociated so that no (positions x 2048) tensor is built,
    # the same numbers up to float rounding in 2.3x fewer multiplications at GLIP-T size;
    # "reference" (alias "eager"): the straightforward official order of operations.
    _C.MODEL.FUSION.ATTENTION_IMPL = "reassociated"

    # ---------------------------------------------------------------- GLIPv2 pre-training losses
    # (GLIPv2 reference §3). Each term is off at weight 0 and then adds no parameter.
    _C.MODEL.GLIPV2 = CN()
    # Inter-image region-word contrastive loss L_inter (loss key "loss_region_word").
    _C.MODEL.GLIPV2.REGION_WORD = CN()
    _C.MODEL.GLIPV2.REGION_WORD.WEIGHT = 0.0
    # "paper": the paper's loss (pre-fusion features on both sides; every ATSS-positive anchor,
    #   the first GT box's included; cross-image positives by concept = normalised category
    #   name or phrase text; padding rows masked out).
    # "code": the dormant official code as written ("shallow contrastive loss"): fused text
    #   features, anchors of GT box 0 never positive, positives by equal dataset category id,
    #   padding with random negative anchors. For parity with the official fixture.
    _C.MODEL.GLIPV2.REGION_WORD.MODE = "paper"
    _C.MODEL.GLIPV2.REGION_WORD.MAX_REGIONS_PER_IMAGE = 100  # ATSS positives kept per image
    _C.MODEL.GLIPV2.REGION_WORD.EMBED_DIM = 64  # width of both projections
    _C.MODEL.GLIPV2.REGION_WORD.LOG_SCALE_INIT = 0.0  # learnable log temperature (tau = 1)
    # Paper mode: identical phrase text in different captions is a positive pair (off: caption
    # phrases are positives only inside their own image; category names always match).
    _C.MODEL.GLIPV2.REGION_WORD.PHRASE_POSITIVES = True
    # Masked language modelling L_mlm (loss key "loss_mlm") on the fused text features.
    _C.MODEL.GLIPV2.MLM = CN()
    _C.MODEL.GLIPV2.MLM.WEIGHT = 0.0
    _C.MODEL.GLIPV2.MLM.MASK_PROB = 0.15  # of the maskable tokens; then 80% [MASK], 10%, 10%
    # Which tokens are scored: "greenlight" (caption of grounding data, positive category
    # names of detection data), "all" (every real token) or "none".
    _C.MODEL.GLIPV2.MLM.SCOPE = "greenlight"
    # Start the LM head from the language model's own (e.g. BertForMaskedLM's cls.predictions)
    # when its checkpoint has one; otherwise, and when False, a fresh head (official).
    _C.MODEL.GLIPV2.MLM.INIT_FROM_LM_HEAD = True
    # Share the LM head's decoder weight with the language model's word embeddings, as BERT's
    # own MLM head does (the official GLIPv2 code does not: False). With a frozen language
    # backbone the decoder is then frozen too, which saves the update of a V x D matrix.
    _C.MODEL.GLIPV2.MLM.TIE_WORD_EMBEDDINGS = False
    # Which prompt the grounding losses (loss_token, box losses, loss_region_word) see:
    # "masked": the MLM-masked prompt, one pass for every loss (official GLIPv2 code,
    # reference §7.6); a masked colour word then also blurs which box the phrase names.
    # "clean": the unmasked prompt, and L_mlm on a second language + head pass over the
    # masked prompt (not in the official code; about 1.4x the step time of "masked").
    _C.MODEL.GLIPV2.MLM.GROUNDING_PROMPT = "masked"

    # ---------------------------------------------------------------- head (reference §5.2-§8)
    _C.MODEL.GLIP_HEAD = CN()
    _C.MODEL.GLIP_HEAD.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.GLIP_HEAD.NUM_CONVS = 6  # DyHead blocks
    _C.MODEL.GLIP_HEAD.NUM_GROUPS = 16  # GroupNorm groups in DyHead
    _C.MODEL.GLIP_HEAD.USE_DYRELU = True
    _C.MODEL.GLIP_HEAD.USE_DYFUSE = True  # scale-aware attention
    _C.MODEL.GLIP_HEAD.USE_DFCONV = True  # modulated deformable 3x3 convs
    # Kernel of those convs, by name (glip_d2.modeling.head.deform_conv.DEFORM_CONV_IMPLS); all
    # give the same numbers up to float rounding, with the official offset reinterpretation.
    # "auto" (default): "sparse" for CPU inference, "torchvision" in training and on GPU;
    # "sparse": bilinear sampling as one sparse product, then one GEMM (about 3x faster than
    # torchvision's CPU kernel); "torchvision" (alias "reference"): torchvision.ops.deform_conv2d.
    _C.MODEL.GLIP_HEAD.DEFORM_CONV_IMPL = "auto"
    # Width of the unused ``cls_logits`` conv (official DYHEAD.NUM_CLASSES - 1); kept so that
    # official checkpoints load, it takes no part in scores or losses.
    _C.MODEL.GLIP_HEAD.NUM_CLASSES = 80
    _C.MODEL.GLIP_HEAD.PRIOR_PROB = 0.01
    _C.MODEL.GLIP_HEAD.LOG_SCALE = 0.0  # initial value of the learnable dot-product log scale
    # Focal loss on (anchor, token) pairs.
    _C.MODEL.GLIP_HEAD.FOCAL_ALPHA = 0.25
    _C.MODEL.GLIP_HEAD.FOCAL_GAMMA = 2.0
    _C.MODEL.GLIP_HEAD.TOKEN_LOSS_WEIGHT = 1.0
    _C.MODEL.GLIP_HEAD.REG_LOSS_WEIGHT = 2.0  # GIoU weight (ATSS.REG_LOSS_WEIGHT)
    # How token scores become a category score: "MEAN" (official) or "MAX".
    _C.MODEL.GLIP_HEAD.SCORE_AGG = "MEAN"

    _C.MODEL.ATSS = CN()
    _C.MODEL.ATSS.ANCHOR_SIZES = [64, 128, 256, 512, 1024]  # one square anchor per location
    _C.MODEL.ATSS.ANCHOR_STRIDES = [8, 16, 32, 64, 128]
    _C.MODEL.ATSS.TOPK = 9  # candidates per level per box
    _C.MODEL.ATSS.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    _C.MODEL.ATSS.INFERENCE_TH = 0.05  # on the token score, before centerness
    _C.MODEL.ATSS.PRE_NMS_TOP_N = 1000  # per level
    _C.MODEL.ATSS.NMS_TH = 0.6
    _C.MODEL.ATSS.DETECTIONS_PER_IMG = 100

    # ------------------------------------------- GLIPv2 VL mask head (GLIPv2 reference §4)
    # MODEL.MASK_ON (Detectron2's key) builds it. An ROI head on the one-stage detections:
    # ROIAlign on the fused DyHead maps, Hourglass blocks, and a predictor that dots each pixel
    # with the fused token features (one logit map per token, averaged over a phrase's tokens).
    _C.MODEL.ROI_MASK_HEAD.NAME = "VLHourglassMaskHead"
    # Legacy ROIAlign (aligned=False, no half-pixel shift) as the official maskrcnn-benchmark
    # pooler; 14x14 ROIs, adaptive sampling. Levels: canonical box 224 at level 4, with the
    # official +1 area.
    _C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlign"
    _C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
    _C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
    # Hourglass blocks (official CONV_LAYERS entries), each as wide as the head (FPN) maps;
    # HG_SCALE is the Hourglass recursion depth (1 with 14x14 ROIs: 14 -> 7 -> 14).
    _C.MODEL.ROI_MASK_HEAD.NUM_HOURGLASS = 1
    _C.MODEL.ROI_MASK_HEAD.HG_SCALE = 1
    _C.MODEL.ROI_MASK_HEAD.NORM = ""  # "" (official default) or "GN" (inside low2/low3 only)
    # Training ROIs. "atss+gt" (official): the ATSS detections of the training pass (score
    # threshold 0, PRE_NMS_TOP_N_TRAIN per level, NMS ATSS.NMS_TH, POST_NMS_TOP_N_TRAIN kept)
    # plus every GT box. Only ROIs matching a GT at IoU >= MATCH_IOU get loss. The official head
    # runs every ROI through the Hourglass and all 256 token maps: about 3 MB of activations
    # per ROI at width 256, about 3 GB per image at its 1000 ROIs. Here only the scored ROIs
    # are computed (each ROI's output depends on that ROI alone: the same loss and gradients),
    # so memory grows with the matched ROIs, typically tens per GT box.
    # "gt": the GT boxes only, one ROI per box: the least memory and time, but the head never
    # trains on the imprecise boxes it will see at test time.
    _C.MODEL.ROI_MASK_HEAD.TRAIN_PROPOSALS = "atss+gt"
    _C.MODEL.ROI_MASK_HEAD.PRE_NMS_TOP_N_TRAIN = 3000
    _C.MODEL.ROI_MASK_HEAD.POST_NMS_TOP_N_TRAIN = 1000
    _C.MODEL.ROI_MASK_HEAD.MATCH_IOU = 0.5
    _C.MODEL.ROI_MASK_HEAD.LOSS_WEIGHT = 1.0  # loss_mask
    # Annotations without a segmentation: "skip" (no mask loss for their ROIs) or "box" (a
    # filled rectangle as their mask, the official ConvertCocoPolysToMask behaviour).
    _C.MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS = "skip"

    # ------------------------------------- GLIPv2 VQA and captioning (GLIPv2 reference §5)
    # Unpublished in GLIPv2; our choices are documented in glip_d2/modeling/vl_tasks/. Records
    # of a dataset whose metadata says task "vqa" / "caption" go through the VQA / caption
    # mapping and these heads; a batch is one task.
    # VQA: the question is the trunk's text; an answer classifier on the pooled fused features.
    _C.MODEL.VQA_ON = False
    _C.MODEL.VQA = CN()
    # Json list of the answers (normalised). "": train_net.py builds the NUM_ANSWERS most
    # frequent answers of DATASETS.TRAIN into OUTPUT_DIR/answer_vocab.json and points here.
    _C.MODEL.VQA.ANSWER_VOCAB = ""
    _C.MODEL.VQA.NUM_ANSWERS = 3129  # the VQAv2 convention
    # "text+visual": masked mean of the fused tokens + mean of the fused visual maps (default);
    # "text": the first only; "cls": the fused [CLS] feature (VinVL).
    _C.MODEL.VQA.POOLING = "text+visual"
    _C.MODEL.VQA.HIDDEN_DIM = 0  # classifier width; 0: twice its input
    _C.MODEL.VQA.LOSS_WEIGHT = 1.0  # loss_vqa: BCE on soft scores, summed over answers
    # Captioning: causal text through the whole trunk (the fusion's text->image direction off),
    # trained by teacher forcing with a BERT LM head, decoded greedily or by beam search.
    _C.MODEL.CAPTION_ON = False
    _C.MODEL.CAPTION = CN()
    _C.MODEL.CAPTION.MAX_LENGTH = 20  # generated tokens at most (VinVL: 20)
    _C.MODEL.CAPTION.BEAM_SIZE = 5  # 1: greedy (VinVL: 5)
    _C.MODEL.CAPTION.LENGTH_PENALTY = 1.0  # beam score: sum log p / length ** this
    _C.MODEL.CAPTION.LABEL_SMOOTHING = 0.0
    # Share the LM decoder with the word embeddings (BERT's tying); with a frozen language
    # backbone the decoder then does not train either.
    _C.MODEL.CAPTION.TIE_WORD_EMBEDDINGS = False
    _C.MODEL.CAPTION.LOSS_WEIGHT = 1.0  # loss_caption
    # Training captions of a record: one of its references per visit, seeded by SEED, the
    # image and the pass over the data (as the MLM masks).

    # ---------------------------------------------------------------- prompts (reference §9-§10)
    _C.INPUT.PROMPT = CN()
    # Tokenizer: Hugging Face name or local folder with vocab.txt (bert-base-uncased's vocab).
    _C.INPUT.PROMPT.TOKENIZER = "bert-base-uncased"
    _C.INPUT.PROMPT.SEPARATOR = ". "  # joins category names; no trailing separator
    # Training prompts for detection data: negatives sampled per image.
    # 0 = no negatives; < 0 = every category in every prompt (official -1, COCO/ODinW
    # fine-tuning), still within TOKEN_BUDGET.
    _C.INPUT.PROMPT.RANDOM_SAMPLE_NEG = 85
    # Probability of the "full" setting (RANDOM_SAMPLE_NEG negatives); otherwise the number of
    # negatives is drawn uniformly from 1..RANDOM_SAMPLE_NEG (official CONTROL_PROB[2]).
    _C.INPUT.PROMPT.FULL_NEG_PROB = 0.5
    _C.INPUT.PROMPT.TOKEN_BUDGET = 254  # wordpieces available to a training prompt
    _C.INPUT.PROMPT.SHUFFLE = True  # shuffle category order in training prompts
    # Categories per prompt at evaluation (large vocabularies are chunked); 0 = as many as fit
    # in MAX_QUERY_LEN tokens. The official LVIS recipe uses 40.
    _C.INPUT.PROMPT.CHUNK_SIZE = 0
    # spaCy model that finds the noun phrases of a caption given without phrase spans.
    _C.INPUT.PROMPT.SPACY_MODEL = "en_core_web_sm"
    # Add the official "__background__" entry to the negative pool of training prompts.
    _C.INPUT.PROMPT.BACKGROUND_NEGATIVE = False
    # A grounding span that cuts a token: "repair" (widen to covering tokens, warn) or "error".
    _C.INPUT.PROMPT.ON_BAD_SPAN = "repair"
    # An unreadable training image: "error" (raise naming the file) or "skip" (warn, next image).
    _C.INPUT.ON_BAD_IMAGE = "error"
    # Training on pseudo-labels (tools/pseudo_label.py writes a "score" into every box it makes;
    # gold boxes have none and are never dropped or weighted).
    _C.INPUT.PSEUDO_LABELS = CN()
    # Drop boxes scoring below this when mapping a training image (0: keep all). In a caption
    # whose boxes are all dropped, the phrase's tokens are then negatives, as any unlabelled text.
    _C.INPUT.PSEUDO_LABELS.MIN_SCORE = 0.0
    # Weight each scored box's losses (token alignment, GIoU and centerness at the anchors ATSS
    # assigns to it) by its score; negative anchors keep weight 1.
    _C.INPUT.PSEUDO_LABELS.SCORE_WEIGHTING = False

    _C.INPUT.MIN_SIZE_TRAIN = (480, 560, 640, 720, 800)
    _C.INPUT.MAX_SIZE_TRAIN = 1333
    _C.INPUT.MIN_SIZE_TEST = 800
    _C.INPUT.MAX_SIZE_TEST = 1333
    _C.INPUT.FORMAT = "BGR"
    _C.DATALOADER.SIZE_DIVISIBILITY = 32

    # ---------------------------------------------------------------- solver (reference §14)
    _C.SOLVER.OPTIMIZER = "ADAMW"
    _C.SOLVER.BASE_LR = 1e-4
    _C.SOLVER.LANG_LR_FACTOR = 0.1  # language-backbone LR = BASE_LR x this (1e-5 officially)
    _C.SOLVER.WEIGHT_DECAY = 1e-4
    _C.SOLVER.BIAS_LR_FACTOR = 2.0
    _C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    _C.SOLVER.CLIP_GRADIENTS.ENABLED = True
    _C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    _C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    _C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    _C.SOLVER.WARMUP_FACTOR = 0.001
    _C.SOLVER.WARMUP_ITERS = 2000
    # Transfer mode: "full", "prompt_tuning" (language_prompt_v2), "linear_probe".
    _C.SOLVER.TUNING_MODE = "full"
    _C.SOLVER.MODEL_EMA = 0.0  # EMA decay of the whole state dict; 0 disables
    # Learning-rate milestones: values below 1 are fractions of MAX_ITER (official (0.67, 0.89)).
    _C.SOLVER.STEPS = (0.67, 0.89)
    # Weight decay x SOLVER.GAMMA once the iteration reaches this fraction of each SOLVER.STEPS
    # milestone (official SOLVER.WEIGHT_DECAY_SCHEDULE, ratio 0.667, GLIP-L); 0 = constant.
    _C.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.0

    # Datasets registered from files before the loaders are built (train_net.py's setup, in every
    # process), so that DATASETS.TRAIN / TEST can name them: a list of mappings
    # {NAME, FORMAT ("coco" or "mdetr"), JSON_FILE, IMAGE_ROOT}; paths relative to the working
    # directory. See glip_d2/data/datasets/from_config.py.
    _C.DATASETS.REGISTER = []

    # Per-dataset repeat factor of DATASETS.TRAIN (official *_COPY); empty = 1 for each.
    _C.DATASETS.TRAIN_REPEAT = []
    # k-shot transfer: keep images until every category is in FEW_SHOT of them (0 = all data),
    # reproducible from FEW_SHOT_SEED.
    _C.DATASETS.FEW_SHOT = 0
    _C.DATASETS.FEW_SHOT_SEED = 0

    _C.TEST.EVAL_PERIOD = 0
    # Inference: (image, prompt chunk) pairs per language-backbone/head pass.
    _C.TEST.PROMPT_BATCH_SIZE = 8
    # Inference arithmetic: "fp32" (default; the parity tests' setting), or "fp16" / "bf16":
    # autocast for the backbones, the fusion and the heads, with box decoding, NMS and mask
    # pasting in fp32. fp16 is meant for GPUs (the official clamps keep its logits finite);
    # bf16 also runs on CPUs with bf16 support. See the README for the measured differences.
    _C.TEST.PRECISION = "fp32"
    # Inference keeps the language features of this many recent prompt batches (0: off): a
    # fixed vocabulary is encoded once per dataset or video instead of once per image. Entries
    # are only reused while the language parameters are unchanged.
    _C.TEST.TEXT_CACHE_SIZE = 16
    # Images per test batch. 1 (default) for detection and grounding: padding a batch to its
    # largest image changes scores slightly (README "batch padding"). VQA and captioning configs
    # batch their questions / images.
    _C.TEST.IMS_PER_BATCH = 1
    # Evaluate with the EMA weights (when SOLVER.MODEL_EMA > 0).
    _C.TEST.USE_EMA = True
    # After evaluation, draw the predictions on the first NUM_IMAGES images of each test set.
    _C.TEST.VISUALIZE = CN()
    _C.TEST.VISUALIZE.NUM_IMAGES = 0
    _C.TEST.VISUALIZE.SCORE_THRESH = 0.3

    # ---------------------------------------------------------------- auto-labelling
    # tools/pseudo_label.py (glip_d2.autolabel.LabelSettings, which documents the reasons for
    # these defaults): boxes kept per phrase (captions) or class (ontology) and image.
    _C.AUTOLABEL = CN()
    _C.AUTOLABEL.SCORE_THRESHOLD = 0.5
    _C.AUTOLABEL.NMS_IOU = 0.5
    _C.AUTOLABEL.TOPK = 10
    # Images per shard (the unit of resuming) and a progress line every LOG_EVERY images.
    _C.AUTOLABEL.SHARD_SIZE = 64
    _C.AUTOLABEL.LOG_EVERY = 50


def setup_cfg(config_file: str, opts: Sequence[str] = ()) -> CN:
    """The frozen glip_d2 config of ``config_file`` with the ``opts`` overrides (``KEY VALUE``
    pairs, as on the command line); a CUDA device falls back to CPU when CUDA is not available.
    Used by the demos and the tools that only build a model."""
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg
