"""One public way to build the evaluator of a registered dataset.

The dataset's ``evaluator_type`` (in ``MetadataCatalog``) selects a factory from
:data:`EVALUATOR_TABLE`. The trainer, ``train_net.py --eval-only`` and the tools all go through
:func:`build_evaluator`, so a new evaluator type is one table entry.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..data.annotation_checks import check_evaluation_ground_truth
from .flickr_evaluation import FlickrEvaluator
from .lvis_evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from .refexp_evaluation import RefExpEvaluator


def check_coco_ground_truth(dataset_name: str) -> None:
    """Raise if the ground truth that ``COCOEvaluator`` will read has an invalid box.

    ``COCOEvaluator`` reads the metadata ``json_file`` itself (not the loader's checked
    records), so a NaN or empty box there would be scored as given; without ``json_file`` it
    converts the dataset's records, which are checked instead. The rule and the error are
    those of :func:`glip_d2.data.annotation_checks.check_evaluation_ground_truth`.

    Args:
        dataset_name (str): a registered dataset.

    Raises:
        ValueError: names the invalid annotations, their images and the json file.
    """
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file:
        with PathManager.open(json_file, "r") as f:
            dataset = json.load(f)
    else:
        json_file = f"records of DatasetCatalog '{dataset_name}'"
        dataset = _records_as_coco(DatasetCatalog.get(dataset_name))
    check_evaluation_ground_truth(dataset, json_file, dataset_name)


def _records_as_coco(records: List[Dict[str, Any]]) -> Dict[str, list]:
    # The boxes COCOEvaluator's conversion will write, with the records' own ids (the
    # conversion renumbers annotations).
    images, anns = [], []
    for r in records:
        images.append({"id": r["image_id"], "height": r.get("height"), "width": r.get("width")})
        for a in r.get("annotations", []):
            bbox = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)
            anns.append({"id": a.get("id"), "image_id": r["image_id"], "bbox": bbox})
    return {"images": images, "annotations": anns}


def _coco(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    check_coco_ground_truth(dataset_name)
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
        ValueError: ``coco``/``odinw``/``lvis`` ground truth has an invalid box (NaN or
            infinite, zero or negative size, outside its image); the message names the
            annotations, their images and the json file.
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
