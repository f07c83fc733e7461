"""MDETR-format grounding annotations (Flickr30K entities, GoldG mixed, RefCOCO/+/g).

Format (reference §10; MDETR's ``final_*.json``): one image entry per (image, caption) pair with
``caption`` and metadata (``tokens_positive_eval``, ``sentence_id``, ``original_img_id``,
``dataset_name``, ``data_source`` for the mixed set); each annotation has a box (xywh) and
``tokens_positive``, a list of ``[start, end)`` **character** spans into the caption.

An image without ``tokens_positive_eval`` (a user's own set) gets evaluation phrases derived
from its annotations: one phrase per distinct (sorted) ``tokens_positive`` list of its non-crowd
annotations, in caption order, which is how the mapper groups the boxes of a caption into
phrases for training. Invalid boxes and segmentations (kept where the json has them, e.g.
RefCOCO's and PhraseCut's) follow :mod:`glip_d2.data.annotation_checks`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from ..annotation_checks import (
    InvalidBoxReport,
    SegmentationReport,
    check_annotation_box,
    check_annotation_score,
    check_annotation_segmentation,
    report_invalid_boxes,
    report_segmentations,
)
from ..prompts.text import check_char_spans
from .coco_grounding import require_file

__all__ = ["derive_eval_phrases", "load_mdetr_grounding_json", "register_mdetr_grounding"]

logger = logging.getLogger(__name__)

ImageRoot = Union[str, Mapping[str, str]]

# Image-level keys kept as they are (evaluation needs them); MDETR's own ``dataset_name`` is
# renamed, as ``dataset_name`` holds the registered name.
_IMAGE_KEYS = ("sentence_id", "original_img_id", "original_id", "task_id", "data_source")

# (dataset, count) pairs already told that their evaluation phrases are derived: a dataset is
# loaded again for each evaluation.
_DERIVED_LOGGED: Set[Tuple[str, int]] = set()


def _image_folder(image_root: ImageRoot, img: Mapping[str, Any], where: str) -> str:
    if isinstance(image_root, str):
        return image_root
    source = img.get("data_source")
    if source not in image_root:
        raise ValueError(
            f"{where}: image {img.get('id')} has data_source {source!r}, which has no folder in "
            f"image_root (known: {sorted(image_root)})"
        )
    return image_root[source]


def derive_eval_phrases(annotations: Sequence[Mapping[str, Any]]) -> List[List[List[int]]]:
    """Evaluation phrases of a caption from its annotations, for images without
    ``tokens_positive_eval``.

    Args:
        annotations: the record's annotations (``tokens_positive``: **character** spans;
            crowd annotations are ignored, as the mapper ignores them).

    Returns:
        list: per phrase, its list of ``[start, end)`` character spans: one phrase per distinct
        sorted span list, in caption order (the mapper's grouping of a caption's boxes).
    """
    keys = {
        tuple(sorted((int(s), int(e)) for s, e in ann["tokens_positive"]))
        for ann in annotations
        if ann.get("tokens_positive") and not ann.get("iscrowd", 0)
    }
    return [[[s, e] for s, e in key] for key in sorted(keys)]


def load_mdetr_grounding_json(
    json_file: str, image_root: ImageRoot, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load MDETR-format grounding annotations as Detectron2 dicts.

    Args:
        json_file (str): e.g. ``final_flickr_separateGT_train.json``.
        image_root (str or Mapping[str, str]): the image folder, or one folder per
            ``data_source`` value (the mixed set: ``{"coco": ..., "vg": ...}``).
        dataset_name (str, optional): stored in each record as ``dataset_name``.

    Returns:
        list[dict]: records with ``file_name``, ``height``, ``width``, ``image_id``,
        ``caption``, ``dataset_name``, ``tokens_positive_eval`` (per phrase, a list of
        character spans; derived by :func:`derive_eval_phrases` where the json has none; an
        INFO line says how many), ``sentence_id``, ``original_img_id``, ``mdetr_dataset_name``...,
        and ``annotations`` with ``bbox`` (``XYWH_ABS``), ``category_id`` 0, ``iscrowd``,
        ``id``, ``tokens_positive`` (character spans) and, where the json has one,
        ``segmentation`` (polygons in image pixels or a compressed RLE dict, as
        :func:`glip_d2.data.load_coco_grounding_json`).

    Raises:
        FileNotFoundError: the json file is missing.
        ValueError: an empty caption (names the image id), a span outside its caption, a
            box that is not four numbers or a malformed segmentation (names the json file,
            the annotation id and its image).
    """
    require_file(json_file, dataset_name)
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    where = f"{json_file}" if dataset_name is None else f"Dataset '{dataset_name}' ({json_file})"

    records: Dict[Any, Dict[str, Any]] = {}
    for img in data.get("images", []):
        caption = img.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{where}: image {img.get('id')} has an empty caption")
        record = {
            "file_name": os.path.join(_image_folder(image_root, img, where), img["file_name"]),
            "image_id": img["id"],
            "caption": caption,
            "annotations": [],
        }
        if "height" in img and "width" in img:
            record["height"], record["width"] = int(img["height"]), int(img["width"])
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        for key in _IMAGE_KEYS:
            if key in img:
                record[key] = img[key]
        if "dataset_name" in img:
            record["mdetr_dataset_name"] = img["dataset_name"]
        if "tokens_positive_eval" in img:
            for k, spans in enumerate(img["tokens_positive_eval"]):
                check_char_spans(caption, spans, f"{where}: image {img['id']} eval phrase {k}")
            record["tokens_positive_eval"] = [
                [[int(s), int(e)] for s, e in spans] for spans in img["tokens_positive_eval"]
            ]
        records[img["id"]] = record

    report = InvalidBoxReport(where)
    segm_report = SegmentationReport(where)
    no_text = 0
    for ann in data.get("annotations", []):
        ann_id = ann.get("id")
        record = records.get(ann.get("image_id"))
        if record is None:
            raise ValueError(f"{where}: annotation {ann_id} refers to unknown image")
        spans = ann.get("tokens_positive", ann.get("tokens"))
        if not spans:
            no_text += 1
            continue
        check_char_spans(record["caption"], spans, f"{where}: annotation {ann_id}")
        check = check_annotation_box(ann, record, report, where)
        if check.bbox is None:
            continue
        out = {
            "id": ann_id,
            "bbox": check.bbox,
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "iscrowd": int(ann.get("iscrowd", 0)),
            "tokens_positive": [[int(s), int(e)] for s, e in spans],
        }
        if "phrase_ids" in ann:
            out["phrase_ids"] = ann["phrase_ids"]
        if "score" in ann:  # a pseudo-label's teacher score (tools/pseudo_label.py)
            out["score"] = check_annotation_score(ann, where)
        segm = check_annotation_segmentation(ann, record, segm_report, where)
        if segm is not None:
            out["segmentation"] = segm
        record["annotations"].append(out)
    if no_text:
        logger.warning(f"{where}: dropped {no_text} annotations without tokens_positive")
    report_invalid_boxes(report, dataset_name)
    report_segmentations(segm_report, dataset_name)
    derived = [r for r in records.values() if "tokens_positive_eval" not in r]
    for record in derived:
        record["tokens_positive_eval"] = derive_eval_phrases(record["annotations"])
    if derived and (where, len(derived)) not in _DERIVED_LOGGED:
        _DERIVED_LOGGED.add((where, len(derived)))
        logger.info(
            f"{where}: {len(derived)} of {len(records)} images have no tokens_positive_eval; "
            "their evaluation phrases are derived from the annotations' tokens_positive (one "
            "phrase per distinct span list, in caption order)"
        )
    return [records[k] for k in sorted(records)]


def register_mdetr_grounding(
    name: str, metadata: Dict[str, Any], json_file: str, image_root: ImageRoot
) -> None:
    """Register MDETR-format grounding annotations (like ``register_coco_instances``).

    Nothing is read until the dataset is used; a missing file then raises an error naming it.

    Args:
        name (str): the dataset name, e.g. ``"flickr30k_separate_val"``.
        metadata (dict): extra metadata; ``evaluator_type`` defaults to ``"grounding"``
            (set ``"flickr30k"`` or ``"refcoco"`` for those benchmarks).
        json_file (str): the MDETR json.
        image_root (str or Mapping[str, str]): see :func:`load_mdetr_grounding_json`.
    """
    DatasetCatalog.register(name, lambda: load_mdetr_grounding_json(json_file, image_root, name))
    meta = {"evaluator_type": "grounding", "thing_classes": ["object"], **metadata}
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)
