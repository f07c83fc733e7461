"""Step weight-decay schedule of the official GLIP-L recipe (``SOLVER.WEIGHT_DECAY_SCHEDULE``).

The official trainer (microsoft/GLIP ``maskrcnn_benchmark/engine/trainer.py``) multiplies the
weight decay of every parameter group by the LR schedule's gamma once the number of finished
iterations reaches ``ratio`` (0.667 by default) times an LR milestone, one milestone after the
other; only with the multi-step LR schedule. GLIP-L's pre-training sets it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.engine import HookBase


def lr_milestones(steps: Sequence[float], max_iter: int) -> List[int]:
    """LR milestones in iterations: values below 1 are fractions of ``max_iter`` (rounded, as
    the official ``make_lr_scheduler``), others are iterations. Milestones at or past
    ``max_iter`` are kept: the official weight-decay drop comes ``ratio`` earlier."""
    return [int(round(s * max_iter)) if s < 1 else int(s) for s in steps]


class WeightDecaySchedule(HookBase):
    """After each iteration, set every parameter group's weight decay to its initial value
    times ``gamma`` once per milestone ``m`` with ``finished iterations >= m * ratio``.

    The value is recomputed from the iteration (not multiplied in place), so a resumed run
    continues with the weight decay an uninterrupted run would have, whatever the checkpointed
    optimizer holds.

    Args:
        optimizer (torch.optim.Optimizer): read for the initial weight decays; build the hook
            before a checkpoint is loaded into the optimizer.
        milestones (sequence of int): LR milestones in iterations (:func:`lr_milestones`).
        ratio (float): fraction of each milestone at which the weight decay drops (> 0).
        gamma (float): factor per drop (the LR schedule's ``SOLVER.GAMMA``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        ratio: float,
        gamma: float,
    ):
        if ratio <= 0:
            raise ValueError(f"weight-decay schedule ratio must be > 0, got {ratio}")
        self._base = [group["weight_decay"] for group in optimizer.param_groups]
        self._thresholds = sorted(m * ratio for m in milestones)
        self._gamma = gamma

    def _apply(self, finished_iters: int) -> None:
        groups = self.trainer.optimizer.param_groups
        if len(groups) != len(self._base):
            raise RuntimeError(
                f"the optimizer has {len(groups)} parameter groups, the weight-decay schedule "
                f"was built for {len(self._base)}"
            )
        drops = sum(finished_iters >= t for t in self._thresholds)
        for group, base in zip(groups, self._base):
            value = base
            for _ in range(drops):  # repeated products, as the official in-place update
                value *= self._gamma
            group["weight_decay"] = value

    def before_train(self):
        self._apply(self.trainer.iter)

    def after_step(self):
        self._apply(self.trainer.iter + 1)


def build_weight_decay_schedule(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> Optional[WeightDecaySchedule]:
    """The hook for ``SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO`` (None when it is 0).

    Raises:
        ValueError: if the ratio is set with an LR schedule other than ``WarmupMultiStepLR``
            (the official schedule applies to milestones only).
    """
    ratio = cfg.SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO
    if not ratio:
        return None
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise ValueError(
            f"SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO={ratio} needs SOLVER.LR_SCHEDULER_NAME "
            f"'WarmupMultiStepLR' (its milestones), not {cfg.SOLVER.LR_SCHEDULER_NAME!r}"
        )
    milestones = lr_milestones(cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER)
    return WeightDecaySchedule(optimizer, milestones, ratio, cfg.SOLVER.GAMMA)
