"""GLIPTrainer: Detectron2's DefaultTrainer with GLIP's loaders, evaluators and optimizer."""

from __future__ import annotations

import json
import logging
import math
import os
import weakref
from typing import Any, Dict, List

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, get_detection_dataset_dicts
from detectron2.data.build import filter_images_with_only_crowd_annotations, trivial_batch_collator
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.data.samplers import InferenceSampler, RepeatFactorTrainingSampler, TrainingSampler
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.hooks import EvalHook
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..data import GroundingDatasetMapper
from ..data.annotation_checks import check_training_records
from ..data.few_shot import sample_few_shot
from ..data.mappers import UNDERSTANDING_TASKS, VLTaskDatasetMapper
from ..data.train_loader import ResumableTrainLoader, build_resumable_train_loader
from ..evaluation import build_evaluator
from ..utils.checkpoint import GLIPCheckpointer
from .hooks import EMAHook, ModelEMA, RNGState, unwrap_model
from .visualize import visualize_dataset_predictions
from .weight_decay_schedule import build_weight_decay_schedule, lr_milestones

logger = logging.getLogger(__name__)


def dataset_task(dataset_name: str) -> str:
    """A registered dataset's ``task`` metadata: "vqa", "caption" or "grounding" (default:
    detection and phrase grounding sets)."""
    from detectron2.data import MetadataCatalog

    return MetadataCatalog.get(dataset_name).get("task", "grounding")


def build_mapper(cfg: CfgNode, is_train: bool):
    """The dataset mapper of a run: :class:`GroundingDatasetMapper`, or with GLIPv2's VQA or
    captioning (``MODEL.VQA_ON`` / ``MODEL.CAPTION_ON``) :class:`VLTaskDatasetMapper`, which
    maps VQA and caption records and hands the others to the grounding mapper."""
    if cfg.MODEL.VQA_ON or cfg.MODEL.CAPTION_ON:
        return VLTaskDatasetMapper(cfg, is_train=is_train)
    return GroundingDatasetMapper(cfg, is_train=is_train)


def _json_safe(value):
    """Results as plain JSON: nested dicts, floats, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


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
                # VQA and caption losses leave the box / token-score layers without gradient
                # (kept for grounded answers and captions).
                find_unused_parameters=bool(cfg.MODEL.VQA_ON or cfg.MODEL.CAPTION_ON),
            )
        use_amp = cfg.SOLVER.AMP.ENABLED and torch.cuda.is_available()
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning("SOLVER.AMP.ENABLED is ignored without CUDA; training in fp32.")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        unwrap_model(model).register_forward_hook(self._check_losses)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GLIPCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.ema = ModelEMA(model, cfg.SOLVER.MODEL_EMA) if cfg.SOLVER.MODEL_EMA > 0 else None
        if self.ema is not None:
            self.checkpointer.add_checkpointable("model_ema", self.ema)
        self.rng_state = RNGState()
        self.checkpointer.add_checkpointable("rng_state", self.rng_state)
        if isinstance(data_loader, ResumableTrainLoader):
            self.checkpointer.add_checkpointable("train_loader", data_loader)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True):
        """Detectron2's resume, made exact: after loading a checkpoint of iteration N, the
        training loader starts at batch N without mapping (or reading) the batches before it,
        and the random states saved at N are restored when it starts, so the run continues with
        the batches, augmentations and dropout masks an uninterrupted run would have used
        (bit-identical with a fixed ``SEED``; see :mod:`glip_d2.data.train_loader`). A loader
        of another kind (an overridden ``build_train_loader``) replays its first N batches."""
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter > 0):
            return
        # The checkpoint holds the main process's random states: other processes keep their
        # own seeds (rank 0's states would make their augmentations and dropout repeat rank 0's).
        main = comm.is_main_process()
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.start_at(
                self.start_iter, on_start=self._restore_rng_state if main else None, worker_rng=main
            )
            return
        logger.info(
            "The training loader cannot start at a batch: replaying %d batches", self.start_iter
        )
        batches = self._trainer._data_loader_iter
        for _ in range(self.start_iter):
            next(batches)
        if main:
            self._restore_rng_state()

    def _restore_rng_state(self):
        if not self.rng_state.restore():
            logger.warning("The checkpoint has no RNG state: resumption is not exact")

    def state_dict(self):
        """The trainer's checkpoint state, including the inner trainer's (the optimizer, and
        the AMP grad scaler). Detectron2 v0.6's ``DefaultTrainer`` saves only the iteration and
        the hooks, so a resumed AdamW would restart from empty moments; later releases add
        ``_trainer`` themselves, which is kept as is."""
        ret = super().state_dict()
        if "_trainer" not in ret:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "load_state_dict" in DefaultTrainer.__dict__:
            return  # this Detectron2 restores the inner trainer itself
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        else:
            logger.warning("The checkpoint has no optimizer state: the optimizer starts afresh")

    def build_hooks(self):
        """DefaultTrainer's hooks, plus the EMA update right after the optimizer step (with
        ``TEST.USE_EMA`` the periodic and final evaluations run on the EMA weights) and, with
        ``SOLVER.WEIGHT_DECAY_SCHEDULE_RATIO``, GLIP-L's weight-decay schedule (built here,
        before any resume, because it reads the initial weight decays)."""
        hooks = super().build_hooks()
        wd_schedule = build_weight_decay_schedule(self.cfg, self.optimizer)
        if wd_schedule is not None:
            hooks.insert(2, wd_schedule)
        if self.ema is not None:
            hooks.insert(2, EMAHook(self.ema))
            if self.cfg.TEST.USE_EMA:
                for hook in hooks:
                    if isinstance(hook, EvalHook):
                        hook._func = self._test_with_ema(hook._func)
        return hooks

    def _test_with_ema(self, func):
        def run():
            with self.ema.apply_to(self.model):
                return func()

        return run

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        """Warmup + multi-step; ``SOLVER.STEPS`` below 1 are fractions of ``MAX_ITER`` (the
        official recipe writes (0.67, 0.89)). A warm-up as long as the run is a warning: the LR
        would never reach ``SOLVER.BASE_LR``."""
        max_iter = cfg.SOLVER.MAX_ITER
        if cfg.SOLVER.WARMUP_ITERS >= max_iter and cfg.SOLVER.WARMUP_FACTOR < 1.0:
            logger.warning(
                f"SOLVER.WARMUP_ITERS ({cfg.SOLVER.WARMUP_ITERS}) >= SOLVER.MAX_ITER ({max_iter}): "
                "the learning rate stays in warm-up for the whole run and never reaches "
                f"SOLVER.BASE_LR ({cfg.SOLVER.BASE_LR}). Lower SOLVER.WARMUP_ITERS or raise "
                "SOLVER.MAX_ITER."
            )
        steps = lr_milestones(cfg.SOLVER.STEPS, max_iter)
        # A milestone at or after the last iteration never applies (and fvcore rejects it).
        steps = [s for s in steps if s < max_iter]
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.STEPS = tuple(steps)
        return super().build_lr_scheduler(cfg, optimizer)

    def _check_losses(self, module, inputs, outputs):
        """Stop at the first non-finite loss, naming the iteration and the term(s)."""
        if not (module.training and isinstance(outputs, dict)):
            return
        bad = [k for k, v in outputs.items() if not torch.isfinite(v).all()]
        if bad:
            values = {k: float(v) for k, v in outputs.items()}
            raise FloatingPointError(
                f"Non-finite loss at iteration={self.iter}: {', '.join(bad)} (losses: {values})"
            )

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """Detection and grounding sets mixed: each of ``DATASETS.TRAIN`` is repeated
        ``DATASETS.TRAIN_REPEAT`` times per epoch (the official ``*_COPY`` factors; fractions
        sample a share), and its records remember their dataset for the mapper's prompts."""
        names = list(cfg.DATASETS.TRAIN)
        repeats = list(cfg.DATASETS.TRAIN_REPEAT) or [1.0] * len(names)
        if len(repeats) != len(names):
            raise ValueError(
                f"DATASETS.TRAIN_REPEAT has {len(repeats)} values for {len(names)} datasets {names}"
            )
        dicts, factors = [], []
        tasks = {name: dataset_task(name) for name in names}
        if len(set(tasks.values())) > 1:
            raise ValueError(
                f"DATASETS.TRAIN mixes tasks {tasks}: a batch is one task, train VQA, captioning "
                "and grounding in separate runs"
            )
        for name, repeat in zip(names, repeats):
            # Detection and grounding sets have different class lists: no consistency check.
            records = get_detection_dataset_dicts(
                [name], filter_empty=False, check_consistency=False
            )
            if tasks[name] not in UNDERSTANDING_TASKS:
                # Before Detectron2's filter, whose bare "No valid data found" would name nothing.
                check_training_records(records, name)
                if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
                    records = filter_images_with_only_crowd_annotations(records)
            if cfg.DATASETS.FEW_SHOT > 0:
                records = sample_few_shot(
                    records, cfg.DATASETS.FEW_SHOT, cfg.DATASETS.FEW_SHOT_SEED
                )
            for record in records:
                record.setdefault("dataset_name", name)
            dicts.extend(records)
            factors.extend([float(repeat)] * len(records))
            logger.info("Training set %s: %d images, repeat x%g", name, len(records), repeat)
        seed = cfg.SEED if cfg.SEED >= 0 else None
        if all(f == 1.0 for f in factors):
            sampler = TrainingSampler(len(dicts), seed=seed)
        else:
            sampler = RepeatFactorTrainingSampler(torch.tensor(factors), seed=seed)
        return build_resumable_train_loader(
            dicts,
            mapper=build_mapper(cfg, is_train=True),
            sampler=sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = build_mapper(cfg, is_train=False)
        batch_size = int(cfg.TEST.IMS_PER_BATCH)
        if batch_size == 1:
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        # Detectron2 v0.6's build_detection_test_loader has no batch size: its parts, batched.
        dicts = get_detection_dataset_dicts([dataset_name], filter_empty=False)
        return torch.utils.data.DataLoader(
            MapDataset(DatasetFromList(dicts, copy=False), mapper),
            batch_size=batch_size,
            sampler=InferenceSampler(len(dicts)),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=trivial_batch_collator,
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg: CfgNode, model, evaluators=None):
        """Detectron2's evaluation loop; then (main process) the results go to
        ``<OUTPUT_DIR>/eval_results.json`` and, with ``TEST.VISUALIZE.NUM_IMAGES``, pictures of
        the first test images' predictions to ``<OUTPUT_DIR>/visualizations/<dataset>/``."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
            with open(path, "w") as f:
                # Detectron2 unwraps a single dataset's results; the file always names it.
                names = list(cfg.DATASETS.TEST)
                by_dataset = {names[0]: results} if len(names) == 1 else results
                json.dump(_json_safe(by_dataset), f, indent=2)
            logger.info("Evaluation results written to %s", os.path.abspath(path))
            num = cfg.TEST.VISUALIZE.NUM_IMAGES
            # Boxes are drawn for detection and grounding sets (VQA / caption outputs have none).
            drawn = [n for n in cfg.DATASETS.TEST if dataset_task(n) not in UNDERSTANDING_TASKS]
            for name in drawn if num > 0 else ():
                folder = os.path.join(cfg.OUTPUT_DIR, "visualizations", name)
                written = visualize_dataset_predictions(
                    model,
                    cls.build_test_loader(cfg, name),
                    folder,
                    num,
                    cfg.TEST.VISUALIZE.SCORE_THRESH,
                )
                logger.info(
                    "Wrote %d pictures of %s predictions to %s",
                    len(written),
                    name,
                    os.path.abspath(folder),
                )
        return results

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
