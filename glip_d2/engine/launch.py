"""Start a command-line entry point in every process of Detectron2's launcher."""

from __future__ import annotations

import argparse
from typing import Callable

from detectron2.engine import launch

__all__ = ["launch_from_args"]


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
