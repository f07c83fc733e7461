"""GLIPTrainer: optimizer rules, transfer modes, few-shot sampling, a short run on the shapes."""

import json
import logging
from pathlib import Path

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import detection_utils
from detectron2.modeling import build_model

from glip_d2.config import add_glip_config
from glip_d2.data.few_shot import sample_few_shot
from glip_d2.engine import GLIPTrainer, build_param_groups

ROOT = Path(__file__).resolve().parents[2]


def _tiny_cfg(tmp_path=None, **overrides):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    if tmp_path is not None:
        cfg.OUTPUT_DIR = str(tmp_path)
    cfg.merge_from_list([x for kv in overrides.items() for x in kv])
    return cfg


def test_param_groups_follow_the_official_rules():
    cfg = _tiny_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.LANG_LR_FACTOR = 1e-4, 0.1
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.BIAS_LR_FACTOR = 0.05, 2.0
    groups = {g["name"]: g for g in build_param_groups(cfg, build_model(cfg))}
    lang_w = groups["language_backbone.model.encoder.layer.0.attention.self.query.weight"]
    assert (lang_w["lr"], lang_w["weight_decay"]) == pytest.approx((1e-5, 0.05))
    lang_b = groups["language_backbone.model.encoder.layer.0.attention.self.query.bias"]
    assert (lang_b["lr"], lang_b["weight_decay"]) == pytest.approx((2e-5, 0.0))
    # "bias" anywhere in the name: bias_lang, bias0, relative_position_bias_table too.
    for name in (
        "head.bias_lang",
        "head.bias0",
        "backbone.body.layers.0.blocks.0.attn.relative_position_bias_table",
    ):
        assert (groups[name]["lr"], groups[name]["weight_decay"]) == pytest.approx((2e-4, 0.0))
    conv = groups["head.bbox_pred.weight"]
    assert (conv["lr"], conv["weight_decay"]) == pytest.approx((1e-4, 0.05))
    assert "head.cls_logits.weight" not in groups  # frozen, unused


def test_optimizer_clips_the_full_model_gradient_norm():
    cfg = _tiny_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    model = build_model(cfg)
    opt = GLIPTrainer.build_optimizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    total = torch.sqrt(sum((p.grad**2).sum() for p in params))
    assert total == pytest.approx(1.0, rel=1e-4)


def test_lr_milestones_as_fractions():
    cfg = _tiny_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 1000, (0.67, 0.89)
    cfg.SOLVER.WARMUP_ITERS = 10
    opt = torch.optim.SGD([torch.zeros(1)], lr=0.1)
    sched = GLIPTrainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(1000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[669] == pytest.approx(0.1) and lrs[671] == pytest.approx(0.01)
    assert lrs[889] == pytest.approx(0.01) and lrs[891] == pytest.approx(0.001)


def _warnings_of(logger_name):
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = _Collect()
    logging.getLogger(logger_name).addHandler(handler)
    return messages, lambda: logging.getLogger(logger_name).removeHandler(handler)


@pytest.mark.parametrize("warmup, warned", [(1000, True), (1200, True), (999, False)])
def test_warmup_covering_the_whole_run_is_a_warning(warmup, warned):
    cfg = _tiny_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.STEPS = 1000, warmup, ()
    messages, remove = _warnings_of("glip_d2.engine.trainer")
    try:
        GLIPTrainer.build_lr_scheduler(cfg, torch.optim.SGD([torch.zeros(1)], lr=0.1))
    finally:
        remove()
    hits = [m for m in messages if "SOLVER.WARMUP_ITERS" in m]
    assert bool(hits) == warned
    if warned:
        assert f"SOLVER.WARMUP_ITERS ({warmup})" in hits[0]
        assert "SOLVER.MAX_ITER (1000)" in hits[0]


@pytest.mark.parametrize(
    "mode, trainable",
    [
        ("prompt_tuning", {"tunable_linear.weight"}),
        (
            "linear_probe",
            {
                "head.bbox_pred.weight",
                "head.bbox_pred.bias",
                "head.centerness.weight",
                "head.centerness.bias",
                "head.dot_product_projection_text.weight",
                "head.dot_product_projection_text.bias",
                "head.log_scale",
                "head.bias_lang",
                "head.bias0",
            },
        ),
    ],
)
def test_transfer_modes_train_only_their_parameters(mode, trainable):
    cfg = _tiny_cfg(**{"SOLVER.TUNING_MODE": mode})
    model = build_model(cfg)
    model.train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    if mode == "prompt_tuning":
        assert not model.head.training and not model.language_backbone.training
        assert torch.count_nonzero(model.tunable_linear.weight) == 0  # zero init


def test_few_shot_is_seeded_and_covers_every_category():
    records = [
        {"image_id": i, "annotations": [{"category_id": i % 3}, {"category_id": (i * 7) % 5}]}
        for i in range(40)
    ]
    a = sample_few_shot(records, 2, seed=1)
    assert a == sample_few_shot(records, 2, seed=1)
    assert a != sample_few_shot(records, 2, seed=2)
    for cat in range(5):
        assert sum(any(x["category_id"] == cat for x in r["annotations"]) for r in a) >= 2
    # Every kept image was needed when it was visited.
    assert len(a) < len(records)


def test_short_training_run_writes_results(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    cfg.DATASETS.TRAIN = ("glip_shapes_train", "glip_shapes_train_grounding")
    cfg.DATASETS.TEST = ("glip_shapes_val",)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH = 2, 2
    cfg.SOLVER.MODEL_EMA = 0.9
    cfg.TEST.VISUALIZE.NUM_IMAGES = 2
    cfg.TEST.VISUALIZE.SCORE_THRESH = 0.0
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.ema.state.items()}
    trainer.train()
    assert trainer.iter == 2  # Detectron2 leaves iter at MAX_ITER after the last step
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert "bbox" in results["glip_shapes_val"]
    assert len(list((tmp_path / "visualizations" / "glip_shapes_val").glob("*.png"))) == 2
    changed = [k for k in before if not torch.equal(before[k], trainer.ema.state[k])]
    assert changed  # the EMA followed the training steps
    # The checkpoint is plain tensors and Python values: stock tools read it.
    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert "model_ema" in ckpt and "rng_state" in ckpt
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(str(tmp_path / "model_final.pth"))
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_non_finite_loss_names_iteration_and_term(tmp_path, monkeypatch):
    cfg = _tiny_cfg(tmp_path)
    cfg.DATASETS.TRAIN = ("glip_shapes_train",)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH = 3, 1
    trainer = GLIPTrainer(cfg)
    model = trainer.model
    original = model.forward

    def forward(batch):
        losses = original(batch)
        if trainer.iter == 1:
            losses["loss_giou"] = losses["loss_giou"] * float("nan")
        return losses

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(FloatingPointError, match=r"iteration=1: loss_giou \(losses"):
        trainer.train()


class _Interrupt(Exception):
    pass


def _resume_cfg(out):
    cfg = _tiny_cfg(out)
    cfg.DATASETS.TRAIN = ("glip_shapes_train", "glip_shapes_train_grounding")
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.CHECKPOINT_PERIOD = 4, 2, 2
    cfg.SOLVER.MODEL_EMA = 0.5
    cfg.SEED = 11
    return cfg


def _train(cfg, resume, stop_after=None):
    from detectron2.engine import HookBase
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(cfg.SEED)  # what default_setup does in train_net.py
    trainer = GLIPTrainer(cfg)
    if stop_after is not None:

        class Stop(HookBase):
            def after_step(self):
                if self.trainer.iter == stop_after:
                    raise _Interrupt()

        trainer.register_hooks([Stop()])
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    full = _train(_resume_cfg(tmp_path / "a"), resume=False)
    cfg = _resume_cfg(tmp_path / "b")
    with pytest.raises(_Interrupt):
        _train(cfg, resume=False, stop_after=1)  # checkpoint of iteration 1 saved, then stop
    ckpt = torch.load(tmp_path / "b" / "model_0000001.pth", map_location="cpu", weights_only=True)
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # AdamW moments are saved
    read_image, reads = detection_utils.read_image, []

    def counting_read_image(*args, **kwargs):
        reads.append(args[0])
        return read_image(*args, **kwargs)

    monkeypatch.setattr(detection_utils, "read_image", counting_read_image)
    resumed = _train(cfg, resume=True)
    # Only the images of iterations 2 and 3 are read: the skipped batches are not replayed.
    assert len(reads) == 2 * cfg.SOLVER.IMS_PER_BATCH
    assert resumed.start_iter == 2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key in full.ema.state:
        assert torch.equal(full.ema.state[key], resumed.ema.state[key]), key


def test_trainer_applies_the_weight_decay_schedule(tmp_path):
    # GLIP-L's SOLVER.WEIGHT_DECAY_SCHEDULE through GLIPTrainer: with the LR milestone at 2 and
    # ratio 0.5, the weight decay is x GAMMA from the second iteration on.
    cfg = _tiny_cfg(tmp_path)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("glip_shapes_train",), ()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.STEPS = 3, 1, (2,)
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.GAMMA = 0.01, 0.1
    cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.5
    trainer = GLIPTrainer(cfg)
    seen = []
    original = trainer.optimizer.step

    def step(*args, **kwargs):
        seen.append(max(g["weight_decay"] for g in trainer.optimizer.param_groups))
        return original(*args, **kwargs)

    trainer.optimizer.step = step
    trainer.train()
    assert seen == pytest.approx([0.01, 0.001, 0.001])
