#!/usr/bin/env python
"""Train or evaluate GLIP with Detectron2's trainer.

python train_net.py --config-file configs/glip_swin_t.yaml
python train_net.py --config-file configs/glip_swin_t.yaml --eval-only MODEL.WEIGHTS x.pth
python train_net.py --config-file ... --num-gpus 8   (and --num-machines/--machine-rank)
python train_net.py --config-file ... DATASETS.REGISTER "[{'NAME': 'my_train', 'FORMAT': 'coco',
    'JSON_FILE': 'train.json', 'IMAGE_ROOT': 'images'}]" DATASETS.TRAIN "('my_train',)"
"""

import logging
import os

# First: glip_d2 hides fvcore's torch.jit.script deprecation warnings, which detectron2 triggers.
import glip_d2  # noqa: F401

# isort: split
import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from glip_d2.config import add_glip_config
from glip_d2.data import register_datasets_from_cfg
from glip_d2.engine import GLIPTrainer
from glip_d2.engine.answer_vocab import prepare_answer_vocab
from glip_d2.engine.launch import cpu_fallback, launch_from_args, share_cpu_threads
from glip_d2.utils.checkpoint import GLIPCheckpointer


def setup(args):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cpu_fallback(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    share_cpu_threads(cfg)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="glip_d2")
    # Here, not in invoke_main: launch runs main in every process.
    register_datasets_from_cfg(cfg)
    return prepare_answer_vocab(cfg)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = GLIPTrainer.build_model(cfg)
        GLIPCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = GLIPTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    result = trainer.train()
    if comm.is_main_process():
        logging.getLogger("glip_d2").info("Outputs in %s", os.path.abspath(cfg.OUTPUT_DIR))
    return result


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()
