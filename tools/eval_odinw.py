#!/usr/bin/env python
"""Evaluate a GLIP model on ODinW-13 or ODinW-35: COCO box AP per task and the mean AP.

python tools/eval_odinw.py --config-file configs/glip_swin_t.yaml --tasks odinw13 \
    MODEL.WEIGHTS glip_tiny_model_o365_goldg.pth
python tools/eval_odinw.py --config-file ... --tasks odinw35 --task-names Aquarium,BCCD

Each task is evaluated on the split its official config uses (``OdinwTask.eval_split``,
registered by ``glip_d2/data/datasets/builtin.py`` as ``odinw<13|35>_<task>_<split>``), through
``build_evaluator`` and Detectron2's ``inference_on_dataset``. The table and the per-task
metrics are logged and written to ``<OUTPUT_DIR>/<tasks>_summary.json``.
"""

import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Mapping, Sequence

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from glip_d2.config import add_glip_config
from glip_d2.data.datasets.odinw import ODINW_13_TASKS, ODINW_35_TASKS, odinw_dataset_name
from glip_d2.engine import GLIPTrainer
from glip_d2.engine.launch import launch_from_args
from glip_d2.evaluation import build_evaluator
from glip_d2.utils.checkpoint import GLIPCheckpointer

TASK_SETS = {"odinw13": (13, ODINW_13_TASKS), "odinw35": (35, ODINW_35_TASKS)}
METRICS = ("AP", "AP50", "AP75")

logger = logging.getLogger("glip_d2.eval_odinw")


def task_datasets(task_set: str, names: Sequence[str] = ()) -> Dict[str, str]:
    """Task name -> registered evaluation dataset, in the official order (optionally a subset)."""
    version, tasks = TASK_SETS[task_set]
    known = {t.name for t in tasks}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"Unknown {task_set} tasks {unknown}; known: {sorted(known)}")
    return OrderedDict(
        (t.name, odinw_dataset_name(version, t.name, t.eval_split))
        for t in tasks
        if not names or t.name in names
    )


def summarize(results: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Dict:
    """Per-task box metrics and their mean.

    Args:
        results: task name -> evaluator results (``{"bbox": {"AP": ...}}``).

    Returns:
        dict: ``{"tasks": {task: {metric: value}}, "mean": {metric: value}}``.
    """
    tasks = {name: {m: float(res["bbox"][m]) for m in METRICS} for name, res in results.items()}
    mean = {m: sum(t[m] for t in tasks.values()) / max(len(tasks), 1) for m in METRICS}
    return {"tasks": tasks, "mean": mean}


def format_table(summary: Mapping) -> str:
    rows = [[name, *(v[m] for m in METRICS)] for name, v in summary["tasks"].items()]
    rows.append(["mean", *(summary["mean"][m] for m in METRICS)])
    return tabulate(rows, headers=["task", *METRICS], floatfmt=".2f", tablefmt="pipe")


def setup(args):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glip_d2")
    return cfg


def main(args):
    cfg = setup(args)
    datasets = task_datasets(args.tasks, [n for n in args.task_names.split(",") if n])
    model = GLIPTrainer.build_model(cfg)
    GLIPCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    results = OrderedDict()
    for i, (task, dataset_name) in enumerate(datasets.items()):
        logger.info(f"[{i + 1}/{len(datasets)}] {task}: evaluating {dataset_name}")
        loader = GLIPTrainer.build_test_loader(cfg, dataset_name)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        results[task] = inference_on_dataset(model, loader, evaluator)
    if not comm.is_main_process():
        return None
    summary = summarize(results)
    logger.info(f"{args.tasks} box AP ({len(datasets)} tasks):\n{format_table(summary)}")
    path = os.path.join(cfg.OUTPUT_DIR, f"{args.tasks}_summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    logger.info(f"Summary written to {path}")
    return summary


def invoke_main() -> None:
    parser = default_argument_parser()
    parser.add_argument("--tasks", choices=sorted(TASK_SETS), default="odinw13")
    parser.add_argument(
        "--task-names", default="", help="comma-separated subset of the tasks (default: all)"
    )
    args = parser.parse_args()
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()
