"""Official GLIP (maskrcnn-benchmark yacs) config to glip_d2 config keys.

Used by ``tools/convert_glip_config.py``. The official file is read as the official code reads
it: yacs merges the yaml onto the defaults of ``maskrcnn_benchmark/config/defaults.py``
(microsoft/GLIP) and literal-evaluates string values, so ``"(64, 128)"`` is a tuple; a task
overlay (the official ``--task_config``) is merged on top. Keys the file does not set take the
official default (:data:`OFFICIAL_DEFAULTS`), not glip_d2's.

Every official leaf key ends up in one of three groups: *mapped* to a glip_d2 key, *checked*
(glip_d2 implements one value only; a different value is reported as unsupported), or *not
expressed* (no glip_d2 equivalent; listed by name).
"""

from __future__ import annotations

import ast
import json
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import yaml


class _TupleLoader(yaml.SafeLoader):
    """Safe loader that also reads ``!!python/tuple`` (yacs dumps tuples that way)."""


_TupleLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
)


def decode_value(value: Any) -> Any:
    """One yaml value as yacs merges it (``CfgNode._decode_cfg_value``): a string that is a
    Python literal becomes that literal (``"(1.0,)"`` -> ``(1.0,)``, ``"1e-4"`` -> ``0.0001``),
    any other string stays a string (``". "``, ``"MEAN"``); mappings are decoded leaf by leaf."""
    if isinstance(value, Mapping):
        return {k: decode_value(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _read_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_TupleLoader)
    except OSError as e:
        raise ValueError(f"cannot read official GLIP config {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid yaml: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a GLIP yaml config (top level is not a mapping)")
    return decode_value(data)


def _merge(base: Dict[str, Any], overlay: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_official_config(path: str, task_configs: Sequence[str] = ()) -> Dict[str, Any]:
    """Read an official GLIP model config, with optional task overlays merged on top in order
    (as the official ``--config-file X --task_config Y`` does), into nested dicts.

    Args:
        path (str): the model config, e.g. ``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``.
        task_configs (sequence of str): task overlays, e.g. ``configs/odinw/*.yaml`` or
            ``configs/lvis/minival.yaml``; they set data, class counts and schedules only.

    Returns:
        dict: nested dicts with values decoded as yacs does (:func:`decode_value`); tuples
        stay tuples. Keys the files do not set are absent (see :data:`OFFICIAL_DEFAULTS`).

    Raises:
        ValueError: naming the file, if it cannot be read or is not a mapping, or if ``path``
            sets no ``MODEL.META_ARCHITECTURE`` (a task overlay given alone).
    """
    config = _read_yaml(path)
    model = config.get("MODEL")
    if not (isinstance(model, Mapping) and "META_ARCHITECTURE" in model):
        raise ValueError(
            f"{path} sets no MODEL.META_ARCHITECTURE, so it does not describe a GLIP model: it "
            "looks like an official task overlay (what the official code takes with "
            "--task_config, e.g. configs/odinw/*.yaml, configs/lvis/minival.yaml). A task "
            "overlay needs a model config: convert_glip_config.py MODEL.yaml --task-config "
            f"{path} -o OUT.yaml"
        )
    for overlay in task_configs:
        config = _merge(config, _read_yaml(overlay))
    return config


def flatten(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> ``{"A.B.C": value}``."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _as_bool(x):
    if isinstance(x, bool):
        return x
    raise ValueError(f"expected True or False, got {x!r}")


def _full_neg_prob(p):
    # CONTROL_PROB: probabilities of the official prompt "control" settings; glip_d2 implements
    # the third (all RANDOM_SAMPLE_NEG negatives), the others are 0 in every official config.
    if not isinstance(p, (list, tuple)) or len(p) != 4:
        raise ValueError(f"expected 4 probabilities, got {p!r}")
    return float(p[2])


# official key -> (glip_d2 key, transform)
MAPPED: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "MODEL.SWINT.EMBED_DIM": ("MODEL.SWIN.EMBED_DIM", int),
    "MODEL.SWINT.DEPTHS": ("MODEL.SWIN.DEPTHS", _as_list),
    "MODEL.SWINT.NUM_HEADS": ("MODEL.SWIN.NUM_HEADS", _as_list),
    "MODEL.SWINT.WINDOW_SIZE": ("MODEL.SWIN.WINDOW_SIZE", int),
    "MODEL.SWINT.MLP_RATIO": ("MODEL.SWIN.MLP_RATIO", float),
    "MODEL.SWINT.DROP_PATH_RATE": ("MODEL.SWIN.DROP_PATH_RATE", float),
    "MODEL.BACKBONE.USE_CHECKPOINT": ("MODEL.SWIN.USE_CHECKPOINT", _as_bool),
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": ("MODEL.BACKBONE.FREEZE_AT", int),
    "MODEL.BACKBONE.OUT_CHANNELS": ("MODEL.GLIP_FPN.OUT_CHANNELS", int),
    "MODEL.FPN.DROP_BLOCK": ("MODEL.GLIP_FPN.DROP_BLOCK", _as_bool),
    "MODEL.FPN.DROP_PROB": ("MODEL.GLIP_FPN.DROP_PROB", float),
    "MODEL.FPN.DROP_SIZE": ("MODEL.GLIP_FPN.DROP_SIZE", int),
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": ("MODEL.LANGUAGE_BACKBONE.MODEL_NAME", str),
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": ("INPUT.PROMPT.TOKENIZER", str),
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": ("MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN", int),
    "MODEL.LANGUAGE_BACKBONE.FREEZE": ("MODEL.LANGUAGE_BACKBONE.FREEZE", _as_bool),
    "MODEL.DYHEAD.NUM_CONVS": ("MODEL.GLIP_HEAD.NUM_CONVS", int),
    "MODEL.DYHEAD.USE_DYRELU": ("MODEL.GLIP_HEAD.USE_DYRELU", _as_bool),
    "MODEL.DYHEAD.USE_DYFUSE": ("MODEL.GLIP_HEAD.USE_DYFUSE", _as_bool),
    "MODEL.DYHEAD.USE_DFCONV": ("MODEL.GLIP_HEAD.USE_DFCONV", _as_bool),
    "MODEL.DYHEAD.NUM_CLASSES": ("MODEL.GLIP_HEAD.NUM_CLASSES", lambda n: int(n) - 1),
    "MODEL.DYHEAD.PRIOR_PROB": ("MODEL.GLIP_HEAD.PRIOR_PROB", float),
    "MODEL.DYHEAD.LOG_SCALE": ("MODEL.GLIP_HEAD.LOG_SCALE", float),
    "MODEL.DYHEAD.SCORE_AGG": ("MODEL.GLIP_HEAD.SCORE_AGG", str),
    "MODEL.DYHEAD.USE_CHECKPOINT": ("MODEL.FUSION.USE_CHECKPOINT", _as_bool),
    "MODEL.GROUP_NORM.NUM_GROUPS": ("MODEL.GLIP_HEAD.NUM_GROUPS", int),
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA": ("MODEL.GLIP_HEAD.FOCAL_ALPHA", float),
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA": ("MODEL.GLIP_HEAD.FOCAL_GAMMA", float),
    "MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT": (
        "MODEL.GLIP_HEAD.TOKEN_LOSS_WEIGHT",
        float,
    ),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": (
        "MODEL.FUSION.DOT_PRODUCT_FEATURES",
        lambda on: "fused" if on else "backbone",
    ),
    "MODEL.RPN.ANCHOR_SIZES": ("MODEL.ATSS.ANCHOR_SIZES", _as_list),
    "MODEL.RPN.ANCHOR_STRIDE": ("MODEL.ATSS.ANCHOR_STRIDES", _as_list),
    "MODEL.ATSS.TOPK": ("MODEL.ATSS.TOPK", int),
    "MODEL.ATSS.INFERENCE_TH": ("MODEL.ATSS.INFERENCE_TH", float),
    "MODEL.ATSS.PRE_NMS_TOP_N": ("MODEL.ATSS.PRE_NMS_TOP_N", int),
    "MODEL.ATSS.NMS_TH": ("MODEL.ATSS.NMS_TH", float),
    "MODEL.ATSS.DETECTIONS_PER_IMG": ("MODEL.ATSS.DETECTIONS_PER_IMG", int),
    "MODEL.ATSS.REG_LOSS_WEIGHT": ("MODEL.GLIP_HEAD.REG_LOSS_WEIGHT", float),
    "INPUT.MIN_SIZE_TEST": ("INPUT.MIN_SIZE_TEST", int),
    "INPUT.MAX_SIZE_TEST": ("INPUT.MAX_SIZE_TEST", int),
    "INPUT.MAX_SIZE_TRAIN": ("INPUT.MAX_SIZE_TRAIN", int),
    "INPUT.PIXEL_MEAN": ("MODEL.PIXEL_MEAN", _as_list),
    "INPUT.PIXEL_STD": ("MODEL.PIXEL_STD", _as_list),
    "AUGMENT.MULT_MIN_SIZE_TRAIN": ("INPUT.MIN_SIZE_TRAIN", _as_list),
    "DATALOADER.SIZE_DIVISIBILITY": ("DATALOADER.SIZE_DIVISIBILITY", int),
    "DATALOADER.NUM_WORKERS": ("DATALOADER.NUM_WORKERS", int),
    "DATALOADER.ASPECT_RATIO_GROUPING": ("DATALOADER.ASPECT_RATIO_GROUPING", _as_bool),
    "DATASETS.SEPARATION_TOKENS": ("INPUT.PROMPT.SEPARATOR", str),
    "DATASETS.RANDOM_SAMPLE_NEG": ("INPUT.PROMPT.RANDOM_SAMPLE_NEG", int),
    "DATASETS.CONTROL_PROB": ("INPUT.PROMPT.FULL_NEG_PROB", _full_neg_prob),
    "DATASETS.DISABLE_SHUFFLE": ("INPUT.PROMPT.SHUFFLE", lambda off: not off),
    "SOLVER.BASE_LR": ("SOLVER.BASE_LR", float),
    "SOLVER.WEIGHT_DECAY": ("SOLVER.WEIGHT_DECAY", float),
    "SOLVER.BIAS_LR_FACTOR": ("SOLVER.BIAS_LR_FACTOR", float),
    "SOLVER.WEIGHT_DECAY_BIAS": ("SOLVER.WEIGHT_DECAY_BIAS", float),
    "SOLVER.WARMUP_ITERS": ("SOLVER.WARMUP_ITERS", int),
    "SOLVER.WARMUP_FACTOR": ("SOLVER.WARMUP_FACTOR", float),
    "SOLVER.IMS_PER_BATCH": ("SOLVER.IMS_PER_BATCH", int),
    "SOLVER.MAX_ITER": ("SOLVER.MAX_ITER", int),
    "SOLVER.CHECKPOINT_PERIOD": ("SOLVER.CHECKPOINT_PERIOD", int),
    "SOLVER.GAMMA": ("SOLVER.GAMMA", float),
    "SOLVER.USE_AMP": ("SOLVER.AMP.ENABLED", _as_bool),
    "SOLVER.MODEL_EMA": ("SOLVER.MODEL_EMA", float),
    "SOLVER.CLIP_GRADIENTS.ENABLED": ("SOLVER.CLIP_GRADIENTS.ENABLED", _as_bool),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", str),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", float),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", float),
    "TEST.CHUNKED_EVALUATION": ("INPUT.PROMPT.CHUNK_SIZE", lambda n: max(int(n), 0)),
}

# official key -> values glip_d2 implements (anything else is unsupported)
CHECKED: Dict[str, Tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedVLRCNN",),
    "MODEL.RPN_ARCHITECTURE": ("VLDYHEAD",),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.BACKBONE.CONV_BODY": ("SWINT-FPN-RETINANET",),
    "MODEL.SWINT.VERSION": ("v1",),
    "MODEL.SWINT.APE": (False,),
    "MODEL.SWINT.LAYER_SCALE": (0,),
    "MODEL.SWINT.OUT_NORM": (True,),
    "MODEL.FPN.USE_GN": (False,),
    "MODEL.FPN.USE_RELU": (False,),
    "MODEL.FPN.USE_DYHEAD": (False,),
    "MODEL.FPN.USE_SPP": (False,),
    "MODEL.FPN.USE_PAN": (False,),
    "MODEL.RPN.ASPECT_RATIOS": ([1.0],),
    "MODEL.RPN.SCALES_PER_OCTAVE": (1,),
    "MODEL.RPN.USE_FPN": (True,),
    "MODEL.LANGUAGE_BACKBONE.N_LAYERS": (1,),
    "MODEL.LANGUAGE_BACKBONE.PAD_MAX": (True,),
    "MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL": (False,),
    "MODEL.DYHEAD.USE_GN": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CLASSIFICATION_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_TOKEN_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_ZERO_PADS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_OD": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_GOLD": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.SEPARATE_BIDIRECTIONAL": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.STABLE_SOFTMAX_2D": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": (True,),
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW": (True,),
    "MODEL.DYHEAD.COSINE_SCALE": (-1.0, -1),
    "INPUT.TO_BGR255": (True,),
    "SOLVER.OPTIMIZER": ("ADAMW",),
    "SOLVER.WARMUP_METHOD": ("linear",),
    "SOLVER.USE_COSINE": (False,),
    "SOLVER.USE_AUTOSTEP": (False,),
    "SOLVER.WEIGHT_DECAY_NORM_FACTOR": (1.0, 1),
    "SOLVER.BACKBONE_BODY_LR_FACTOR": (1.0, 1),
    "TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM": (-1, 3000, 100),
    "TEST.USE_MULTISCALE": (False,),
    "DATASETS.ONE_HOT": (False,),
    "DATASETS.ADD_DET_PROMPT": (False,),
    "GLIPKNOW.PARALLEL_LANGUAGE_INPUT": (False,),
}

# Keys read together with others (no key of their own on our side).
DERIVED = {
    "MODEL.RPN_ONLY",
    "MODEL.MASK_ON",
    "MODEL.BOX_ON",
    "MODEL.RPN.RETURN_FUSED_FEATURES",
    "MODEL.ROI_HEADS.USE_FPN",
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD",
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD",
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR",
    "MODEL.ROI_MASK_HEAD.PREDICTOR",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO",
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES",
    "MODEL.ROI_MASK_HEAD.RESOLUTION",
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS",
    "MODEL.ROI_MASK_HEAD.HG_SCALE",
    "MODEL.ROI_MASK_HEAD.USE_GN",
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR",
    "MODEL.ATSS.PRE_NMS_TOP_N_TRAIN",
    "MODEL.ATSS.POST_NMS_TOP_N_TRAIN",
    "MODEL.ATSS.INFERENCE_TH_TRAIN",
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS",
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_LOSS_WEIGHT",
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_MAX_POSITIVE_ANCHORS",
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_HIDDEN_DIM",
    "MODEL.DYHEAD.SHALLOW_LOG_SCALE",
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS",
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_COEF",
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_FOR_ONLY_POSITIVES",
    "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON",
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE",
    "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER",
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE",
    "MODEL.DYHEAD.CHANNELS",
    "MODEL.SWINT.OUT_CHANNELS",
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM",
    "SOLVER.LANG_LR",
    "SOLVER.STEPS",
    "SOLVER.TUNING_HIGHLEVEL_OVERRIDE",
    "SOLVER.MAX_EPOCH",
    "SOLVER.WEIGHT_DECAY_SCHEDULE",
    "SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO",
    "INPUT.MIN_SIZE_TRAIN",
}

# Official defaults (maskrcnn_benchmark/config/defaults.py, microsoft/GLIP) of every key the
# conversion reads: a key a file does not set means this value to the official code. (An
# official default that glip_d2 does not implement then shows as unsupported, e.g. a file
# without MODEL.RPN.ASPECT_RATIOS gets the official three aspect ratios.)
OFFICIAL_DEFAULTS: Dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.RPN_ARCHITECTURE": "RPN",
    "MODEL.RPN_ONLY": False,
    "MODEL.MASK_ON": False,
    "MODEL.BOX_ON": True,
    "MODEL.RPN.RETURN_FUSED_FEATURES": False,
    "MODEL.ROI_HEADS.USE_FPN": False,
    "MODEL.ROI_HEADS.FG_IOU_THRESHOLD": 0.5,
    "MODEL.ROI_HEADS.BG_IOU_THRESHOLD": 0.5,
    "MODEL.ROI_MASK_HEAD.FEATURE_EXTRACTOR": "ResNet50Conv5ROIFeatureExtractor",
    "MODEL.ROI_MASK_HEAD.PREDICTOR": "MaskRCNNC4Predictor",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.POOLER_SCALES": (1.0 / 16,),
    "MODEL.ROI_MASK_HEAD.RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.CONV_LAYERS": (256, 256, 256, 256),
    "MODEL.ROI_MASK_HEAD.HG_SCALE": 1,
    "MODEL.ROI_MASK_HEAD.USE_GN": False,
    "MODEL.ROI_MASK_HEAD.SHARE_BOX_FEATURE_EXTRACTOR": True,
    "MODEL.ATSS.PRE_NMS_TOP_N_TRAIN": 3000,
    "MODEL.ATSS.POST_NMS_TOP_N_TRAIN": 1000,
    "MODEL.ATSS.INFERENCE_TH_TRAIN": 0.0,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.BACKBONE.CONV_BODY": "R-50-C4",
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": 2,
    "MODEL.BACKBONE.OUT_CHANNELS": 1024,
    "MODEL.BACKBONE.USE_CHECKPOINT": False,
    "MODEL.SWINT.EMBED_DIM": 96,
    "MODEL.SWINT.DEPTHS": (2, 2, 6, 2),
    "MODEL.SWINT.NUM_HEADS": (3, 6, 12, 24),
    "MODEL.SWINT.WINDOW_SIZE": 7,
    "MODEL.SWINT.MLP_RATIO": 4,
    "MODEL.SWINT.DROP_PATH_RATE": 0.2,
    "MODEL.SWINT.APE": False,
    "MODEL.SWINT.VERSION": "v1",
    "MODEL.SWINT.LAYER_SCALE": 0,
    "MODEL.SWINT.OUT_NORM": True,
    "MODEL.SWINT.OUT_CHANNELS": (96, 192, 384, 768),
    "MODEL.FPN.USE_GN": False,
    "MODEL.FPN.USE_RELU": False,
    "MODEL.FPN.DROP_BLOCK": True,
    "MODEL.FPN.DROP_PROB": 0.3,
    "MODEL.FPN.DROP_SIZE": 3,
    "MODEL.FPN.USE_SPP": False,
    "MODEL.FPN.USE_PAN": False,
    "MODEL.FPN.USE_DYHEAD": False,
    "MODEL.GROUP_NORM.NUM_GROUPS": 16,
    "MODEL.LANGUAGE_BACKBONE.FREEZE": False,
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": "bert-base-uncased",
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": "bert-base-uncased",
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM": 768,
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": 256,
    "MODEL.LANGUAGE_BACKBONE.N_LAYERS": 1,
    "MODEL.LANGUAGE_BACKBONE.MASK_SPECIAL": False,
    "MODEL.LANGUAGE_BACKBONE.PAD_MAX": True,
    "MODEL.RPN.USE_FPN": False,
    "MODEL.RPN.ANCHOR_SIZES": (32, 64, 128, 256, 512),
    "MODEL.RPN.ANCHOR_STRIDE": (16,),
    "MODEL.RPN.ASPECT_RATIOS": (0.5, 1.0, 2.0),
    "MODEL.RPN.SCALES_PER_OCTAVE": 3,
    "MODEL.ATSS.INFERENCE_TH": 0.05,
    "MODEL.ATSS.NMS_TH": 0.6,
    "MODEL.ATSS.PRE_NMS_TOP_N": 1000,
    "MODEL.ATSS.TOPK": 9,
    "MODEL.ATSS.REG_LOSS_WEIGHT": 2.0,
    "MODEL.ATSS.DETECTIONS_PER_IMG": 100,
    "MODEL.DYHEAD.NUM_CLASSES": 81,
    "MODEL.DYHEAD.PRIOR_PROB": 0.01,
    "MODEL.DYHEAD.NUM_CONVS": 4,
    "MODEL.DYHEAD.CHANNELS": 128,
    "MODEL.DYHEAD.USE_DFCONV": False,
    "MODEL.DYHEAD.SCORE_AGG": "MEAN",
    "MODEL.DYHEAD.LOG_SCALE": 0.0,
    "MODEL.DYHEAD.USE_GN": False,
    "MODEL.DYHEAD.USE_DYFUSE": False,
    "MODEL.DYHEAD.USE_DYRELU": False,
    "MODEL.DYHEAD.COSINE_SCALE": -1.0,
    "MODEL.DYHEAD.USE_CHECKPOINT": False,
    "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON": False,
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE": "",
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE": 256,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CLASSIFICATION_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_TOKEN_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_GAMMA": 2.0,
    "MODEL.DYHEAD.FUSE_CONFIG.TOKEN_ALPHA": 0.25,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_DOT_PRODUCT_TOKEN_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT": 1.0,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_LAYER_SCALE": True,
    "MODEL.DYHEAD.FUSE_CONFIG.SEPARATE_BIDIRECTIONAL": False,
    "MODEL.DYHEAD.FUSE_CONFIG.STABLE_SOFTMAX_2D": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_FUSED_FEATURES_DOT_PRODUCT": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MIN_FOR_UNDERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_MAX_FOR_OVERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MIN_FOR_UNDERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_BERTATTN_MAX_FOR_OVERFLOW": False,
    "MODEL.DYHEAD.FUSE_CONFIG.CLAMP_DOT_PRODUCT": False,
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_COEF": 1.0,
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS_FOR_ONLY_POSITIVES": True,
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_OD": False,
    "MODEL.DYHEAD.FUSE_CONFIG.NO_MASK_FOR_GOLD": False,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_LOSS_WEIGHT": 1.0,
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_MAX_POSITIVE_ANCHORS": 100,
    "MODEL.DYHEAD.FUSE_CONFIG.SHALLOW_CONTRASTIVE_HIDDEN_DIM": 64,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_ZERO_PADS": False,
    "MODEL.DYHEAD.SHALLOW_LOG_SCALE": 0.0,
    "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": False,
    "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER": False,
    "INPUT.MIN_SIZE_TRAIN": 800,
    "INPUT.MAX_SIZE_TRAIN": 1333,
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
    "INPUT.PIXEL_STD": [1.0, 1.0, 1.0],
    "INPUT.TO_BGR255": True,
    "AUGMENT.MULT_MIN_SIZE_TRAIN": (),
    "DATASETS.RANDOM_SAMPLE_NEG": -1,
    "DATASETS.ADD_DET_PROMPT": False,
    "DATASETS.CONTROL_PROB": (),
    "DATASETS.DISABLE_SHUFFLE": False,
    "DATASETS.ONE_HOT": False,
    "DATASETS.SEPARATION_TOKENS": " ",
    "DATALOADER.NUM_WORKERS": 4,
    "DATALOADER.SIZE_DIVISIBILITY": 0,
    "DATALOADER.ASPECT_RATIO_GROUPING": True,
    "SOLVER.USE_AMP": False,
    "SOLVER.MAX_ITER": 40000,
    "SOLVER.MAX_EPOCH": 0,
    "SOLVER.OPTIMIZER": "SGD",
    "SOLVER.BASE_LR": 0.001,
    "SOLVER.LANG_LR": 0.00001,
    "SOLVER.BACKBONE_BODY_LR_FACTOR": 1.0,
    "SOLVER.BIAS_LR_FACTOR": 2,
    "SOLVER.CLIP_GRADIENTS.ENABLED": False,
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 0.0,
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "full_model",
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": 2.0,
    "SOLVER.MODEL_EMA": 0.0,
    "SOLVER.WEIGHT_DECAY": 0.0005,
    "SOLVER.WEIGHT_DECAY_BIAS": 0.0,
    "SOLVER.WEIGHT_DECAY_NORM_FACTOR": 1.0,
    "SOLVER.USE_COSINE": False,
    "SOLVER.GAMMA": 0.1,
    "SOLVER.STEPS": (30000,),
    "SOLVER.USE_AUTOSTEP": False,
    "SOLVER.WARMUP_FACTOR": 1.0 / 3,
    "SOLVER.WARMUP_ITERS": 500,
    "SOLVER.WARMUP_METHOD": "linear",
    "SOLVER.CHECKPOINT_PERIOD": 2500,
    "SOLVER.IMS_PER_BATCH": 16,
    "SOLVER.TUNING_HIGHLEVEL_OVERRIDE": None,
    "SOLVER.WEIGHT_DECAY_SCHEDULE": False,
    "SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO": 0.667,
    "TEST.USE_MULTISCALE": False,
    "TEST.CHUNKED_EVALUATION": -1,
    "TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM": -1,
}

TUNING_MODES = {
    None: "full",
    "full": "full",
    "language_prompt_v2": "prompt_tuning",
    "linear_prob": "linear_probe",
}


class ConvertedConfig(NamedTuple):
    """What :func:`convert_official_config` found.

    Attributes:
        overrides (dict): glip_d2 dotted keys -> values (plain yaml types).
        unsupported (list[str]): official settings glip_d2 does not implement; the converted
            config would not behave the same.
        not_expressed (list[str]): official keys set in the file with no glip_d2 equivalent.
        notes (list[str]): what the user must still decide (e.g. ``SOLVER.MAX_ITER`` of an
            epoch-based official schedule), one sentence each.
    """

    overrides: Dict[str, Any]
    unsupported: List[str]
    not_expressed: List[str]
    notes: List[str]


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"official {key}={value!r} is not a number")
    return value


def _empty(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, (list, tuple)) and not value)


def _convert_mask_head(flat: Mapping[str, Any], overrides: Dict[str, Any]) -> List[str]:
    """The dormant GLIPv2 VL mask head (GLIPv2 reference §4.2): ``MODEL.MASK_ON`` with the
    one-stage detector (``RPN_ONLY`` False only to feed it, no R-CNN box head), Hourglass
    extractor and VL predictor on the fused maps. Returns the unsupported settings."""
    bad: List[str] = []
    if not flat["MODEL.MASK_ON"]:
        if not flat["MODEL.RPN_ONLY"]:
            bad.append("MODEL.RPN_ONLY=False without the GLIPv2 VL mask head (glip_d2: True)")
        return bad
    m = "MODEL.ROI_MASK_HEAD."
    wanted = {
        "MODEL.BOX_ON": False,
        "MODEL.RPN.RETURN_FUSED_FEATURES": True,
        "MODEL.ROI_HEADS.USE_FPN": True,
        m + "FEATURE_EXTRACTOR": "HourglassFPNFeatureExtractor",
        m + "PREDICTOR": "VLMaskRCNNC4Predictor",
        m + "SHARE_BOX_FEATURE_EXTRACTOR": False,
    }
    for key, value in wanted.items():
        if flat[key] != value:
            bad.append(f"{key}={flat[key]!r} with MODEL.MASK_ON (glip_d2: {value!r})")
    fg, bg = flat["MODEL.ROI_HEADS.FG_IOU_THRESHOLD"], flat["MODEL.ROI_HEADS.BG_IOU_THRESHOLD"]
    if fg != bg:
        bad.append(f"MODEL.ROI_HEADS.BG_IOU_THRESHOLD={bg!r} differs from FG ({fg!r})")
    resolution = int(_number(flat[m + "POOLER_RESOLUTION"], m + "POOLER_RESOLUTION"))
    if flat[m + "RESOLUTION"] != 2 * resolution:
        bad.append(f"{m}RESOLUTION={flat[m + 'RESOLUTION']!r} is not 2 x POOLER_RESOLUTION")
    strides = overrides.get("MODEL.ATSS.ANCHOR_STRIDES") or []
    scales = [float(v) for v in _as_list(flat[m + "POOLER_SCALES"])]
    if [round(1.0 / v) for v in scales] != [int(v) for v in strides]:
        bad.append(f"{m}POOLER_SCALES={scales!r} are not 1 / the anchor strides {strides}")
    layers = _as_list(flat[m + "CONV_LAYERS"])
    channels = flat["MODEL.BACKBONE.OUT_CHANNELS"]
    if any(int(c) != int(channels) for c in layers):
        bad.append(f"{m}CONV_LAYERS={layers!r} differ from MODEL.BACKBONE.OUT_CHANNELS")
    overrides.update(
        {
            "MODEL.MASK_ON": True,
            m + "NAME": "VLHourglassMaskHead",
            m + "POOLER_TYPE": "ROIAlign",
            m + "POOLER_RESOLUTION": resolution,
            m + "POOLER_SAMPLING_RATIO": int(flat[m + "POOLER_SAMPLING_RATIO"]),
            m + "NUM_HOURGLASS": len(layers),
            m + "HG_SCALE": int(flat[m + "HG_SCALE"]),
            m + "NORM": "GN" if flat[m + "USE_GN"] else "",
            m + "TRAIN_PROPOSALS": "atss+gt",
            m + "PRE_NMS_TOP_N_TRAIN": int(flat["MODEL.ATSS.PRE_NMS_TOP_N_TRAIN"]),
            m + "POST_NMS_TOP_N_TRAIN": int(flat["MODEL.ATSS.POST_NMS_TOP_N_TRAIN"]),
            m + "MATCH_IOU": float(fg),
            # ConvertCocoPolysToMask gives box-only annotations a rectangle mask.
            m + "BOX_ONLY_ANNOTATIONS": "box",
        }
    )
    if flat["MODEL.ATSS.INFERENCE_TH_TRAIN"] != 0.0:
        bad.append("MODEL.ATSS.INFERENCE_TH_TRAIN != 0 (glip_d2's mask proposals use 0)")
    return bad


def convert_official_config(
    official: Mapping[str, Any], bert_config_file: Optional[str] = None
) -> ConvertedConfig:
    """Translate an official GLIP config.

    Args:
        official: the official yaml as nested dicts (see :func:`load_official_config`); keys
            it does not set take their official default (:data:`OFFICIAL_DEFAULTS`).
        bert_config_file: optional BERT config json (the official code reads the BERT
            architecture from ``bert-base-uncased``; reduced models need their own).

    Returns:
        ConvertedConfig: overrides, unsupported settings, keys not expressed, notes.

    Raises:
        ValueError: naming the key, for a value of the wrong type (e.g. a non-number for
            ``SOLVER.BASE_LR``).
    """
    given = flatten(official)
    flat = {**OFFICIAL_DEFAULTS, **given}
    overrides: Dict[str, Any] = {"MODEL.META_ARCHITECTURE": "GLIP"}
    unsupported: List[str] = []
    notes: List[str] = []
    for key, value in flat.items():
        if key in MAPPED:
            new_key, fn = MAPPED[key]
            if _empty(value):
                continue
            try:
                overrides[new_key] = fn(value)
            except (TypeError, ValueError, IndexError) as e:
                raise ValueError(f"official {key}={value!r} cannot become {new_key}: {e}") from e
        elif key in CHECKED:
            allowed = CHECKED[key]
            norm = list(value) if isinstance(value, (list, tuple)) else value
            if norm not in allowed:
                unsupported.append(f"{key}={value!r} (glip_d2 implements {allowed})")
    control = flat["DATASETS.CONTROL_PROB"]
    if isinstance(control, (list, tuple)) and len(control) == 4:
        if any(control[i] for i in (0, 1, 3)):
            unsupported.append(
                f"DATASETS.CONTROL_PROB={control!r} (glip_d2 implements the third setting only)"
            )
    not_expressed = sorted(k for k in given if not (k in MAPPED or k in CHECKED or k in DERIVED))

    early = flat["MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON"]
    fuse_type = flat["MODEL.DYHEAD.FUSE_CONFIG.TYPE"]
    if early and fuse_type != "MHA-B":
        unsupported.append(f"MODEL.DYHEAD.FUSE_CONFIG.TYPE={fuse_type!r} (glip_d2: 'MHA-B')")
    overrides["MODEL.FUSION.TYPE"] = "MHA-B" if early else "none"
    # glip_d2's Swin stages have EMBED_DIM x 2**i channels; the official FPN reads them here.
    embed = _number(flat["MODEL.SWINT.EMBED_DIM"], "MODEL.SWINT.EMBED_DIM")
    stage_channels = _as_list(flat["MODEL.SWINT.OUT_CHANNELS"])
    if stage_channels != [embed * 2**i for i in range(4)]:
        unsupported.append(
            f"MODEL.SWINT.OUT_CHANNELS={flat['MODEL.SWINT.OUT_CHANNELS']!r} differs from "
            f"MODEL.SWINT.EMBED_DIM={embed} x (1, 2, 4, 8)"
        )
    channels = flat["MODEL.BACKBONE.OUT_CHANNELS"]
    for key in ("MODEL.DYHEAD.CHANNELS", "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE"):
        if flat[key] != channels and (key != "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE" or early):
            unsupported.append(f"{key}={flat[key]} differs from MODEL.BACKBONE.OUT_CHANNELS")
    base_lr = _number(flat["SOLVER.BASE_LR"], "SOLVER.BASE_LR")
    if base_lr:
        overrides["SOLVER.LANG_LR_FACTOR"] = (
            _number(flat["SOLVER.LANG_LR"], "SOLVER.LANG_LR") / base_lr
        )
    mode = flat["SOLVER.TUNING_HIGHLEVEL_OVERRIDE"]
    if mode not in TUNING_MODES:
        unsupported.append(f"SOLVER.TUNING_HIGHLEVEL_OVERRIDE={mode!r}")
    else:
        overrides["SOLVER.TUNING_MODE"] = TUNING_MODES[mode]
    if flat["MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER"] and mode != "language_prompt_v2":
        unsupported.append("MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER without language_prompt_v2")
    # Official steps below 1 are fractions of MAX_ITER, and so are glip_d2's.
    steps = [_number(s, "SOLVER.STEPS") for s in _as_list(flat["SOLVER.STEPS"])]
    overrides["SOLVER.STEPS"] = [float(s) if s < 1 else int(s) for s in steps]
    max_epoch = _number(flat["SOLVER.MAX_EPOCH"], "SOLVER.MAX_EPOCH")
    if max_epoch > 0:
        # The official code then ignores MAX_ITER and trains MAX_EPOCH x len(train set) //
        # IMS_PER_BATCH iterations (data/build.py), a number only the data determines.
        overrides.pop("SOLVER.MAX_ITER", None)
        notes.append(
            f"SOLVER.MAX_ITER: the official schedule is SOLVER.MAX_EPOCH={max_epoch}"
            " epochs; set SOLVER.MAX_ITER to MAX_EPOCH x (training images) // "
            "SOLVER.IMS_PER_BATCH (SOLVER.STEPS are fractions of it)"
        )
    if flat["SOLVER.WEIGHT_DECAY_SCHEDULE"]:
        # The official trainer multiplies the weight decay by SOLVER.GAMMA once the iteration
        # reaches RATIO x each LR milestone (engine/trainer.py); 0 is glip_d2's "off".
        ratio = _number(
            flat["SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO"], "SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO"
        )
        overrides["SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO"] = float(ratio)
    if bert_config_file:
        overrides["MODEL.LANGUAGE_BACKBONE.CONFIG_FILE"] = bert_config_file
        with open(bert_config_file) as f:
            hidden = json.load(f).get("hidden_size")
        lang_dim = _number(
            flat["MODEL.LANGUAGE_BACKBONE.LANG_DIM"], "MODEL.LANGUAGE_BACKBONE.LANG_DIM"
        )
        if hidden is not None and int(lang_dim) != int(hidden):
            unsupported.append(
                f"MODEL.LANGUAGE_BACKBONE.LANG_DIM={lang_dim} differs from the BERT hidden "
                f"size {hidden} of {bert_config_file}"
            )
    # The dormant GLIPv2 losses (GLIPv2 reference §3.2.2, §3.3.2): the official code's loss is
    # the "code" mode of the region-word loss; its LM head starts fresh.
    fc = "MODEL.DYHEAD.FUSE_CONFIG."
    if flat[fc + "USE_SHALLOW_CONTRASTIVE_LOSS"]:
        weight = _number(
            flat[fc + "SHALLOW_CONTRASTIVE_LOSS_WEIGHT"], "SHALLOW_CONTRASTIVE_LOSS_WEIGHT"
        )
        overrides["MODEL.GLIPV2.REGION_WORD.WEIGHT"] = float(weight)
        overrides["MODEL.GLIPV2.REGION_WORD.MODE"] = "code"
        overrides["MODEL.GLIPV2.REGION_WORD.MAX_REGIONS_PER_IMAGE"] = int(
            _number(flat[fc + "SHALLOW_MAX_POSITIVE_ANCHORS"], "SHALLOW_MAX_POSITIVE_ANCHORS")
        )
        overrides["MODEL.GLIPV2.REGION_WORD.EMBED_DIM"] = int(
            _number(flat[fc + "SHALLOW_CONTRASTIVE_HIDDEN_DIM"], "SHALLOW_CONTRASTIVE_HIDDEN_DIM")
        )
        overrides["MODEL.GLIPV2.REGION_WORD.LOG_SCALE_INIT"] = float(
            _number(flat["MODEL.DYHEAD.SHALLOW_LOG_SCALE"], "MODEL.DYHEAD.SHALLOW_LOG_SCALE")
        )
    if flat[fc + "MLM_LOSS"]:
        overrides["MODEL.GLIPV2.MLM.WEIGHT"] = float(
            _number(flat[fc + "MLM_LOSS_COEF"], "MLM_LOSS_COEF")
        )
        overrides["MODEL.GLIPV2.MLM.SCOPE"] = (
            "greenlight" if flat[fc + "MLM_LOSS_FOR_ONLY_POSITIVES"] else "all"
        )
        overrides["MODEL.GLIPV2.MLM.INIT_FROM_LM_HEAD"] = False
    unsupported += _convert_mask_head(flat, overrides)
    # maskrcnn-benchmark uses ``MIN_SIZE_TRAIN`` only without multi-scale training.
    if "INPUT.MIN_SIZE_TRAIN" not in overrides:
        overrides["INPUT.MIN_SIZE_TRAIN"] = _as_list(flat["INPUT.MIN_SIZE_TRAIN"])
    return ConvertedConfig(overrides, unsupported, not_expressed, notes)


def nest(overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``{"A.B": v}`` -> ``{"A": {"B": v}}``."""
    out: Dict[str, Any] = {}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
