"""The official GLIP-L weight-decay schedule (SOLVER.WEIGHT_DECAY_SCHEDULE) as a trainer hook."""

import itertools
from types import SimpleNamespace

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import HookBase, SimpleTrainer

from glip_d2.config import add_glip_config
from glip_d2.engine.weight_decay_schedule import (
    WeightDecaySchedule,
    build_weight_decay_schedule,
    lr_milestones,
)


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x):
        return {"loss_toy": self.linear(x).pow(2).mean()}


def _optimizer(model):
    # Two groups, as the trainer's: weights with decay, biases without.
    return torch.optim.AdamW(
        [
            {"params": [model.linear.weight], "weight_decay": 0.01},
            {"params": [model.linear.bias], "weight_decay": 0.0},
        ],
        lr=1e-3,
    )


class _RecordWeightDecay(HookBase):
    def __init__(self):
        self.used = {}

    def before_step(self):
        self.used[self.trainer.iter] = [
            g["weight_decay"] for g in self.trainer.optimizer.param_groups
        ]


def _trainer(optimizer_state=None):
    torch.manual_seed(0)
    model = _Toy()
    optimizer = _optimizer(model)
    # Built before a checkpoint is loaded, as GLIPTrainer builds its hooks.
    schedule = WeightDecaySchedule(optimizer, milestones=[20, 40], ratio=0.5, gamma=0.1)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    data = itertools.repeat(torch.ones(4, 2))
    trainer = SimpleTrainer(model, data, optimizer)
    record = _RecordWeightDecay()
    trainer.register_hooks([schedule, record])
    return trainer, record


def test_weight_decay_drops_by_gamma_at_ratio_times_each_milestone():
    trainer, record = _trainer()
    trainer.train(0, 30)
    # Iteration i runs after i finished ones: 0.01 until 0.5 x 20, 0.001 until 0.5 x 40.
    expected = {
        i: [0.01 if i < 10 else 0.01 * 0.1 if i < 20 else 0.01 * 0.1 * 0.1, 0.0] for i in range(30)
    }
    assert record.used == expected


@pytest.mark.parametrize("stop", [10, 15, 25])
def test_resumed_run_continues_with_the_uninterrupted_weight_decay(stop):
    full, full_record = _trainer()
    full.train(0, 30)
    first, _ = _trainer()
    first.train(0, stop)
    resumed, record = _trainer(optimizer_state=first.optimizer.state_dict())
    resumed.train(stop, 30)
    assert record.used == {i: full_record.used[i] for i in range(stop, 30)}


def test_glip_l_drops_at_two_thirds_of_its_lr_milestones():
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER, cfg.SOLVER.GAMMA = (0.67, 0.89), 1_000_000, 0.1
    cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.667
    assert lr_milestones(cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER) == [670_000, 890_000]
    optimizer = _optimizer(_Toy())
    hook = build_weight_decay_schedule(cfg, optimizer)
    hook.trainer = SimpleNamespace(optimizer=optimizer, iter=0)

    def weight_decay_after(finished):
        hook.trainer.iter = finished - 1
        hook.after_step()
        return optimizer.param_groups[0]["weight_decay"]

    assert weight_decay_after(446_889) == 0.01
    assert weight_decay_after(446_890) == pytest.approx(0.001)  # 0.667 x 670,000
    assert weight_decay_after(593_629) == pytest.approx(0.001)
    assert weight_decay_after(593_630) == pytest.approx(0.0001)  # 0.667 x 890,000


def test_schedule_is_off_at_ratio_0_and_needs_milestones():
    cfg = get_cfg()
    add_glip_config(cfg)
    optimizer = _optimizer(_Toy())
    assert build_weight_decay_schedule(cfg, optimizer) is None
    cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO = 0.667
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    with pytest.raises(ValueError, match="SOLVER.LR_SCHEDULER_NAME"):
        build_weight_decay_schedule(cfg, optimizer)
