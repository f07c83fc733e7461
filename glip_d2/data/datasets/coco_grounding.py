"""COCO-format detection sets used as grounding data (prompt from the category names).

Any COCO-style json (COCO, LVIS, Objects365, ODinW, custom sets) becomes a dataset whose
records carry the usual Detectron2 fields plus ``dataset_name``; the mapper builds the prompt
from the metadata ``prompt_names`` / ``prompt_prefixes`` / ``prompt_suffixes``. ODinW's
``OVERRIDE_CATEGORY`` and ``CAPTION_PROMPT`` (microsoft/GLIP, MIT licence; reference §9) are
supported as ``category_overrides`` and ``caption_prompt``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

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

__all__ = ["load_coco_grounding_json", "register_coco_grounding", "require_file"]

logger = logging.getLogger(__name__)

CategoryOverrides = Union[Mapping[int, str], Sequence[Mapping[str, Any]]]
CaptionPrompt = Union[Sequence[Mapping[str, str]], Mapping[int, Mapping[str, str]]]


def require_file(path: str, dataset_name: Optional[str], what: str = "annotation file") -> str:
    """Return ``path`` if it is a file, else raise an error naming it and the dataset."""
    if not PathManager.isfile(path):
        owner = f"Dataset '{dataset_name}'" if dataset_name else "Dataset"
        raise FileNotFoundError(
            f"{owner}: {what} '{path}' does not exist. Datasets live under "
            "$DETECTRON2_DATASETS (default 'datasets/'); datasets/README.md shows the layout."
        )
    return path


def _override_map(overrides: Optional[CategoryOverrides]) -> Dict[int, str]:
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return {int(k): str(v) for k, v in overrides.items()}
    return {int(c["id"]): str(c["name"]) for c in overrides}


def _caption_prompt_per_class(
    caption_prompt: Optional[CaptionPrompt], json_ids: List[int], where: str
) -> List[Mapping[str, str]]:
    if caption_prompt is None:
        return [{} for _ in json_ids]
    if isinstance(caption_prompt, Mapping):
        return [caption_prompt.get(i, {}) for i in json_ids]
    if len(caption_prompt) != len(json_ids):
        raise ValueError(
            f"{where}: caption_prompt has {len(caption_prompt)} entries for {len(json_ids)} "
            "categories (one per category, in category-id order)"
        )
    return list(caption_prompt)


def load_coco_grounding_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    category_overrides: Optional[CategoryOverrides] = None,
    caption_prompt: Optional[CaptionPrompt] = None,
    file_name_from_coco_url: bool = False,
) -> List[Dict[str, Any]]:
    """Load a COCO-format detection json as Detectron2 dicts for grounding training.

    Categories are sorted by json id; contiguous ids ``0..K-1`` follow that order. LVIS-style
    image entries without ``file_name`` use the last two parts of ``coco_url``.

    Invalid boxes follow :mod:`glip_d2.data.annotation_checks`: NaN/infinite, zero or negative
    size, or no area inside the image: dropped; partly outside the image: clipped. Both are
    counted and logged in one WARNING per dataset naming the first annotation and image ids.
    Segmentations are kept as ``load_coco_json`` keeps them and follow the same module:
    polygons with fewer than 3 points are dropped (an annotation left without any is
    box-only), an uncompressed RLE is compressed, a malformed one is an error.

    Args:
        json_file (str): the COCO-format annotation file.
        image_root (str): folder that image ``file_name`` entries are relative to.
        dataset_name (str, optional): if given, the metadata of that name gets
            ``thing_classes``, ``thing_dataset_id_to_contiguous_id``, ``prompt_names``,
            ``prompt_prefixes`` and ``prompt_suffixes``, and each record gets
            ``dataset_name``.
        category_overrides: new names by json id, as ``{id: name}`` or ODinW's
            ``OVERRIDE_CATEGORY`` list of ``{"id", "name"}``; they become ``thing_classes``.
        caption_prompt: ODinW's ``CAPTION_PROMPT``: one ``{"prefix", "name", "suffix"}`` per
            category in id order (or a ``{json_id: {...}}`` mapping); ``name`` replaces the
            category name in the prompt, prefix and suffix surround it.
        file_name_from_coco_url (bool): take image paths from the last two parts of
            ``coco_url`` (``"val2017/000000xxx.jpg"``), as the official LVIS loader does.

    Returns:
        list[dict]: records with ``file_name``, ``height``, ``width``, ``image_id``,
        ``dataset_name`` and ``annotations`` (``bbox`` in ``BoxMode.XYWH_ABS``, contiguous
        ``category_id``, ``iscrowd``, ``id``, and ``segmentation`` where the json has one: a
        list of polygons ``[[x1, y1, ...], ...]`` in image pixels or a compressed RLE dict).

    Raises:
        FileNotFoundError: the json file is missing (the message names it).
        ValueError: the json has no categories, or an annotation refers to an unknown
            category or image, or has a malformed box (not four numbers) or segmentation
            (the message names the json file, the annotation id and its image).
    """
    require_file(json_file, dataset_name)
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    where = f"{json_file}" if dataset_name is None else f"Dataset '{dataset_name}' ({json_file})"
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise ValueError(f"{where}: empty category list; a detection prompt needs categories")
    json_ids = [int(c["id"]) for c in categories]
    id_map = {cid: i for i, cid in enumerate(json_ids)}
    overrides = _override_map(category_overrides)
    unknown = sorted(set(overrides) - set(json_ids))
    if unknown:
        logger.warning(f"{where}: category overrides for ids {unknown} match no category")
    thing_classes = [overrides.get(c["id"], c["name"]) for c in categories]
    cp = _caption_prompt_per_class(caption_prompt, json_ids, where)
    prompt_names = [p.get("name", name) for p, name in zip(cp, thing_classes)]
    prompt_prefixes = [p.get("prefix", "") for p in cp]
    prompt_suffixes = [p.get("suffix", "") for p in cp]

    report = InvalidBoxReport(where)
    segm_report = SegmentationReport(where)
    records: Dict[Any, Dict[str, Any]] = {}
    for img in data.get("images", []):
        file_name = None if file_name_from_coco_url else img.get("file_name")
        if file_name is None and "coco_url" in img:
            file_name = os.path.join(*img["coco_url"].split("/")[-2:])
        if file_name is None:
            raise ValueError(f"{where}: image {img.get('id')} has no file_name")
        record = {
            "file_name": os.path.join(image_root, file_name),
            "image_id": img["id"],
            "annotations": [],
        }
        if "height" in img and "width" in img:
            record["height"], record["width"] = int(img["height"]), int(img["width"])
        if dataset_name is not None:
            record["dataset_name"] = dataset_name
        for key in ("not_exhaustive_category_ids", "neg_category_ids"):
            if key in img:
                record[key] = img[key]
        records[img["id"]] = record

    for ann in data.get("annotations", []):
        ann_id = ann.get("id")
        record = records.get(ann.get("image_id"))
        if record is None:
            raise ValueError(f"{where}: annotation {ann_id} refers to unknown image")
        if ann.get("category_id") not in id_map:
            raise ValueError(
                f"{where}: annotation {ann_id} has category_id {ann.get('category_id')}, "
                "which is not in the category list"
            )
        check = check_annotation_box(ann, record, report, where)
        if check.bbox is None:
            continue
        out = {
            "id": ann_id,
            "bbox": check.bbox,
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[ann["category_id"]],
            "iscrowd": int(ann.get("iscrowd", 0)),
        }
        if "score" in ann:  # a pseudo-label's teacher score (tools/pseudo_label.py)
            out["score"] = check_annotation_score(ann, where)
        segm = check_annotation_segmentation(ann, record, segm_report, where)
        if segm is not None:
            out["segmentation"] = segm
        record["annotations"].append(out)

    report_invalid_boxes(report, dataset_name)
    report_segmentations(segm_report, dataset_name)
    if dataset_name is not None:
        MetadataCatalog.get(dataset_name).set(
            thing_classes=thing_classes,
            thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(json_ids)},
            prompt_names=prompt_names,
            prompt_prefixes=prompt_prefixes,
            prompt_suffixes=prompt_suffixes,
        )
    return [records[k] for k in sorted(records)]


def register_coco_grounding(
    name: str,
    metadata: Dict[str, Any],
    json_file: str,
    image_root: str,
    *,
    category_overrides: Optional[CategoryOverrides] = None,
    caption_prompt: Optional[CaptionPrompt] = None,
    file_name_from_coco_url: bool = False,
) -> None:
    """Register a COCO-format detection json as a grounding dataset (like
    ``detectron2.data.datasets.register_coco_instances``).

    Nothing is read until the dataset is used; a missing file then raises an error naming it.

    Args:
        name (str): the dataset name, e.g. ``"my_set_train"``.
        metadata (dict): extra metadata; ``evaluator_type`` defaults to ``"coco"``.
        json_file (str): the COCO-format annotation file.
        image_root (str): the image folder.
        category_overrides, caption_prompt, file_name_from_coco_url: see
            :func:`load_coco_grounding_json`.
    """
    DatasetCatalog.register(
        name,
        lambda: load_coco_grounding_json(
            json_file,
            image_root,
            name,
            category_overrides=category_overrides,
            caption_prompt=caption_prompt,
            file_name_from_coco_url=file_name_from_coco_url,
        ),
    )
    meta = {"evaluator_type": "coco", **metadata}
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, **meta)
