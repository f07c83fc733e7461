"""What every command-line entry point does around Detectron2's launcher: start ``main`` in
every process, fall back to the CPU, and share a CPU machine's cores between processes."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Callable

import torch
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm

__all__ = ["cpu_fallback", "launch_from_args", "share_cpu_threads"]


def launch_from_args(main: Callable[[argparse.Namespace], object], args: argparse.Namespace):
    """``main(args)`` in ``args.num_gpus`` processes per machine, as Detectron2's
    ``default_argument_parser`` arguments say (``--num-machines``, ``--machine-rank``,
    ``--dist-url``); one process runs it directly. NCCL on GPUs, gloo on CPUs."""
    return launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def cpu_fallback(cfg: CfgNode) -> None:
    """Set ``MODEL.DEVICE`` to "cpu", with a warning, when it asks for CUDA on a machine
    without it (call before ``cfg.freeze()``). Under ``launch`` "cuda" is already each
    process's own GPU."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("glip_d2").warning("CUDA is not available: running on CPU")
        cfg.MODEL.DEVICE = "cpu"


def share_cpu_threads(cfg: CfgNode) -> None:
    """Several CPU processes on one machine share its cores (unless ``OMP_NUM_THREADS`` says
    otherwise)."""
    local = comm.get_local_size()
    if cfg.MODEL.DEVICE == "cpu" and local > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
