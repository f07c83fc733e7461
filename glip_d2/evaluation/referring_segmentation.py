"""Referring segmentation: PhraseCut (MDETR's protocol) and RefCOCO/+/g masks.

Both evaluators compare, per record (one image + one phrase or expression), one predicted
binary mask with the union of the record's ground-truth instance masks, at the original image
size. Ground truth is each annotation's ``segmentation`` (COCO polygons or RLE), rasterised with
pycocotools. Per record: intersection ``I``, union ``U`` and ``IoU = I / U``, which is 0 when
``I`` is 0 (so an empty prediction, and an empty union, score 0), as in PhraseCut's
``iou_polygons_masks`` (used by MDETR) and LAVT's ``evaluate``. Reported in percent:

* ``mIoU``: the mean of the per-record IoUs;
* ``cIoU``: cumulative IoU, ``sum(I) / sum(U)`` over the split;
* ``Pr@t`` for ``t`` in 0.5, 0.6, 0.7, 0.8, 0.9: the share of records with IoU above ``t``.

The protocols differ in the predicted mask and the precision comparison:

* :class:`PhraseCutEvaluator` (``evaluator_type`` ``"phrasecut"``): the union of the masks of
  every detection scoring **above** ``score_threshold`` (0.7, MDETR's ``PostProcessPhrasecut``);
  none above it is an empty prediction. ``Pr@t`` counts ``IoU > t`` (PhraseCut's evaluator).
* :class:`RefExpSegmentationEvaluator` (``evaluator_type`` ``"refcoco_seg"``): the mask of the
  top-scoring detection, whatever its phrase index (the rule of referring segmentation and of
  :class:`~glip_d2.evaluation.RefExpEvaluator`); ``Pr@t`` counts ``IoU >= t`` (LAVT).

Records are skipped, counted and logged (a WARNING naming the first ones) when there is no
ground truth to compare with: no annotation, or an annotation without ``segmentation`` (the
loaders keep a box-only annotation where the json has no valid polygon). A segmentation that
cannot be rasterised is an error naming the record and annotation; zero evaluated records is
an error, never NaN. Records without predictions are skipped with a WARNING. MDETR's RefCOCO
jsons carry no masks (their conversion leaves ``segmentation`` out), so a RefCOCO split may
name a COCO instances json in its metadata ``mask_json_file``: an annotation without
``segmentation`` then takes the mask of the COCO annotation it was made from (see
:class:`RefExpSegmentationEvaluator`).

Differences from MDETR's PhraseCut numbers: MDETR scores against the original PhraseCut
polygons (``refer_<split>.json``) rasterised with PIL; here the ground truth is the
``segmentation`` of MDETR's ``finetune_phrasecut_<split>.json`` rasterised with pycocotools
(MDETR's conversion keeps only the last polygon of an instance made of several).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode, Instances
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from ..data.datasets.coco_grounding import require_file
from .grounding_utils import gather_predictions, predictions_by_record

__all__ = [
    "PhraseCutEvaluator",
    "RefExpSegmentationEvaluator",
    "annotations_without_masks",
    "referring_mask_metrics",
    "segmentation_to_rle",
]

logger = logging.getLogger(__name__)

PRECISION_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
RLE = Dict[str, Any]


def _has_segmentation(ann: Mapping[str, Any]) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) if isinstance(seg, (list, dict)) else False


def annotations_without_masks(dataset: Mapping[str, Any]) -> Tuple[int, List[Tuple[Any, Any]]]:
    """Which annotations of a COCO/LVIS-format dict have no ``segmentation``.

    Args:
        dataset (dict): the parsed json (``annotations`` with ``id``, ``image_id``).

    Returns:
        tuple: the number of annotations, and ``(annotation id, image id)`` of each one whose
        ``segmentation`` is missing or empty, in file order.
    """
    anns = dataset.get("annotations") or []
    missing = [(a.get("id"), a.get("image_id")) for a in anns if not _has_segmentation(a)]
    return len(anns), missing


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """One annotation's COCO ``segmentation`` as one compressed RLE of ``(height, width)``.

    Args:
        segmentation: a list of polygons (flat ``[x1, y1, x2, y2, ...]`` lists in pixels), or an
            RLE dict (``size`` ``[height, width]``, ``counts`` compressed or a list). Polygons of
            fewer than three points are ignored, as Detectron2's COCO loader ignores them.
        height (int): image height in pixels.
        width (int): image width in pixels.

    Returns:
        dict: a compressed RLE (``size``, ``counts`` as bytes); the union of the polygons.

    Raises:
        ValueError: no polygon of three or more points, an odd number of coordinates, or an
            RLE of another size.
    """
    from pycocotools import mask as mask_util

    if isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", [])]
        if size != [int(height), int(width)]:
            raise ValueError(f"RLE of size {size}, but the image is {height}x{width}")
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            return mask_util.frPyObjects(segmentation, int(height), int(width))
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": size, "counts": counts}
    if not isinstance(segmentation, list):
        raise ValueError(f"segmentation must be polygons or an RLE dict, got {type(segmentation)}")
    polygons = [[float(v) for v in p] for p in segmentation]
    odd = [len(p) for p in polygons if len(p) % 2]
    if odd:
        raise ValueError(f"a polygon has an odd number of coordinates ({odd[0]})")
    polygons = [p for p in polygons if len(p) >= 6]
    if not polygons:
        raise ValueError("no polygon with three or more points")
    return mask_util.merge(mask_util.frPyObjects(polygons, int(height), int(width)))


def _encode_mask(mask: torch.Tensor) -> RLE:
    from pycocotools import mask as mask_util

    array = np.asfortranarray(mask.numpy().astype(np.uint8))
    return mask_util.encode(array)


def _intersection_union(gt: RLE, pred: Optional[RLE]) -> Tuple[int, int, int]:
    """Intersection, union and ground-truth pixels of one record (``pred`` None: empty)."""
    from pycocotools import mask as mask_util

    gt_area = int(mask_util.area(gt))
    if pred is None:
        return 0, gt_area, gt_area
    inter = int(mask_util.area(mask_util.merge([gt, pred], intersect=True)))
    return inter, gt_area + int(mask_util.area(pred)) - inter, gt_area


def referring_mask_metrics(
    intersections: Sequence[float],
    unions: Sequence[float],
    thresholds: Sequence[float] = PRECISION_THRESHOLDS,
    strict: bool = False,
) -> Dict[str, float]:
    """Mean IoU, cumulative IoU and precisions from per-record pixel counts.

    Args:
        intersections: ``(R,)`` intersection pixels per record.
        unions: ``(R,)`` union pixels per record.
        thresholds: IoU thresholds of the precisions.
        strict (bool): count ``IoU > t`` (PhraseCut) instead of ``IoU >= t`` (LAVT).

    Returns:
        dict: ``mIoU``, ``cIoU`` and ``Pr@<t>`` (``Pr@0.5``...), in percent. A record's IoU is 0
        when its intersection is 0; ``cIoU`` is 0 when every union is empty.

    Raises:
        ValueError: no record (a mean over zero records is undefined), or mismatched lengths.
    """
    inter = np.asarray(intersections, dtype=np.float64).reshape(-1)
    union = np.asarray(unions, dtype=np.float64).reshape(-1)
    if len(inter) != len(union):
        raise ValueError(f"{len(inter)} intersections but {len(union)} unions")
    if len(inter) == 0:
        raise ValueError("no record to evaluate; mean IoU over zero records is undefined")
    iou = np.where(inter > 0, inter / np.maximum(union, 1.0), 0.0)
    total = union.sum()
    metrics = {
        "mIoU": 100.0 * float(iou.mean()),
        "cIoU": 100.0 * float(inter.sum() / total) if total > 0 else 0.0,
    }
    for t in thresholds:
        hits = iou > t if strict else iou >= t
        metrics[f"Pr@{t:g}"] = 100.0 * float(hits.mean())
    return metrics


def _box_xywh(ann: Mapping[str, Any]) -> np.ndarray:
    box = BoxMode.convert(
        list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYWH_ABS
    )
    return np.asarray(box, dtype=np.float64)


class _CocoMaskLookup:
    """Masks of the COCO annotations that a referring-expression json was made from.

    An annotation is found among the annotations of the record's COCO image (record
    ``original_id``, else ``original_img_id``) by its box: MDETR's conversion copies the COCO
    box, so it is equal to within ``box_tolerance`` pixels.
    """

    def __init__(
        self, json_file: str, image_ids: set, dataset_name: str, box_tolerance: float = 0.01
    ):
        require_file(json_file, dataset_name, what="COCO instances json (mask_json_file)")
        with PathManager.open(json_file, "r") as f:
            data = json.load(f)
        self.json_file = json_file
        self.box_tolerance = box_tolerance
        self.by_image: Dict[Any, List[Mapping[str, Any]]] = {}
        for ann in data.get("annotations", []):
            if ann.get("image_id") in image_ids:
                self.by_image.setdefault(ann["image_id"], []).append(ann)
        self.ambiguous = 0

    def find(self, record: Mapping[str, Any], ann: Mapping[str, Any], where: str):
        coco_image = record.get("original_id", record.get("original_img_id"))
        box = _box_xywh(ann)
        matches = [
            c
            for c in self.by_image.get(coco_image, [])
            if np.abs(np.asarray(c["bbox"], dtype=np.float64) - box).max() <= self.box_tolerance
        ]
        if not matches:
            raise ValueError(
                f"{where}: no annotation of COCO image {coco_image} in {self.json_file} has the "
                f"box {box.tolist()}; the record cannot get a mask"
            )
        if len(matches) > 1:
            self.ambiguous += 1
        return min(matches, key=lambda c: c.get("id"))


class _ReferringMaskEvaluator(DatasetEvaluator):
    """Shared part of the referring segmentation evaluators: gather, ground truth, metrics."""

    _name = ""
    _result_key = ""
    _strict_precision = False

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        thresholds: Sequence[float] = PRECISION_THRESHOLDS,
    ):
        """
        Args:
            dataset_name (str): a registered split (records with ``annotations`` that have
                ``segmentation``, and ``height``/``width``).
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write the per-record IoUs.
            thresholds: IoU thresholds of the precisions.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._thresholds = tuple(float(t) for t in thresholds)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self):
        self._predictions = []

    def _predicted_mask(self, instances: Instances) -> Optional[torch.Tensor]:
        raise NotImplementedError

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            instances = output["instances"].to("cpu")
            if len(instances) and not instances.has("pred_masks"):
                raise ValueError(
                    f"[{self._name}] the predictions of image {input['image_id']} have no "
                    "pred_masks; referring segmentation needs a mask head (MODEL.MASK_ON True)"
                )
            if instances.has("pred_masks") and instances.pred_masks.dtype not in (
                torch.bool,
                torch.uint8,
            ):
                raise ValueError(
                    f"[{self._name}] pred_masks of image {input['image_id']} are "
                    f"{instances.pred_masks.dtype}; they must be binary masks pasted into the "
                    "image (bool, as Detectron2's mask head outputs)"
                )
            has_masks = instances.has("pred_masks")
            mask = self._predicted_mask(instances) if len(instances) else None
            self._predictions.append(
                {
                    "image_id": input["image_id"],
                    "image_size": [int(v) for v in instances.image_size],
                    "mask_size": list(instances.pred_masks.shape[1:]) if has_masks else None,
                    "rle": _encode_mask(mask) if mask is not None and mask.any() else None,
                }
            )

    def _mask_lookup(self, records: Sequence[Mapping[str, Any]]) -> Optional[_CocoMaskLookup]:
        return None

    def _ground_truth(
        self, record: Mapping[str, Any], size: Tuple[int, int], lookup: Optional[_CocoMaskLookup]
    ) -> Optional[RLE]:
        """The union of the record's instance masks; None if an instance has no mask."""
        from pycocotools import mask as mask_util

        rles = []
        for ann in record["annotations"]:
            where = (
                f"Dataset '{self._dataset_name}': record {record['image_id']} "
                f"(caption {record.get('caption', '')!r}), annotation {ann.get('id')}"
            )
            source = ann
            if not _has_segmentation(ann):
                if lookup is None:
                    return None
                source = lookup.find(record, ann, where)
                if not _has_segmentation(source):
                    return None
            try:
                rles.append(segmentation_to_rle(source["segmentation"], *size))
            except ValueError as e:
                raise ValueError(f"{where}: invalid segmentation ({e})") from e
        return rles[0] if len(rles) == 1 else mask_util.merge(rles)

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return None
        if len(predictions) == 0:
            logger.warning(f"[{self._name}] Did not receive valid predictions.")
            return {}
        by_image, records = predictions_by_record(predictions, self._dataset_name)
        lookup = self._mask_lookup(list(records.values()))

        rows: List[Dict[str, Any]] = []
        no_gt, no_mask, missing, empty_gt = [], [], 0, []
        for image_id, record in records.items():
            pred = by_image.get(image_id)
            if not record.get("annotations"):
                no_gt.append(image_id)
                continue
            if pred is None:
                missing += 1
                continue
            size = self._image_size(record, pred)
            gt = self._ground_truth(record, size, lookup)
            if gt is None:
                no_mask.append(image_id)
                continue
            inter, union, gt_area = _intersection_union(gt, pred["rle"])
            if gt_area == 0:
                empty_gt.append(image_id)
            rows.append(
                {
                    "image_id": image_id,
                    "intersection": inter,
                    "union": union,
                    "iou": inter / union if inter > 0 else 0.0,
                }
            )
        self._log_counts(len(records), no_gt, no_mask, missing, empty_gt, lookup)
        if not rows:
            raise ValueError(
                f"[{self._name}] dataset '{self._dataset_name}': no record to evaluate "
                f"({len(records)} records: {len(no_gt)} without a ground-truth instance, "
                f"{len(no_mask)} with an instance without segmentation, {missing} without "
                "predictions); mean IoU over zero records is undefined. Ground-truth masks come "
                "from the annotations' 'segmentation' or, for RefCOCO, the metadata "
                "'mask_json_file' (datasets/README.md)"
            )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, f"{self._result_key}_ious.json")
            logger.info(f"Saving per-record IoUs to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(rows, f)
        metrics = referring_mask_metrics(
            [r["intersection"] for r in rows],
            [r["union"] for r in rows],
            self._thresholds,
            strict=self._strict_precision,
        )
        logger.info(
            f"{self._name} '{self._dataset_name}' ({len(rows)} records):\n"
            + create_small_table(metrics)
        )
        return OrderedDict({self._result_key: metrics})

    def _image_size(self, record: Mapping[str, Any], pred: Mapping[str, Any]) -> Tuple[int, int]:
        # Ground truth is rasterised at the record's size (the original image); the masks must
        # have been pasted at that size.
        if "height" in record and "width" in record:
            size = (int(record["height"]), int(record["width"]))
        else:
            size = tuple(int(v) for v in pred["image_size"])
        if pred["mask_size"] is not None and tuple(pred["mask_size"]) != size:
            h, w = pred["mask_size"]
            raise ValueError(
                f"[{self._name}] predicted masks of record {record['image_id']} of dataset "
                f"'{self._dataset_name}' are {h}x{w}, but the image is {size[0]}x{size[1]}; "
                "masks must be pasted into the original image"
            )
        return size

    def _log_counts(self, total, no_gt, no_mask, missing, empty_gt, lookup) -> None:
        name = f"'{self._dataset_name}'"
        if no_gt:
            logger.warning(
                f"{len(no_gt)} of {total} records of {name} have no ground-truth instance and "
                f"are skipped (first: {no_gt[0]})"
            )
        if no_mask:
            logger.warning(
                f"{len(no_mask)} of {total} records of {name} have an instance without "
                f"segmentation and are skipped (first: {no_mask[:5]})"
            )
        if missing:
            logger.warning(f"{missing} records of {name} have no predictions and are skipped")
        if empty_gt:
            logger.warning(
                f"{len(empty_gt)} records of {name} have a ground-truth mask of zero pixels "
                f"(IoU 0; first: {empty_gt[0]})"
            )
        if lookup is not None and lookup.ambiguous:
            logger.warning(
                f"{lookup.ambiguous} annotations of {name} match several COCO annotations by "
                "box; the lowest COCO id was used"
            )


class PhraseCutEvaluator(_ReferringMaskEvaluator):
    """PhraseCut referring segmentation, MDETR's protocol (``evaluator_type`` ``"phrasecut"``).

    A record is one image and one phrase (MDETR's ``finetune_phrasecut_<split>.json``: one
    image entry per phrase); its ground truth is the union of its instance masks. The
    prediction is the union of the ``pred_masks`` of every detection with score above
    ``score_threshold``, whatever its phrase index (the prompt is the one phrase). The
    per-record IoUs are written to ``<output_dir>/phrasecut_ious.json``.

    Results: ``{"phrasecut": {"mIoU", "cIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8",
    "Pr@0.9"}}`` in percent; ``Pr@t`` counts ``IoU > t``. MDETR's paper reports M-IoU and
    Pr@0.5, 0.7, 0.9.
    """

    _name = "PhraseCutEvaluator"
    _result_key = "phrasecut"
    _strict_precision = True

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        score_threshold: float = 0.7,
        thresholds: Sequence[float] = PRECISION_THRESHOLDS,
    ):
        """
        Args:
            dataset_name (str): a registered PhraseCut split (records with ``annotations``
                that have ``segmentation``, and ``height``/``width``).
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write the per-record IoUs.
            score_threshold (float): detections scoring above it form the predicted mask
                (MDETR's ``PostProcessPhrasecut`` default 0.7).
            thresholds: IoU thresholds of the precisions.
        """
        super().__init__(dataset_name, distributed, output_dir, thresholds=thresholds)
        self._score_threshold = float(score_threshold)

    def _predicted_mask(self, instances: Instances) -> Optional[torch.Tensor]:
        keep = instances.scores > self._score_threshold
        if not bool(keep.any()):
            return None
        return instances.pred_masks[keep].bool().any(dim=0)


class RefExpSegmentationEvaluator(_ReferringMaskEvaluator):
    """Referring expression segmentation on RefCOCO/+/g (``evaluator_type`` ``"refcoco_seg"``).

    A record is one expression with its referred object; the prediction is the mask of the
    top-scoring detection (ties: the first), whatever its phrase index. No detection is an
    empty prediction (IoU 0). The per-record IoUs are written to
    ``<output_dir>/refexp_seg_ious.json``.

    Ground-truth masks: each annotation's ``segmentation``; for an annotation without one
    (MDETR's RefCOCO jsons have none), the mask of its COCO annotation in the dataset's
    metadata ``mask_json_file`` (COCO ``instances_train2014.json``): the annotation of the
    record's COCO image (``original_id``, else ``original_img_id``) with the same box (within
    0.01 pixels; MDETR's conversion copies the COCO box, and the loader keeps the image's
    ``original_id``). Several equal boxes: the lowest COCO id, counted in a warning. None: an
    error naming the record.

    Results: ``{"refexp_seg": {"mIoU", "cIoU", "Pr@0.5", ..., "Pr@0.9"}}`` in percent;
    ``Pr@t`` counts ``IoU >= t`` (LAVT). ``cIoU`` is the "overall IoU" of the RefCOCO
    segmentation literature.
    """

    _name = "RefExpSegmentationEvaluator"
    _result_key = "refexp_seg"
    _strict_precision = False

    def _predicted_mask(self, instances: Instances) -> Optional[torch.Tensor]:
        scores = instances.scores.detach().numpy()
        best = int(np.argsort(-scores, kind="stable")[0])
        return instances.pred_masks[best].bool()

    def _mask_lookup(self, records: Sequence[Mapping[str, Any]]) -> Optional[_CocoMaskLookup]:
        json_file = MetadataCatalog.get(self._dataset_name).get("mask_json_file", None)
        if not json_file:
            return None
        needed = [
            r for r in records if any(not _has_segmentation(a) for a in r.get("annotations", []))
        ]
        if not needed:
            return None
        image_ids = {r.get("original_id", r.get("original_img_id")) for r in needed}
        logger.info(f"Reading the ground-truth masks of {len(needed)} records from {json_file}")
        return _CocoMaskLookup(json_file, image_ids, self._dataset_name)
