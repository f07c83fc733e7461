"""tools/convert_glip_config.py on official-style GLIP yaml files (microsoft/GLIP format).

The files below are written here in the official form: tuples as strings (``(1.0,)``), keys
left at the official defaults, task overlays that set data and class counts only.
"""

import importlib.util
from pathlib import Path

import pytest
import yaml
from detectron2.config import get_cfg

from glip_d2.config import add_glip_config
from glip_d2.utils.config_conversion import (
    convert_official_config,
    decode_value,
    load_official_config,
)

ROOT = Path(__file__).resolve().parents[2]

# GLIP-T (C) as the official configs/pretrain/glip_Swin_T_O365_GoldG.yaml writes it.
GLIP_T_C = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedVLRCNN"
  WEIGHT: "swin_tiny_patch4_window7_224.pth"
  RPN_ONLY: True
  RPN_ARCHITECTURE: "VLDYHEAD"
  BACKBONE:
    CONV_BODY: "SWINT-FPN-RETINANET"
    OUT_CHANNELS: 256
    FREEZE_CONV_BODY_AT: -1
  LANGUAGE_BACKBONE:
    FREEZE: False
    MODEL_TYPE: "bert-base-uncased"
    MASK_SPECIAL: False
  RPN:
    USE_FPN: True
    ANCHOR_SIZES: (64, 128, 256, 512, 1024)
    ANCHOR_STRIDE: (8, 16, 32, 64, 128)
    ASPECT_RATIOS: (1.0,)
    SCALES_PER_OCTAVE: 1
  DYHEAD:
    CHANNELS: 256
    NUM_CONVS: 6
    USE_GN: True
    USE_DYRELU: True
    USE_DFCONV: True
    USE_DYFUSE: True
    TOPK: 9
    SCORE_AGG: "MEAN"
    LOG_SCALE: 0.0
    FUSE_CONFIG:
      EARLY_FUSE_ON: True
      TYPE: "MHA-B"
      USE_CLASSIFICATION_LOSS: False
      USE_TOKEN_LOSS: False
      USE_CONTRASTIVE_ALIGN_LOSS: False
      USE_DOT_PRODUCT_TOKEN_LOSS: True
      USE_FUSED_FEATURES_DOT_PRODUCT: True
      USE_LAYER_SCALE: True
      CLAMP_MIN_FOR_UNDERFLOW: True
      CLAMP_MAX_FOR_OVERFLOW: True
      CLAMP_BERTATTN_MIN_FOR_UNDERFLOW: True
      CLAMP_BERTATTN_MAX_FOR_OVERFLOW: True
      CLAMP_DOT_PRODUCT: True
    USE_CHECKPOINT: True
TEST:
  IMS_PER_BATCH: 64
DATASETS:
  TRAIN: ("object365_dt_train", "mixed_train_no_coco", "flickr30k_train", )
  TEST: ("coco_2017_val", )
  DISABLE_SHUFFLE: False
  ADD_DET_PROMPT: False
  RANDOM_SAMPLE_NEG: 85
  CONTROL_PROB: (0.0, 0.0, 0.5, 0.0)
  SEPARATION_TOKENS: ". "
INPUT:
  PIXEL_MEAN: [ 103.530, 116.280, 123.675 ]
  PIXEL_STD: [ 57.375, 57.120, 58.395 ]
  MIN_SIZE_TRAIN: 800
  MAX_SIZE_TRAIN: 1333
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1333
AUGMENT:
  MULT_MIN_SIZE_TRAIN: (480,560,640,720,800)
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  OPTIMIZER: ADAMW
  BASE_LR: 0.0001
  LANG_LR: 0.00001
  WEIGHT_DECAY: 0.0001
  STEPS: (0.67, 0.89)
  MAX_EPOCH: 30
  IMS_PER_BATCH: 64
  WARMUP_ITERS: 2000
  WARMUP_FACTOR: 0.001
  USE_AMP: True
  MODEL_EMA: 0.999
  CLIP_GRADIENTS:
    ENABLED: True
    CLIP_TYPE: "full_model"
    CLIP_VALUE: 1.0
    NORM_TYPE: 2.0
"""

# GLIP-L (official configs/pretrain/glip_Swin_L.yaml): Swin-L, FREEZE_CONV_BODY_AT left at the
# official default (2), an iteration schedule with the weight-decay schedule, no AMP, no EMA.
GLIP_L = (
    GLIP_T_C.replace("    FREEZE_CONV_BODY_AT: -1\n", "")
    .replace(
        "  LANGUAGE_BACKBONE:\n",
        "  SWINT:\n    EMBED_DIM: 192\n    DEPTHS: (2, 2, 18, 2)\n    NUM_HEADS: (6, 12, 24, 48)\n"
        "    WINDOW_SIZE: 12\n    OUT_CHANNELS: (192, 384, 768, 1536)\n"
        "    DROP_PATH_RATE: 0.4\n  LANGUAGE_BACKBONE:\n",
    )
    .replace("NUM_CONVS: 6", "NUM_CONVS: 8")
    .replace("  WEIGHT_DECAY: 0.0001\n", "  WEIGHT_DECAY: 0.01\n  WEIGHT_DECAY_SCHEDULE: True\n")
    .replace("  MAX_EPOCH: 30\n", "  MAX_ITER: 1000000\n")
    .replace("  USE_AMP: True\n  MODEL_EMA: 0.999\n", "")
)

# A task overlay as the official code takes it with --task_config (configs/odinw/*.yaml).
ODINW_OVERLAY = """\
DATALOADER:
  ASPECT_RATIO_GROUPING: false
  SIZE_DIVISIBILITY: 32
DATASETS:
  GENERAL_COPY: 16
  CAPTION_PROMPT: '[{"prefix": "", "name": "fish", "suffix": ""}, ]'
  REGISTER:
    train:
      ann_file: odinw/Aquarium/train/annotations_without_background.json
      img_dir: odinw/Aquarium/train
  TEST: ("val",)
  TRAIN: ("train",)
INPUT:
  MIN_SIZE_TRAIN: 800
MODEL:
  ATSS:
    NUM_CLASSES: 8
  DYHEAD:
    NUM_CLASSES: 8
SOLVER:
  CHECKPOINT_PERIOD: 100
  MAX_EPOCH: 12
  WARMUP_ITERS: 0
TEST:
  IMS_PER_BATCH: 8
"""


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "convert_glip_config", ROOT / "tools" / "convert_glip_config.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TOOL = _load_tool()


def _convert_cli(capsys, *args):
    """Run the tool's ``main`` as the command line would (in-process: imports take seconds)."""
    rc = _TOOL.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _glip_cfg(path: Path):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize(
    "text",
    [
        "(0.0, 0.0, 0.5, 0.0)",
        "(1.0,)",
        "(480,560,640,720,800)",
        "1e-4",
        ". ",
        "MEAN",
        "v1",
        "bert-base-uncased",
        "[1, 2]",
        "True",
        "full_model",
        "",
        "{'a': 1}",
    ],
)
def test_values_decode_as_yacs_merges_them(text):
    from yacs.config import CfgNode

    assert decode_value(text) == CfgNode._decode_cfg_value(text)
    assert type(decode_value(text)) is type(CfgNode._decode_cfg_value(text))


def test_official_tuple_strings_become_numbers(tmp_path):
    official = load_official_config(str(_write(tmp_path, "glip_t.yaml", GLIP_T_C)))
    result = convert_official_config(official)
    out = result.overrides
    assert result.unsupported == []  # ASPECT_RATIOS (1.0,) and SCALES_PER_OCTAVE 1 accepted
    assert out["MODEL.ATSS.ANCHOR_SIZES"] == [64, 128, 256, 512, 1024]
    assert out["MODEL.ATSS.ANCHOR_STRIDES"] == [8, 16, 32, 64, 128]
    assert out["INPUT.MIN_SIZE_TRAIN"] == [480, 560, 640, 720, 800]
    assert out["INPUT.PROMPT.FULL_NEG_PROB"] == 0.5
    assert out["INPUT.PROMPT.SEPARATOR"] == ". "
    assert out["SOLVER.STEPS"] == [0.67, 0.89]
    assert out["MODEL.FUSION.TYPE"] == "MHA-B" and out["MODEL.GLIP_HEAD.NUM_CONVS"] == 6
    # MAX_EPOCH schedules depend on the data: no made-up MAX_ITER, a note instead.
    assert "SOLVER.MAX_ITER" not in out
    assert any("SOLVER.MAX_EPOCH=30" in n for n in result.notes)


def test_converted_official_glip_t_builds_with_the_official_parameter_count(tmp_path, capsys):
    from detectron2.modeling import build_model

    official = _write(tmp_path, "glip_Swin_T_O365_GoldG.yaml", GLIP_T_C)
    out = tmp_path / "converted" / "glip_t.yaml"
    rc, err = _convert_cli(capsys, official, "-o", out)
    assert rc == 0, err
    assert "NOTE SOLVER.MAX_ITER" in out.read_text()  # the note travels with the file
    cfg = _glip_cfg(out)
    assert cfg.MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED is False
    assert list(cfg.MODEL.ATSS.ANCHOR_SIZES) == [64, 128, 256, 512, 1024]
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (480, 560, 640, 720, 800)
    model = build_model(cfg)
    # Measured on the official code, random init (reference §0).
    assert sum(p.numel() for p in model.parameters()) == 231_780_222


def test_keys_left_out_take_the_official_defaults(tmp_path):
    official = load_official_config(str(_write(tmp_path, "glip_l.yaml", GLIP_L)))
    result = convert_official_config(official)
    out = result.overrides
    assert result.unsupported == []
    assert out["MODEL.BACKBONE.FREEZE_AT"] == 2  # official default FREEZE_CONV_BODY_AT
    assert out["SOLVER.AMP.ENABLED"] is False and out["SOLVER.MODEL_EMA"] == 0.0
    assert out["MODEL.SWIN.DEPTHS"] == [2, 2, 18, 2] and out["MODEL.SWIN.WINDOW_SIZE"] == 12
    assert out["MODEL.GLIP_HEAD.NUM_CONVS"] == 8 and out["SOLVER.MAX_ITER"] == 1_000_000
    # The official trainer drops the weight decay at 0.667 x each LR milestone.
    assert out["SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO"] == 0.667


@pytest.mark.parametrize(
    "text, message",
    [
        # Without ASPECT_RATIOS the official code builds three anchors per location.
        (
            GLIP_T_C.replace("    ASPECT_RATIOS: (1.0,)\n", ""),
            "MODEL.RPN.ASPECT_RATIOS=(0.5, 1.0, 2.0)",
        ),
        # Swin-L without its stage widths: the official FPN would expect Swin-T's.
        (
            GLIP_L.replace("    OUT_CHANNELS: (192, 384, 768, 1536)\n", ""),
            "MODEL.SWINT.OUT_CHANNELS=(96, 192, 384, 768)",
        ),
    ],
)
def test_an_official_default_glip_d2_lacks_is_unsupported(tmp_path, capsys, text, message):
    official = _write(tmp_path, "official.yaml", text)
    rc, err = _convert_cli(capsys, official, "-o", tmp_path / "out.yaml", "--quiet")
    assert rc == 2
    assert message in err.split("UNSUPPORTED")[1]


def test_task_overlay_alone_is_an_error_that_asks_for_the_model_config(tmp_path, capsys):
    overlay = _write(tmp_path, "Aquarium.yaml", ODINW_OVERLAY)
    out = tmp_path / "out.yaml"
    rc, err = _convert_cli(capsys, overlay, "-o", out)
    assert rc == 1
    assert str(overlay) in err and "--task-config" in err
    assert "model config" in err
    assert not out.exists()


def test_task_overlay_merges_onto_the_model_config(tmp_path, capsys):
    model = _write(tmp_path, "glip_t.yaml", GLIP_T_C)
    overlay = _write(tmp_path, "Aquarium.yaml", ODINW_OVERLAY)
    out = tmp_path / "odinw.yaml"
    rc, err = _convert_cli(capsys, model, "--task-config", overlay, "-o", out)
    assert rc == 0, err
    cfg = _glip_cfg(out)
    assert cfg.MODEL.GLIP_HEAD.NUM_CLASSES == 7  # the overlay's DYHEAD.NUM_CLASSES - 1
    assert cfg.DATALOADER.ASPECT_RATIO_GROUPING is False
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.CHECKPOINT_PERIOD) == (0, 100)
    # The model config's settings stay, including multi-scale training sizes.
    assert cfg.MODEL.FUSION.TYPE == "MHA-B" and cfg.MODEL.GLIP_HEAD.NUM_CONVS == 6
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (480, 560, 640, 720, 800)
    assert "SOLVER.MAX_EPOCH=12" in err
    assert "DATASETS.CAPTION_PROMPT" in err  # listed as not expressed
    header = out.read_text().splitlines()[:2]
    assert [str(model) in header[0], str(overlay) in header[1]] == [True, True]


def test_a_bad_value_is_an_error_naming_file_and_key(tmp_path, capsys):
    text = GLIP_T_C.replace("BASE_LR: 0.0001", "BASE_LR: fast")
    official = _write(tmp_path, "bad.yaml", text)
    rc, err = _convert_cli(capsys, official, "-o", tmp_path / "out.yaml")
    assert rc == 1
    assert str(official) in err and "SOLVER.BASE_LR='fast'" in err
    assert "Traceback" not in err


def test_yacs_dumped_tuples_still_load(tmp_path):
    # yacs's own dump (as the official code saves config.yml) writes !!python/tuple.
    dumped = yaml.dump(
        {"MODEL": {"META_ARCHITECTURE": "GeneralizedVLRCNN", "RPN": {"ANCHOR_STRIDE": (8, 16)}}}
    )
    assert "!!python/tuple" in dumped
    official = load_official_config(str(_write(tmp_path, "dumped.yaml", dumped)))
    assert convert_official_config(official).overrides["MODEL.ATSS.ANCHOR_STRIDES"] == [8, 16]
