"""Box checks of dataset annotations: what is dropped, what is repaired, and who is told.

One rule, used by the COCO-format and MDETR-format loaders, the training-set check and the
evaluation ground-truth check. A box is ``[x, y, w, h]`` (``XYWH_ABS``) on an image of
``W x H`` pixels:

* **dropped**: a coordinate is NaN or infinite; ``w <= 0`` or ``h <= 0``; or, when the image
  size is known, the box has no area inside the image (``x >= W``, ``y >= H``, ``x + w <= 0``
  or ``y + h <= 0``). An MDETR annotation is dropped with its ``tokens_positive`` spans.
* **repaired**: a box partly outside the image is clipped to ``[0, W] x [0, H]``.

The loaders count both and log them in **one WARNING per dataset** with the annotation and
image ids of the first :data:`MAX_EXAMPLES` (:class:`InvalidBoxReport`). A training set left
with no box to train on is an error (:func:`check_training_records`). Evaluation ground truth
read from a json (Detectron2's ``COCOEvaluator``, the LVIS evaluators) is not repaired: a box
that would be dropped is an error naming it (:func:`check_evaluation_ground_truth`); a box
partly outside its image is evaluated as annotated (COCO's own json has boxes a fraction of a
pixel past the border).

Segmentations (:func:`check_segmentation`, the loaders keep them as Detectron2's
``load_coco_json`` does) of the annotations whose box is kept:

* **box-only**: no ``segmentation`` key, ``None`` or an empty list (the mapper's
  ``MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS`` decides what such an annotation trains).
* **repaired**: a polygon with fewer than 3 points or a NaN or infinite coordinate is dropped
  from the annotation's polygon list (Detectron2 drops the short ones too); if none is left
  the annotation becomes box-only. Counted and logged in one WARNING per dataset
  (:class:`SegmentationReport`).
* **error** (a ``ValueError`` naming the json file, the annotation and its image): not a
  polygon list or an RLE dict; a polygon that is not a flat list of numbers or has an odd
  number of coordinates; an RLE without ``size`` and ``counts``, whose ``size`` is not the
  image's ``[height, width]``, or whose uncompressed ``counts`` do not sum to
  ``height * width``. Such a file is not in the format the loader reads, as a bbox that is
  not four numbers.

An uncompressed RLE (``counts`` a list, COCO's crowd annotations) is compressed, as
``load_coco_json`` does (``counts`` a str).
"""

from __future__ import annotations

import logging
import math
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np
from detectron2.structures import BoxMode

__all__ = [
    "CLIPPED",
    "MALFORMED",
    "MAX_EXAMPLES",
    "MIN_TRAINING_BOX_SIDE",
    "NON_FINITE",
    "NOT_POSITIVE",
    "OUTSIDE",
    "SEGM_DROPPED",
    "SEGM_REPAIRED",
    "BoxCheck",
    "InvalidBoxReport",
    "check_annotation_score",
    "SegmentationCheck",
    "SegmentationReport",
    "check_annotation_box",
    "check_annotation_segmentation",
    "check_box",
    "check_segmentation",
    "check_evaluation_ground_truth",
    "check_training_records",
    "find_invalid_boxes",
    "loading_report",
    "report_invalid_boxes",
    "report_segmentations",
]

logger = logging.getLogger(__name__)

#: Annotations named (with their image) in a report or an error; the rest are counted.
MAX_EXAMPLES = 5

#: The mapper drops a box whose side is at most 1 px after clipping: the official boxes are
#: inclusive pixels (``x2 = x + w - 1``), where such a box is empty.
MIN_TRAINING_BOX_SIDE = 1.0

# Problems named in reports and errors.
NON_FINITE = "NaN or infinite coordinate"
NOT_POSITIVE = "zero or negative width or height"
OUTSIDE = "outside the image"
MALFORMED = "malformed bbox"
CLIPPED = "partly outside the image (clipped)"
# Segmentation problems that are repaired (see the module docstring).
SEGM_DROPPED = "no polygon with 3 or more finite points (now box-only)"
SEGM_REPAIRED = "some polygons with fewer than 3 points or non-finite coordinates (dropped)"

Segmentation = Union[List[List[float]], Dict[str, Any]]


class BoxCheck(NamedTuple):
    """The outcome of :func:`check_box`.

    Attributes:
        bbox (list[float] or None): the box to use (``XYWH_ABS``, clipped if repaired); None if
            the annotation is dropped.
        problem (str or None): what was wrong; None for a valid box, used as given.
    """

    bbox: Optional[List[float]]
    problem: Optional[str]


def check_box(
    bbox: Sequence[float], height: Optional[float] = None, width: Optional[float] = None
) -> BoxCheck:
    """Apply the module's rule to one ``XYWH_ABS`` box.

    Args:
        bbox: ``[x, y, w, h]`` in pixels.
        height, width (float, optional): the image size; without it, nothing is clipped and no
            box counts as outside the image.

    Returns:
        BoxCheck: ``(box, None)`` for a valid box, ``(clipped box, problem)`` for a repaired
        one, ``(None, problem)`` for a dropped one.
    """
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return BoxCheck(None, MALFORMED)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return BoxCheck(None, NON_FINITE)
    if w <= 0 or h <= 0:
        return BoxCheck(None, NOT_POSITIVE)
    if height is None or width is None:
        return BoxCheck([x, y, w, h], None)
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return BoxCheck(None, OUTSIDE)
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        return BoxCheck([x1, y1, x2 - x1, y2 - y1], CLIPPED)
    return BoxCheck([x, y, w, h], None)


def check_annotation_score(ann: Mapping[str, Any], where: str) -> float:
    """The ``score`` of a pseudo-labelled annotation, a finite number in [0, 1].

    Raises:
        ValueError: anything else (names the dataset and the annotation id).
    """
    score = ann.get("score")
    ok = isinstance(score, (int, float)) and not isinstance(score, bool)
    if not ok or not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise ValueError(
            f"{where}: annotation {ann.get('id')} has score {score!r}; a pseudo-label score "
            "must be a number in [0, 1]"
        )
    return float(score)


def check_annotation_box(
    ann: Mapping[str, Any],
    record: Mapping[str, Any],
    report: InvalidBoxReport,
    where: str,
) -> BoxCheck:
    """A loader's check of one annotation: :func:`check_box` against the record's image size,
    with a problem counted in ``report``.

    Args:
        ann (dict): the json annotation (``id``, ``bbox`` as ``XYWH_ABS``).
        record (dict): its image's record (``image_id``, optional ``height`` and ``width``).
        report (InvalidBoxReport): the dataset's report.
        where (str): the dataset, for the error.

    Returns:
        BoxCheck: as :func:`check_box`.

    Raises:
        ValueError: the box is not four numbers (names the annotation).
    """
    bbox = ann.get("bbox")
    check = check_box(
        bbox if isinstance(bbox, (list, tuple)) else [], record.get("height"), record.get("width")
    )
    if check.problem == MALFORMED:
        raise ValueError(f"{where}: annotation {ann.get('id')} has a malformed bbox {bbox}")
    report.add(ann.get("id"), record.get("image_id"), check)
    return check


class InvalidBoxReport:
    """Dropped and repaired annotations of one dataset, counted, with the first few named.

    Args:
        where (str): the dataset, as messages name it (e.g. ``"Dataset 'x' (file.json)"``).
    """

    def __init__(self, where: str):
        self.where = where
        self.total = 0
        self.dropped: Dict[str, int] = {}
        self.repaired: Dict[str, int] = {}
        self.examples: List[Tuple[Any, Any, str]] = []  # (annotation id, image id, problem)

    def add(self, annotation_id: Any, image_id: Any, check: BoxCheck) -> None:
        """Count one checked annotation (its :func:`check_box` result)."""
        self.total += 1
        if check.problem is None:
            return
        counts = self.dropped if check.bbox is None else self.repaired
        counts[check.problem] = counts.get(check.problem, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((annotation_id, image_id, check.problem))

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def num_repaired(self) -> int:
        return sum(self.repaired.values())

    def _key(self):
        return (self.where, self.total, sorted(self.dropped.items()), sorted(self.repaired.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InvalidBoxReport) and self._key() == other._key()

    def summary(self) -> str:
        """``"3 of 40 annotations have invalid boxes: dropped 2 (NaN or infinite coordinate: 2),
        repaired 1 (...); first: annotation 7 of image 2 (...), ..."``; empty when nothing was
        dropped or repaired."""
        parts = []
        for verb, counts in (("dropped", self.dropped), ("repaired", self.repaired)):
            if counts:
                detail = ", ".join(f"{p}: {n}" for p, n in sorted(counts.items()))
                parts.append(f"{verb} {sum(counts.values())} ({detail})")
        if not parts:
            return ""
        first = ", ".join(f"annotation {a} of image {i} ({p})" for a, i, p in self.examples)
        bad = self.num_dropped + self.num_repaired
        return (
            f"{bad} of {self.total} annotations have invalid boxes: "
            + ", ".join(parts)
            + f"; first: {first}"
        )


#: The last report of each dataset loaded in this process, by dataset name (or json file).
_REPORTS: Dict[str, InvalidBoxReport] = {}


def report_invalid_boxes(report: InvalidBoxReport, dataset_name: Optional[str]) -> None:
    """Log a loader's report as one WARNING, unless the same report was logged before for the
    dataset (a dataset is loaded again for each evaluation); keep it for
    :func:`loading_report`."""
    key = dataset_name or report.where
    previous = _REPORTS.get(key)
    _REPORTS[key] = report
    if not report.summary() or previous == report:
        return
    logger.warning(
        f"{report.where}: {report.summary()}. Rule: a box with a NaN or infinite "
        "coordinate, zero or negative width or height, or no area inside its image is dropped; "
        "one partly outside its image is clipped to it."
    )


def loading_report(dataset_name: str) -> Optional[InvalidBoxReport]:
    """The report of the last load of ``dataset_name`` by a glip_d2 loader in this process
    (None if none loaded it)."""
    return _REPORTS.get(dataset_name)


def check_training_records(records: Sequence[Mapping[str, Any]], dataset_name: str) -> None:
    """Raise if a training set has no box the model can learn from.

    A box counts when it is not crowd, passes :func:`check_box` (possibly clipped) and its
    sides, clipped to the image, are larger than :data:`MIN_TRAINING_BOX_SIDE` (the mapper
    drops the others). Call it on the records before images without annotations are filtered
    out (with ``filter_empty=False``).

    Args:
        records: the dataset's Detectron2 dicts (``annotations`` with ``bbox``, ``bbox_mode``).
        dataset_name (str): the name in ``DATASETS.TRAIN``, for the message.

    Raises:
        ValueError: no box is left; names the dataset, how many annotations the loader dropped
            or the records hold as invalid, and the first of them.
    """
    report = InvalidBoxReport(f"Dataset '{dataset_name}'")
    trainable, total, crowd, small = 0, 0, 0, 0
    for record in records:
        height, width = record.get("height"), record.get("width")
        for ann in record.get("annotations", []):
            total += 1
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            bbox = ann.get("bbox")
            mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
            if bbox is not None and len(bbox) == 4 and mode != BoxMode.XYWH_ABS:
                bbox = BoxMode.convert(list(bbox), mode, BoxMode.XYWH_ABS)
            check = check_box(bbox if bbox is not None else [], height, width)
            report.add(ann.get("id"), record.get("image_id"), check)
            if check.bbox is None:
                continue
            if min(check.bbox[2:]) > MIN_TRAINING_BOX_SIDE:
                trainable += 1
            else:
                small += 1
    if trainable:
        return
    loaded = loading_report(dataset_name)
    dropped = loaded.num_dropped if loaded is not None else 0
    details = [f"{len(records)} images, {total} annotations in the records"]
    if crowd:
        details.append(f"{crowd} crowd (not trained on)")
    if report.num_dropped:
        details.append(report.summary())
    if small:
        details.append(f"{small} with a side of at most {MIN_TRAINING_BOX_SIDE:g} px")
    if dropped:
        details.append(f"when loading, {loaded.summary()}")
    raise ValueError(
        f"Training set '{dataset_name}' has no valid box to train on ({'; '.join(details)}). "
        "Fix its boxes (finite [x, y, w, h] with w, h > 0 inside the image) or remove it from "
        "DATASETS.TRAIN."
    )


def _image_sizes(images: Iterable[Mapping[str, Any]]) -> Dict[Any, Tuple[float, float]]:
    return {
        img["id"]: (float(img["height"]), float(img["width"]))
        for img in images
        if img.get("height") is not None and img.get("width") is not None
    }


def find_invalid_boxes(dataset: Mapping[str, Any]) -> List[Tuple[Any, Any, str]]:
    """Annotations of a COCO/LVIS-format dict whose box the module's rule would drop.

    Args:
        dataset (dict): the parsed json, with ``annotations`` (``bbox`` as ``XYWH_ABS``) and
            ``images`` (``height`` and ``width`` used when present).

    Returns:
        list: ``(annotation id, image id, problem)`` per invalid annotation, in file order.
    """
    anns = dataset.get("annotations") or []
    if not anns:
        return []
    sizes = _image_sizes(dataset.get("images") or [])
    try:
        boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(len(anns), 4)
    except (KeyError, TypeError, ValueError):
        boxes = None  # a malformed box: the slow path names it
    if boxes is not None:
        hw = np.asarray([sizes.get(a.get("image_id"), (np.inf, np.inf)) for a in anns])
        x, y, w, h = boxes.T
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)
            ok &= (x < hw[:, 1]) & (y < hw[:, 0]) & (x + w > 0) & (y + h > 0)
        suspects = np.flatnonzero(~ok).tolist()
    else:
        suspects = range(len(anns))
    out = []
    for i in suspects:
        ann = anns[i]
        size = sizes.get(ann.get("image_id"), (None, None))
        check = check_box(ann.get("bbox") or [], *size)
        if check.bbox is None:
            out.append((ann.get("id"), ann.get("image_id"), check.problem))
    return out


def check_evaluation_ground_truth(
    dataset: Mapping[str, Any], json_file: str, dataset_name: str
) -> None:
    """Raise if evaluation ground truth has a box the module's rule would drop.

    Evaluators that read the json themselves (pycocotools, the LVIS API) would otherwise score
    against NaN or empty boxes and report a number that means nothing.

    Args:
        dataset (dict): the parsed ground truth (COCO or LVIS format).
        json_file (str): where it was read from, for the message.
        dataset_name (str): the registered name, for the message.

    Raises:
        ValueError: names the dataset, the json file, the count and the first annotation and
            image ids with their problem.
    """
    bad = find_invalid_boxes(dataset)
    if not bad:
        return
    first = ", ".join(f"annotation {a} of image {i} ({p})" for a, i, p in bad[:MAX_EXAMPLES])
    raise ValueError(
        f"Evaluation ground truth of dataset '{dataset_name}' ({json_file}) has {len(bad)} "
        f"invalid boxes (of {len(dataset.get('annotations') or [])}); first: {first}. A box must "
        "be a finite [x, y, w, h] with w, h > 0 and some area inside its image; fix the json or "
        "remove these annotations."
    )


# ---------------------------------------------------------------------------- segmentations


class SegmentationCheck(NamedTuple):
    """The outcome of :func:`check_segmentation`.

    Attributes:
        segmentation (list or dict or None): what the record keeps: a list of polygons (each a
            flat ``[x1, y1, x2, y2, ...]`` list in image pixels), a compressed RLE dict
            (``size`` ``[height, width]``, ``counts`` str or bytes), or None (box-only).
        problem (str or None): :data:`SEGM_REPAIRED`, :data:`SEGM_DROPPED` or None.
    """

    segmentation: Optional[Segmentation]
    problem: Optional[str]


def _finite_polygon(polygon: Any, k: int) -> bool:
    """Whether polygon ``k`` is kept; raises ValueError when it is malformed."""
    if not isinstance(polygon, (list, tuple)):
        raise ValueError(
            f"polygon {k} is a {type(polygon).__name__}, not a flat list [x1, y1, x2, y2, ...] "
            "(segmentation must be a list of such polygons, or an RLE dict)"
        )
    try:
        # One pass in C (COCO has ~1M polygons): a non-number raises, a NaN or an infinity
        # makes the sum non-finite.
        total = float(sum(polygon))
    except TypeError:
        raise ValueError(
            f"polygon {k} is not a flat list of numbers [x1, y1, x2, y2, ...]"
        ) from None
    if len(polygon) % 2:
        raise ValueError(f"polygon {k} has an odd number of coordinates ({len(polygon)})")
    return len(polygon) >= 6 and math.isfinite(total)


def _check_rle(segm: Mapping[str, Any], height: Optional[int], width: Optional[int]):
    size, counts = segm.get("size"), segm.get("counts")
    if counts is None or not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE without 'counts' and a 'size' [height, width]: keys {sorted(segm)}")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"RLE size {size} is not two integers") from None
    if None not in (height, width) and (h, w) != (int(height), int(width)):
        raise ValueError(
            f"RLE size [height, width] = {[h, w]} differs from the image's {[height, width]}"
        )
    if isinstance(counts, (str, bytes)):
        return {"size": [h, w], "counts": counts}
    if not isinstance(counts, (list, tuple)):
        raise ValueError(f"RLE counts is a {type(counts).__name__}, not a str or a list")
    try:
        runs = [int(c) for c in counts]
    except (TypeError, ValueError):
        raise ValueError("uncompressed RLE counts are not all integers") from None
    if any(c < 0 for c in runs):
        raise ValueError("uncompressed RLE counts has a negative run length")
    if sum(runs) != h * w:
        raise ValueError(
            f"uncompressed RLE counts sum to {sum(runs)}, not height * width = {h * w}"
        )
    from pycocotools import mask as mask_util

    compressed = mask_util.frPyObjects({"size": [h, w], "counts": runs}, h, w)
    return {"size": [h, w], "counts": compressed["counts"].decode("ascii")}


def check_segmentation(
    segm: Any, height: Optional[int] = None, width: Optional[int] = None
) -> SegmentationCheck:
    """Apply the module's segmentation rule to one annotation's ``segmentation``.

    Args:
        segm: the json value (absent = None).
        height, width (int, optional): the image size; without it an RLE size is not checked.

    Returns:
        SegmentationCheck: the segmentation to keep (None: box-only) and the repair made.

    Raises:
        ValueError: a malformed segmentation; the message says what is wrong (without the
            annotation, which :func:`check_annotation_segmentation` adds).
    """
    if segm is None or (isinstance(segm, (list, tuple)) and len(segm) == 0):
        return SegmentationCheck(None, None)
    if isinstance(segm, Mapping):
        return SegmentationCheck(_check_rle(segm, height, width), None)
    if not isinstance(segm, (list, tuple)):
        raise ValueError(f"a {type(segm).__name__}, not a list of polygons or an RLE dict")
    if isinstance(segm[0], (int, float)):
        raise ValueError(
            "a flat list of numbers; a polygon segmentation is a list of polygons "
            "[[x1, y1, x2, y2, ...], ...]"
        )
    kept = [p for k, p in enumerate(segm) if _finite_polygon(p, k)]
    if not kept:
        return SegmentationCheck(None, SEGM_DROPPED)
    if len(kept) < len(segm):
        return SegmentationCheck(kept, SEGM_REPAIRED)
    return SegmentationCheck(segm if isinstance(segm, list) else list(segm), None)


class SegmentationReport:
    """Repaired segmentations of one dataset, counted, with the first few named.

    Args:
        where (str): the dataset, as messages name it.
    """

    def __init__(self, where: str):
        self.where = where
        self.counts: Dict[str, int] = {}
        self.examples: List[Tuple[Any, Any, str]] = []  # (annotation id, image id, problem)

    def add(self, annotation_id: Any, image_id: Any, problem: Optional[str]) -> None:
        """Count one repair (``problem`` None: nothing to count)."""
        if problem is None:
            return
        self.counts[problem] = self.counts.get(problem, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((annotation_id, image_id, problem))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentationReport) and (self.where, self.counts) == (
            other.where,
            other.counts,
        )

    def summary(self) -> str:
        """``"2 annotations have repaired segmentations (...: 1, ...: 1); first: annotation 7
        of image 2 (...)"``; empty when nothing was repaired."""
        if not self.counts:
            return ""
        detail = ", ".join(f"{p}: {n}" for p, n in sorted(self.counts.items()))
        first = ", ".join(f"annotation {a} of image {i} ({p})" for a, i, p in self.examples)
        total = sum(self.counts.values())
        return f"{total} annotations have repaired segmentations ({detail}); first: {first}"


_SEGM_REPORTS: Dict[str, SegmentationReport] = {}


def report_segmentations(report: SegmentationReport, dataset_name: Optional[str]) -> None:
    """Log a loader's segmentation report as one WARNING, unless the same report was logged
    before for the dataset (it is loaded again for each evaluation)."""
    key = dataset_name or report.where
    previous = _SEGM_REPORTS.get(key)
    _SEGM_REPORTS[key] = report
    if not report.summary() or previous == report:
        return
    logger.warning(
        f"{report.where}: {report.summary()}. Rule: polygons with fewer than 3 points or a NaN "
        "or infinite coordinate are dropped; an annotation left without polygons is box-only "
        "(see MODEL.ROI_MASK_HEAD.BOX_ONLY_ANNOTATIONS)."
    )


def check_annotation_segmentation(
    ann: Mapping[str, Any],
    record: Mapping[str, Any],
    report: SegmentationReport,
    where: str,
) -> Optional[Segmentation]:
    """A loader's check of one annotation's ``segmentation``: :func:`check_segmentation`
    against the record's image size, with a repair counted in ``report``.

    Args:
        ann (dict): the json annotation.
        record (dict): its image's record (``image_id``, ``file_name``, optional ``height``
            and ``width``).
        report (SegmentationReport): the dataset's report.
        where (str): the dataset and json file, for the error.

    Returns:
        list or dict or None: the segmentation the record keeps (None: box-only).

    Raises:
        ValueError: a malformed segmentation; names ``where``, the annotation id, the image id
            and file, and what is wrong.
    """
    try:
        check = check_segmentation(
            ann.get("segmentation"), record.get("height"), record.get("width")
        )
    except ValueError as e:
        raise ValueError(
            f"{where}: annotation {ann.get('id')} of image {record.get('image_id')} "
            f"('{record.get('file_name')}') has an invalid segmentation: {e}"
        ) from None
    report.add(ann.get("id"), record.get("image_id"), check.problem)
    return check.segmentation
