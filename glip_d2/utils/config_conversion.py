"""Official GLIP (maskrcnn-benchmark yacs) config to glip_d2 config keys.

Used by ``tools/convert_glip_config.py``. Every official leaf key ends up in one of three
groups: *mapped* to a glip_d2 key, *checked* (glip_d2 implements one value only; a different
value is reported as unsupported), or *not expressed* (no glip_d2 equivalent; listed by name).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import yaml


class _TupleLoader(yaml.SafeLoader):
    """Safe loader that also reads ``!!python/tuple`` (yacs dumps tuples that way)."""


_TupleLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
)


def load_official_config(path: str) -> Dict[str, Any]:
    """Read an official GLIP yaml into nested dicts (safe loader, tuples as lists)."""
    with open(path) as f:
        data = yaml.load(f, Loader=_TupleLoader)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a GLIP yaml config (top level is not a mapping)")
    return data


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


# official key -> (glip_d2 key, transform)
MAPPED: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "MODEL.SWINT.EMBED_DIM": ("MODEL.SWIN.EMBED_DIM", int),
    "MODEL.SWINT.DEPTHS": ("MODEL.SWIN.DEPTHS", _as_list),
    "MODEL.SWINT.NUM_HEADS": ("MODEL.SWIN.NUM_HEADS", _as_list),
    "MODEL.SWINT.WINDOW_SIZE": ("MODEL.SWIN.WINDOW_SIZE", int),
    "MODEL.SWINT.MLP_RATIO": ("MODEL.SWIN.MLP_RATIO", float),
    "MODEL.SWINT.DROP_PATH_RATE": ("MODEL.SWIN.DROP_PATH_RATE", float),
    "MODEL.BACKBONE.USE_CHECKPOINT": ("MODEL.SWIN.USE_CHECKPOINT", bool),
    "MODEL.BACKBONE.FREEZE_CONV_BODY_AT": ("MODEL.BACKBONE.FREEZE_AT", int),
    "MODEL.BACKBONE.OUT_CHANNELS": ("MODEL.GLIP_FPN.OUT_CHANNELS", int),
    "MODEL.FPN.DROP_BLOCK": ("MODEL.GLIP_FPN.DROP_BLOCK", bool),
    "MODEL.FPN.DROP_PROB": ("MODEL.GLIP_FPN.DROP_PROB", float),
    "MODEL.FPN.DROP_SIZE": ("MODEL.GLIP_FPN.DROP_SIZE", int),
    "MODEL.LANGUAGE_BACKBONE.MODEL_TYPE": ("MODEL.LANGUAGE_BACKBONE.MODEL_NAME", str),
    "MODEL.LANGUAGE_BACKBONE.TOKENIZER_TYPE": ("INPUT.PROMPT.TOKENIZER", str),
    "MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN": ("MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN", int),
    "MODEL.LANGUAGE_BACKBONE.FREEZE": ("MODEL.LANGUAGE_BACKBONE.FREEZE", bool),
    "MODEL.DYHEAD.NUM_CONVS": ("MODEL.GLIP_HEAD.NUM_CONVS", int),
    "MODEL.DYHEAD.USE_DYRELU": ("MODEL.GLIP_HEAD.USE_DYRELU", bool),
    "MODEL.DYHEAD.USE_DYFUSE": ("MODEL.GLIP_HEAD.USE_DYFUSE", bool),
    "MODEL.DYHEAD.USE_DFCONV": ("MODEL.GLIP_HEAD.USE_DFCONV", bool),
    "MODEL.DYHEAD.NUM_CLASSES": ("MODEL.GLIP_HEAD.NUM_CLASSES", lambda n: int(n) - 1),
    "MODEL.DYHEAD.PRIOR_PROB": ("MODEL.GLIP_HEAD.PRIOR_PROB", float),
    "MODEL.DYHEAD.LOG_SCALE": ("MODEL.GLIP_HEAD.LOG_SCALE", float),
    "MODEL.DYHEAD.SCORE_AGG": ("MODEL.GLIP_HEAD.SCORE_AGG", str),
    "MODEL.DYHEAD.USE_CHECKPOINT": ("MODEL.FUSION.USE_CHECKPOINT", bool),
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
    "DATALOADER.ASPECT_RATIO_GROUPING": ("DATALOADER.ASPECT_RATIO_GROUPING", bool),
    "DATASETS.SEPARATION_TOKENS": ("INPUT.PROMPT.SEPARATOR", str),
    "DATASETS.RANDOM_SAMPLE_NEG": ("INPUT.PROMPT.RANDOM_SAMPLE_NEG", int),
    "DATASETS.CONTROL_PROB": ("INPUT.PROMPT.FULL_NEG_PROB", lambda p: float(p[2])),
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
    "SOLVER.USE_AMP": ("SOLVER.AMP.ENABLED", bool),
    "SOLVER.MODEL_EMA": ("SOLVER.MODEL_EMA", float),
    "SOLVER.CLIP_GRADIENTS.ENABLED": ("SOLVER.CLIP_GRADIENTS.ENABLED", bool),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", str),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": ("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", float),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": ("SOLVER.CLIP_GRADIENTS.NORM_TYPE", float),
    "TEST.CHUNKED_EVALUATION": ("INPUT.PROMPT.CHUNK_SIZE", lambda n: max(int(n), 0)),
}

# official key -> values glip_d2 implements (anything else is unsupported)
CHECKED: Dict[str, Tuple[Any, ...]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedVLRCNN",),
    "MODEL.RPN_ARCHITECTURE": ("VLDYHEAD",),
    "MODEL.RPN_ONLY": (True,),
    "MODEL.MASK_ON": (False,),
    "MODEL.KEYPOINT_ON": (False,),
    "MODEL.BACKBONE.CONV_BODY": ("SWINT-FPN-RETINANET",),
    "MODEL.SWINT.VERSION": ("v1",),
    "MODEL.SWINT.APE": (False,),
    "MODEL.SWINT.LAYER_SCALE": (0,),
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
    "MODEL.DYHEAD.FUSE_CONFIG.USE_SHALLOW_CONTRASTIVE_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS": (False,),
    "MODEL.DYHEAD.FUSE_CONFIG.MLM_LOSS": (False,),
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
    "SOLVER.WEIGHT_DECAY_SCHEDULE": (False,),
    "TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM": (-1, 3000, 100),
    "TEST.USE_MULTISCALE": (False,),
    "DATASETS.ONE_HOT": (False,),
    "DATASETS.ADD_DET_PROMPT": (False,),
    "GLIPKNOW.PARALLEL_LANGUAGE_INPUT": (False,),
}

# Keys read together with others (no key of their own on our side).
DERIVED = {
    "MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON",
    "MODEL.DYHEAD.FUSE_CONFIG.TYPE",
    "MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER",
    "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE",
    "MODEL.DYHEAD.CHANNELS",
    "MODEL.LANGUAGE_BACKBONE.LANG_DIM",
    "SOLVER.LANG_LR",
    "SOLVER.STEPS",
    "SOLVER.TUNING_HIGHLEVEL_OVERRIDE",
}

TUNING_MODES = {
    None: "full",
    "full": "full",
    "language_prompt_v2": "prompt_tuning",
    "linear_prob": "linear_probe",
}


def convert_official_config(
    official: Mapping[str, Any], bert_config_file: Optional[str] = None
) -> Tuple[Dict[str, Any], List[str], List[str]]:
    """Translate an official GLIP config.

    Args:
        official: the official yaml as nested dicts (see :func:`load_official_config`).
        bert_config_file: optional BERT config json (the official code reads the BERT
            architecture from ``bert-base-uncased``; reduced models need their own).

    Returns:
        (overrides, unsupported, not_expressed): glip_d2 dotted keys -> values; messages for
        official settings glip_d2 does not implement (the converted config would not behave
        the same); official keys with no glip_d2 equivalent, by name.
    """
    flat = flatten(official)
    overrides: Dict[str, Any] = {"MODEL.META_ARCHITECTURE": "GLIP"}
    unsupported: List[str] = []
    not_expressed: List[str] = []
    for key, value in flat.items():
        if key in MAPPED:
            new_key, fn = MAPPED[key]
            if value is None or value == "":
                continue
            overrides[new_key] = fn(value)
        elif key in CHECKED:
            allowed = CHECKED[key]
            norm = list(value) if isinstance(value, (list, tuple)) else value
            if norm not in allowed:
                unsupported.append(f"{key}={value!r} (glip_d2 implements {allowed})")
        elif key not in DERIVED:
            not_expressed.append(key)

    early = flat.get("MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON", False)
    fuse_type = flat.get("MODEL.DYHEAD.FUSE_CONFIG.TYPE", "MHA-B")
    if early and fuse_type != "MHA-B":
        unsupported.append(f"MODEL.DYHEAD.FUSE_CONFIG.TYPE={fuse_type!r} (glip_d2: 'MHA-B')")
    overrides["MODEL.FUSION.TYPE"] = "MHA-B" if early else "none"
    channels = flat.get("MODEL.BACKBONE.OUT_CHANNELS")
    for key in ("MODEL.DYHEAD.CHANNELS", "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE"):
        if (
            key in flat
            and channels is not None
            and flat[key] != channels
            and (key != "MODEL.DYHEAD.FUSE_CONFIG.JOINT_EMB_SIZE" or early)
        ):
            unsupported.append(f"{key}={flat[key]} differs from MODEL.BACKBONE.OUT_CHANNELS")
    if "SOLVER.LANG_LR" in flat and flat.get("SOLVER.BASE_LR"):
        overrides["SOLVER.LANG_LR_FACTOR"] = float(flat["SOLVER.LANG_LR"]) / float(
            flat["SOLVER.BASE_LR"]
        )
    mode = flat.get("SOLVER.TUNING_HIGHLEVEL_OVERRIDE")
    if mode not in TUNING_MODES:
        unsupported.append(f"SOLVER.TUNING_HIGHLEVEL_OVERRIDE={mode!r}")
    else:
        overrides["SOLVER.TUNING_MODE"] = TUNING_MODES[mode]
    if flat.get("MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER") and mode != "language_prompt_v2":
        unsupported.append("MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER without language_prompt_v2")
    steps = flat.get("SOLVER.STEPS")
    max_iter = flat.get("SOLVER.MAX_ITER")
    if steps and max_iter:
        # Official steps below 1 are fractions of MAX_ITER.
        overrides["SOLVER.STEPS"] = [
            int(round(s * max_iter)) if s < 1 else int(s) for s in _as_list(steps)
        ]
    if bert_config_file:
        overrides["MODEL.LANGUAGE_BACKBONE.CONFIG_FILE"] = bert_config_file
        import json

        with open(bert_config_file) as f:
            hidden = json.load(f).get("hidden_size")
        lang_dim = flat.get("MODEL.LANGUAGE_BACKBONE.LANG_DIM")
        if lang_dim is not None and hidden is not None and int(lang_dim) != int(hidden):
            unsupported.append(
                f"MODEL.LANGUAGE_BACKBONE.LANG_DIM={lang_dim} differs from the BERT hidden "
                f"size {hidden} of {bert_config_file}"
            )
    # maskrcnn-benchmark uses ``MIN_SIZE_TRAIN`` only without multi-scale training.
    if "INPUT.MIN_SIZE_TRAIN" not in overrides and "INPUT.MIN_SIZE_TRAIN" in flat:
        overrides["INPUT.MIN_SIZE_TRAIN"] = _as_list(flat["INPUT.MIN_SIZE_TRAIN"])
    return overrides, unsupported, sorted(set(not_expressed) - {"INPUT.MIN_SIZE_TRAIN"})


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
