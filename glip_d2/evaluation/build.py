"""One public way to build the evaluator of a registered dataset.

The dataset's ``evaluator_type`` (in ``MetadataCatalog``) selects a factory from
:data:`EVALUATOR_TABLE`. The trainer, ``train_net.py --eval-only`` and the tools all go through
:func:`build_evaluator`, so a new evaluator type is one table entry.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..data.annotation_checks import check_evaluation_ground_truth
from .captioning import CaptionEvaluator
from .flickr_evaluation import FlickrEvaluator
from .lvis_evaluation import LVISFixedAPEvaluator, LVISStandardEvaluator
from .referring_segmentation import (
    PhraseCutEvaluator,
    RefExpSegmentationEvaluator,
    annotations_without_masks,
)
from .refexp_evaluation import RefExpEvaluator
from .vqa import VQAEvaluator

logger = logging.getLogger(__name__)


def _coco_ground_truth(dataset_name: str) -> Tuple[Dict[str, Any], str]:
    # What COCOEvaluator will score against: its json_file, else its conversion of the records.
    json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
    if json_file:
        with PathManager.open(json_file, "r") as f:
            return json.load(f), json_file
    return _records_as_coco(DatasetCatalog.get(dataset_name)), (
        f"records of DatasetCatalog '{dataset_name}'"
    )


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
    dataset, source = _coco_ground_truth(dataset_name)
    check_evaluation_ground_truth(dataset, source, dataset_name)


def coco_ground_truth_has_masks(dataset: Dict[str, Any], source: str, dataset_name: str) -> bool:
    """Whether COCO mask AP can be computed on this ground truth.

    Args:
        dataset (dict): the COCO-format ground truth ``COCOEvaluator`` will read.
        source (str): its json file (or the records), for the messages.
        dataset_name (str): the registered name, for the messages.

    Returns:
        bool: True if every annotation has a ``segmentation``; False (with a WARNING: box AP
        only) if none has, as ODinW's box-only sets.

    Raises:
        ValueError: some annotations have a segmentation and others not; names the first
            ones without.
    """
    total, missing = annotations_without_masks(dataset)
    if not missing:
        return True
    if len(missing) == total:
        logger.warning(
            f"Dataset '{dataset_name}' ({source}) has no ground-truth masks: MODEL.MASK_ON is "
            "set, but only box AP is evaluated"
        )
        return False
    first = ", ".join(f"annotation {a} of image {i}" for a, i in missing[:5])
    raise ValueError(
        f"Mask AP of dataset '{dataset_name}' ({source}): {len(missing)} of {total} "
        f"ground-truth annotations have no segmentation (first: {first}); pycocotools would "
        "fail or score them wrongly. Add the masks, or remove those annotations."
    )


def _records_as_coco(records: List[Dict[str, Any]]) -> Dict[str, list]:
    # The boxes (and whether there is a mask) that COCOEvaluator's conversion will write, with
    # the records' own ids (the conversion renumbers annotations).
    images, anns = [], []
    for r in records:
        images.append({"id": r["image_id"], "height": r.get("height"), "width": r.get("width")})
        for a in r.get("annotations", []):
            bbox = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYWH_ABS)
            ann = {"id": a.get("id"), "image_id": r["image_id"], "bbox": bbox}
            if "segmentation" in a:
                ann["segmentation"] = a["segmentation"]
            anns.append(ann)
    return {"images": images, "annotations": anns}


def _coco(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # Box AP, and mask AP ("segm", pycocotools on RLE-encoded pred_masks) for a mask model
    # when the ground truth has masks.
    dataset, source = _coco_ground_truth(dataset_name)
    check_evaluation_ground_truth(dataset, source, dataset_name)
    tasks: Tuple[str, ...] = ("bbox",)
    if cfg.MODEL.MASK_ON and coco_ground_truth_has_masks(dataset, source, dataset_name):
        tasks = ("bbox", "segm")
    return COCOEvaluator(
        dataset_name,
        tasks=tasks,
        distributed=True,
        output_dir=output_folder,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
    )


def _lvis(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    # Both numbers the GLIP paper reports: standard LVIS AP (300 per image) as results["bbox"],
    # and MDETR's Fixed AP (top 10,000 per category, no per-image cap) as
    # results["bbox_fixed_ap"]; with MODEL.MASK_ON also mask AP, results["segm"] and
    # results["segm_fixed_ap"].
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return DatasetEvaluators(
        [
            LVISStandardEvaluator(
                dataset_name, tasks=tasks, distributed=True, output_dir=output_folder
            ),
            LVISFixedAPEvaluator(
                dataset_name, distributed=True, output_dir=output_folder, tasks=tasks
            ),
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


def _phrasecut(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return PhraseCutEvaluator(dataset_name, distributed=True, output_dir=output_folder)


def _refcoco_seg(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return RefExpSegmentationEvaluator(dataset_name, distributed=True, output_dir=output_folder)


def _caption(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return CaptionEvaluator(dataset_name, distributed=True, output_dir=output_folder)


def _vqa(cfg: CfgNode, dataset_name: str, output_folder: str) -> DatasetEvaluator:
    return VQAEvaluator(dataset_name, distributed=True, output_dir=output_folder)


#: evaluator_type -> factory(cfg, dataset_name, output_folder) returning a DatasetEvaluator.
#: "odinw" tasks are COCO-format detection sets and use COCO AP (reference §9). "refcoco"
#: covers RefCOCO, RefCOCO+ and RefCOCOg (one registered dataset per split). "grounding" (the
#: default of ``register_mdetr_grounding``) reports Flickr-style phrase recalls. With
#: ``MODEL.MASK_ON``, "coco"/"odinw" add mask AP where the ground truth has masks and "lvis"
#: adds mask AP (standard and Fixed). "phrasecut" and "refcoco_seg" (RefCOCO/+/g masks) are
#: referring segmentation (mean and cumulative IoU, precision at IoU thresholds). "vqa" is
#: VQAv2 accuracy (the official 10-choose-9 rule; test-dev / test only write
#: ``vqa_predictions.json`` for the server). "caption" is COCO caption metrics (pycocoevalcap:
#: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE when its models are installed; needs Java).
EVALUATOR_TABLE: Dict[str, Callable[[CfgNode, str, str], DatasetEvaluator]] = {
    "coco": _coco,
    "odinw": _coco,
    "lvis": _lvis,
    "flickr30k": _flickr30k,
    "refcoco": _refcoco,
    "grounding": _grounding,
    "phrasecut": _phrasecut,
    "refcoco_seg": _refcoco_seg,
    "vqa": _vqa,
    "caption": _caption,
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
            infinite, zero or negative size, outside its image), or, with ``MODEL.MASK_ON``,
            annotations without segmentation (``coco``/``odinw``: some but not all;
            ``lvis``: any); the message names the annotations, their images and the json file.
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
