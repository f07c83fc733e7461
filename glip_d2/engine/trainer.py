"""GLIPTrainer: Detectron2's DefaultTrainer with GLIP's loaders, evaluators and optimizer."""

from __future__ import annotations

import logging
import weakref
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data import GroundingDatasetMapper
from ..evaluation import build_evaluator
from ..utils.checkpoint import GLIPCheckpointer

logger = logging.getLogger(__name__)


def build_param_groups(cfg: CfgNode, model: torch.nn.Module) -> List[Dict[str, Any]]:
    """One group per trainable tensor with the official LR / weight-decay rules (reference §14).

    * ``language_backbone`` parameters: ``BASE_LR x LANG_LR_FACTOR``;
    * any name containing ``bias`` (also ``bias_lang``, ``bias0``,
      ``relative_position_bias_table``): LR x ``BIAS_LR_FACTOR``, weight decay
      ``WEIGHT_DECAY_BIAS``.
    """
    s = cfg.SOLVER
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, wd = s.BASE_LR, s.WEIGHT_DECAY
        if "language_backbone" in name:
            lr = s.BASE_LR * s.LANG_LR_FACTOR
        if "bias" in name:
            lr, wd = lr * s.BIAS_LR_FACTOR, s.WEIGHT_DECAY_BIAS
        groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": name})
    return groups


def _full_model_clipping(optimizer_cls, max_norm: float, norm_type: float):
    """Optimizer subclass whose ``step`` first clips the L2 norm over *all* parameters."""

    class FullModelClipped(optimizer_cls):
        def step(self, closure=None):
            params = [p for g in self.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelClipped.__name__ = optimizer_cls.__name__ + "WithFullModelClipping"
    return FullModelClipped


class GLIPTrainer(DefaultTrainer):
    """DefaultTrainer with the grounding mapper, the evaluator table and GLIP's optimizer.

    Differences from ``DefaultTrainer`` kept to what must change: multi-process training on
    CPU (DistributedDataParallel without ``device_ids``, gloo), AMP only on CUDA, and a
    checkpointer that refuses shape mismatches.
    """

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        if comm.get_world_size() > 1:
            on_gpu = next(model.parameters()).is_cuda
            model = DistributedDataParallel(
                model,
                device_ids=[comm.get_local_rank()] if on_gpu else None,
                broadcast_buffers=False,
            )
        use_amp = cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available()
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning("SOLVER.AMP.ENABLED is ignored without CUDA; training in fp32.")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GLIPCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(cfg, mapper=GroundingDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=GroundingDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        if cfg.SOLVER.OPTIMIZER.upper() != "ADAMW":
            raise ValueError(f"SOLVER.OPTIMIZER '{cfg.SOLVER.OPTIMIZER}' is not supported (ADAMW)")
        optim_cls = torch.optim.AdamW
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED:
            if clip.CLIP_TYPE != "full_model":
                raise ValueError(
                    f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE '{clip.CLIP_TYPE}': GLIP clips the full model"
                    " ('full_model')"
                )
            optim_cls = _full_model_clipping(optim_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        return optim_cls(build_param_groups(cfg, model), lr=cfg.SOLVER.BASE_LR)
