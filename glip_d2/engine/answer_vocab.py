"""The VQA answer vocabulary of a run: built from ``DATASETS.TRAIN`` when the config has none."""

from __future__ import annotations

import json
import logging
import os

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from ..data.datasets.vqa import build_answer_vocab

__all__ = ["prepare_answer_vocab"]

logger = logging.getLogger(__name__)

VOCAB_FILE = "answer_vocab.json"


def prepare_answer_vocab(cfg: CfgNode) -> CfgNode:
    """With ``MODEL.VQA_ON`` and an empty ``MODEL.VQA.ANSWER_VOCAB``: the ``NUM_ANSWERS`` most
    frequent normalised answers of ``DATASETS.TRAIN`` go to ``OUTPUT_DIR/answer_vocab.json``
    (written by the main process; the others wait), and the key points there. The config
    saved next to the checkpoints (``OUTPUT_DIR/config.yaml``) is rewritten with the key set,
    so ``--eval-only`` with it, the predictor and the demo find the same answers.

    Args:
        cfg (CfgNode): the run's config (frozen or not; returned frozen as it came).

    Returns:
        CfgNode: ``cfg`` itself, with the key set when it was built.
    """
    if not cfg.MODEL.VQA_ON or cfg.MODEL.VQA.ANSWER_VOCAB:
        return cfg
    path = os.path.join(cfg.OUTPUT_DIR, VOCAB_FILE)
    if comm.is_main_process():
        records = [r for name in cfg.DATASETS.TRAIN for r in DatasetCatalog.get(name)]
        answers = build_answer_vocab(records, cfg.MODEL.VQA.NUM_ANSWERS)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(answers, f)
        os.replace(path + ".tmp", path)
        logger.info(
            "VQA answer vocabulary: %d answers of %s written to %s",
            len(answers),
            list(cfg.DATASETS.TRAIN),
            path,
        )
    comm.synchronize()
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.MODEL.VQA.ANSWER_VOCAB = path
    if frozen:
        cfg.freeze()
    config_file = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if comm.is_main_process() and os.path.isfile(config_file):
        with open(config_file, "w") as f:
            f.write(cfg.dump())
    return cfg
