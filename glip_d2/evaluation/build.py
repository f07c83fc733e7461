"""One public way to build the evaluator of a registered dataset.

The dataset's ``evaluator_type`` (in ``MetadataCatalog``) selects a factory from
:data:`EVALUATOR_TABLE`. The trainer, ``train_net.py --eval-only`` and the tools all go through
:func:`build_evaluator`, so a new evaluator type is one table entry.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional

from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from .flickr_evaluation import FlickrEvaluator
from .lvis_evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from .refexp_evaluation import RefExpEvaluator


def _coco(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return COCOEvaluator(
        dataset_name,
        tasks=("bbox",),
        distributed=True,
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )


def _lvis(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # Both numbers the GLIP paper reports: standard LVIS AP (300 per image) as results["bbox"],
    # and MDETR's Fixed AP (top 10,000 per category, no per-image cap) as
    # results["bbox_fixed_ap"].
    return DatasetEvaluators(
        [
            LVISStandardEvaluator(
                dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder
            ),
            LVISFixedAPEvaluator(dataset_name, distributed=True, output_dir=output_folder),
        ]
    )


def _flickr30k(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return FlickrEvaluator(dataset_name, distributed=True, output_dir=output_folder)


def _grounding(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return FlickrEvaluator(
        dataset_name, distributed=True, output_dir=output_folder, task_name="grounding"
    )


def _refcoco(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return RefExpEvaluator(dataset_name, distributed=True, output_dir=output_folder)


#: evaluator_type -> factory(cfg, dataset_name, output_folder) returning a DatasetEvaluator.
#: "odinw" tasks are COCO-format detection sets and use COCO AP (reference §9). "refcoco"
#: covers RefCOCO, RefCOCO+ and RefCOCOg (one registered dataset per split). "grounding" (the
#: default of ``register_mdetr_grounding``) reports Flickr-style phrase recalls.
EVALUATOR_TABLE: Dict[str, Callable[[CfgNode, str, str], DatasetEvaluator]] = {
    "coco": _coco,
    "odinw": _coco,
    "lvis": _lvis,
    "flickr30k": _flickr30k,
    "refcoco": _refcoco,
    "grounding": _grounding,
}


def build_evaluator(
    cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """Build the evaluator that the dataset's metadata asks for.

    Args:
        cfg (CfgNode): the run's config.
        dataset_name (str): a name registered in Detectron2's ``DatasetCatalog``.
        output_folder (str, optional): where evaluators write their raw predictions; default
            ``<OUTPUT_DIR>/inference/<dataset_name>``.

    Returns:
        DatasetEvaluator: ready for ``detectron2.evaluation.inference_on_dataset``.

    Raises:
        KeyError: the dataset has no ``evaluator_type`` or one with no entry in the table.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    evaluator_type = meta.get("evaluator_type", None)
    if evaluator_type is None:
        raise KeyError(
            f"Dataset '{dataset_name}' has no evaluator_type in its metadata; set one of "
            f"{sorted(EVALUATOR_TABLE)} with MetadataCatalog.get('{dataset_name}').set(...)"
        )
    if evaluator_type not in EVALUATOR_TABLE:
        raise KeyError(
            f"Dataset '{dataset_name}' has evaluator_type '{evaluator_type}', which has no "
            f"evaluator; known types: {sorted(EVALUATOR_TABLE)}"
        )
    return EVALUATOR_TABLE[evaluator_type](cfg, dataset_name, output_folder)
