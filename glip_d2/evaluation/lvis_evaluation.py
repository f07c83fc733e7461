"""LVIS box and mask AP: Detectron2's standard evaluator and GLIP's "Fixed AP" (reference §9).

* :class:`LVISStandardEvaluator` is Detectron2's ``LVISEvaluator`` (at most 300 detections per
  image). It keeps only the detections the LVIS API would keep, so chunked LVIS inference
  (31 prompts x 300 boxes per image) fits in memory.
* :class:`LVISFixedAPEvaluator` is the "Fixed AP" of Dave et al. (2021, "Evaluating
  large-vocabulary object detectors: the devil is in the details"), used by MDETR and GLIP
  (``LvisEvaluatorFixedAP`` in microsoft/GLIP, ``lvis_eval.py``): every detection of every
  prompt chunk is kept, grouped by category, and the top ``topk_per_category`` (10,000) per
  category over the whole dataset go to the LVIS API with no per-image cap.

Both evaluate ``tasks=("bbox", "segm")`` for a mask model (``pred_masks`` pasted into the
image, as Detectron2's mask head outputs); Fixed AP then ranks and keeps the detections once,
by score, and scores their boxes and masks. Mask AP needs a ``segmentation`` on every
ground-truth annotation (LVIS has them); one without is an error naming it.

Both need the ``lvis`` package (``lvis==0.5.3``, imported only when an evaluator is built).
Its ``eval.py`` still uses ``np.float``, which NumPy 1.24 removed; :func:`lvis_numpy_compat`
restores the alias only while the LVIS API runs.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections import OrderedDict
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from detectron2.evaluation import LVISEvaluator
from detectron2.evaluation.lvis_evaluation import _evaluate_predictions_on_lvis
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.annotation_checks import check_evaluation_ground_truth
from .referring_segmentation import annotations_without_masks

__all__ = [
    "LVISFixedAPEvaluator",
    "LVISStandardEvaluator",
    "lvis_numpy_compat",
    "topk_per_category",
]


@contextlib.contextmanager
def lvis_numpy_compat() -> Iterator[None]:
    """Provide ``np.float`` (an alias of ``float``) while the block runs.

    ``lvis`` 0.5.3 (the last release) calls ``astype(dtype=np.float)`` in
    ``LVISEval.accumulate``; NumPy >= 1.24 removed the alias. The alias is added only if
    missing and removed again on exit, so no other code sees it.
    """
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


def _require_lvis() -> None:
    try:
        import lvis  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "LVIS evaluation needs the 'lvis' package: pip install --no-deps lvis==0.5.3 "
            "(its declared opencv-python dependency would clash with opencv-python-headless)"
        ) from e


def _category_id_lut(metadata) -> Optional[np.ndarray]:
    """Contiguous class id -> LVIS json category id from ``thing_dataset_id_to_contiguous_id``,
    or ``None`` without that mapping (Detectron2's ``LVISEvaluator`` then uses ``id + 1``)."""
    mapping = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if not mapping:
        return None
    lut = np.full((max(mapping.values()) + 1,), -1, dtype=np.int64)
    for dataset_id, contiguous_id in mapping.items():
        lut[contiguous_id] = dataset_id
    return lut


def topk_per_category(categories: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest-scoring detections of each category.

    Ties keep the earlier detection, like the stable sort of the official code.

    Args:
        categories (np.ndarray): ``(N,)`` category id per detection.
        scores (np.ndarray): ``(N,)`` score per detection.
        k (int): how many to keep per category (``k >= 0``).

    Returns:
        np.ndarray: ``(M,)`` int64 indices into the inputs, in ascending order.
    """
    categories = np.asarray(categories)
    scores = np.asarray(scores)
    if len(categories) == 0:
        return np.zeros((0,), dtype=np.int64)
    # lexsort is stable: sort by category, then by descending score, then by arrival order.
    order = np.lexsort((-scores, categories))
    sorted_cats = categories[order]
    first = np.r_[True, sorted_cats[1:] != sorted_cats[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.arange(len(order)) - group_start
    return np.sort(order[rank < k]).astype(np.int64)


def _check_ground_truth(evaluator: LVISEvaluator, dataset_name: str, tasks) -> None:
    # The LVIS API scores the json as read: an invalid box is an error naming it (the rule of
    # glip_d2.data.annotation_checks), never a silently wrong AP; mask AP needs every mask.
    json_file = evaluator._metadata.json_file
    check_evaluation_ground_truth(evaluator._lvis_api.dataset, json_file, dataset_name)
    if "segm" in tasks:
        total, missing = annotations_without_masks(evaluator._lvis_api.dataset)
        if missing:
            first = ", ".join(f"annotation {a} of image {i}" for a, i in missing[:5])
            raise ValueError(
                f"LVIS mask AP of dataset '{dataset_name}' ({json_file}): {len(missing)} of "
                f"{total} ground-truth annotations have no segmentation (first: {first}); "
                "evaluate boxes only (tasks=('bbox',), MODEL.MASK_ON False) or add the masks"
            )


def _require_masks(instances, image_id) -> None:
    if len(instances) and not instances.has("pred_masks"):
        raise ValueError(
            f"LVIS mask AP: the predictions of image {image_id} have no pred_masks; a model "
            "without a mask head is evaluated with tasks=('bbox',) (MODEL.MASK_ON False)"
        )


class LVISStandardEvaluator(LVISEvaluator):
    """Detectron2's ``LVISEvaluator`` (``max_dets_per_image`` per image, 300 by default).

    Each image's detections are cut to the ``max_dets_per_image`` best in :meth:`process`, which
    is exactly what ``lvis.LVISResults`` would do later (stable sort by score, same order kept),
    so the metrics are unchanged while memory stays bounded. Results: ``{"bbox": {...}}``, and
    ``{"segm": {...}}`` (mask AP, same keys) with ``tasks=("bbox", "segm")``.
    """

    def __init__(self, dataset_name: str, tasks: Tuple[str, ...] = ("bbox",), *args, **kwargs):
        """Arguments as Detectron2's ``LVISEvaluator``; ``tasks`` defaults to box AP only.

        Raises:
            ValueError: the ground-truth json has an invalid box, or (mask AP) an annotation
                without segmentation; the message names it.
        """
        _require_lvis()
        super().__init__(dataset_name, tuple(tasks), *args, **kwargs)
        _check_ground_truth(self, dataset_name, self._tasks)

    def process(self, inputs, outputs):
        if "segm" in self._tasks:
            for input, output in zip(inputs, outputs):
                _require_masks(output["instances"], input["image_id"])
        max_dets = 300 if self._max_dets_per_image is None else self._max_dets_per_image
        if max_dets >= 0:
            outputs = [self._limit(output, max_dets) for output in outputs]
        super().process(inputs, outputs)

    @staticmethod
    def _limit(output: Dict, max_dets: int) -> Dict:
        instances = output.get("instances")
        if instances is None or len(instances) <= max_dets:
            return output
        scores = instances.scores.detach().cpu().numpy()
        keep = np.sort(np.argsort(-scores, kind="stable")[:max_dets])
        return {**output, "instances": instances.to("cpu")[torch.as_tensor(keep)]}

    def evaluate(self):
        with lvis_numpy_compat():
            return super().evaluate()


class LVISFixedAPEvaluator(LVISEvaluator):
    """LVIS "Fixed AP": the top ``topk_per_category`` detections per category over the dataset.

    No per-image cap is applied, here or in the LVIS API (``max_dets=-1``), so the model's
    output (all prompt chunks merged) should not be capped per image either. Detections are
    kept in compact arrays and pruned to the per-category top-k as they arrive, which bounds
    memory by ``num_categories x topk_per_category`` detections (with masks, each also keeps
    its compressed RLE).

    Boxes go to the LVIS API as ``XYWH_ABS`` with ``w = x2 - x1`` (Detectron2's convention, as
    the official ``convert_to_xywh``). With ``"segm"`` in ``tasks``, each detection's
    ``pred_masks`` entry is RLE-encoded in :meth:`process`; the same kept detections are scored
    as boxes and as masks (mask area, as Detectron2's mask AP).

    Results: ``{"bbox_fixed_ap": {"AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc",
    "APf"}}`` in percent, and ``{"segm_fixed_ap": {...}}`` (same keys) for ``"segm"``. The kept
    detections are written to ``<output_dir>/lvis_fixed_ap_results.json`` (LVIS result format).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        tasks: Tuple[str, ...] = ("bbox",),
        topk_per_category: int = 10000,
        min_buffer: int = 1_000_000,
    ):
        """
        Args:
            dataset_name (str): a registered LVIS-format dataset (metadata ``json_file``).
            distributed (bool): gather the detections of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write the kept detections.
            tasks (tuple[str]): ``("bbox",)`` or ``("bbox", "segm")``.
            topk_per_category (int): detections kept per category over the dataset.
            min_buffer (int): detections buffered before the first pruning; pruning then runs
                whenever the buffer is as large as the kept set (amortised ``O(N log N)``).

        Raises:
            ValueError: the ground-truth json has an invalid box, or (``"segm"``) an annotation
                without segmentation; the message names it.
        """
        _require_lvis()
        tasks = tuple(tasks)
        if not tasks or set(tasks) - {"bbox", "segm"}:
            raise ValueError(f"tasks must be ('bbox',) or ('bbox', 'segm'), got {tasks}")
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            max_dets_per_image=-1,
        )
        _check_ground_truth(self, dataset_name, tasks)
        if topk_per_category <= 0:
            raise ValueError(f"topk_per_category must be positive, got {topk_per_category}")
        self._with_masks = "segm" in tasks
        self._topk = int(topk_per_category)
        self._min_buffer = int(min_buffer)
        self._lut: Optional[np.ndarray] = None

    def reset(self):
        self._kept = self._empty()
        self._buffer: List[Dict[str, np.ndarray]] = []
        self._buffered = 0
        self._num_images = 0

    def _empty(self) -> Dict[str, np.ndarray]:
        empty = {
            "image_id": np.zeros((0,), dtype=np.int64),
            "category_id": np.zeros((0,), dtype=np.int64),
            "score": np.zeros((0,), dtype=np.float32),
            "bbox": np.zeros((0, 4), dtype=np.float32),
        }
        if self._with_masks:
            empty["segmentation"] = np.zeros((0,), dtype=object)
        return empty

    def _concat(self, parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        parts = [p for p in parts if len(p["score"])]
        if not parts:
            return self._empty()
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _prune(self, dets: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        keep = topk_per_category(dets["category_id"], dets["score"], self._topk)
        return {key: value[keep] for key, value in dets.items()}

    def _category_ids(self, classes: np.ndarray) -> np.ndarray:
        if self._lut is None:
            # Built on first use: the data loader sets the id mapping when it reads the dataset.
            self._lut = _category_id_lut(self._metadata)
            if self._lut is None:
                self._lut = np.zeros((0,), dtype=np.int64)
        if len(self._lut) == 0:
            return classes.astype(np.int64) + 1
        ids = self._lut[classes]
        if (ids < 0).any():
            raise ValueError(f"Classes {sorted(set(classes[ids < 0].tolist()))} have no LVIS id")
        return ids

    @staticmethod
    def _encode_masks(masks: torch.Tensor) -> np.ndarray:
        from pycocotools import mask as mask_util

        # (N, H, W) -> N compressed RLEs, counts as str (json-ready), as instances_to_coco_json.
        rles = mask_util.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))
        out = np.empty((len(rles),), dtype=object)
        for i, rle in enumerate(rles):
            rle["counts"] = rle["counts"].decode("utf-8")
            out[i] = rle
        return out

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            self._num_images += 1
            instances = output["instances"].to("cpu")
            if len(instances) == 0:
                continue
            boxes = instances.pred_boxes.tensor.numpy()
            dets = {
                "image_id": np.full((len(instances),), input["image_id"], dtype=np.int64),
                "category_id": self._category_ids(instances.pred_classes.numpy()),
                "score": instances.scores.numpy().astype(np.float32),
                "bbox": BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).astype(
                    np.float32
                ),
            }
            if self._with_masks:
                _require_masks(instances, input["image_id"])
                dets["segmentation"] = self._encode_masks(instances.pred_masks)
            self._buffer.append(dets)
            self._buffered += len(instances)
        if self._buffered >= max(self._min_buffer, len(self._kept["score"])):
            self._kept = self._prune(self._concat([self._kept, *self._buffer]))
            self._buffer, self._buffered = [], 0

    def _collect(self) -> Tuple[Dict[str, np.ndarray], int]:
        local = self._prune(self._concat([self._kept, *self._buffer]))
        if not self._distributed:
            return local, self._num_images
        comm.synchronize()
        gathered = comm.gather((local, self._num_images), dst=0)
        if not comm.is_main_process():
            return self._empty(), 0
        merged = self._concat([dets for dets, _ in gathered])
        return self._prune(merged), sum(n for _, n in gathered)

    def evaluate(self):
        dets, num_images = self._collect()
        if not comm.is_main_process() and self._distributed:
            return None
        if num_images == 0:
            self._logger.warning("[LVISFixedAPEvaluator] Did not receive valid predictions.")
            return {}
        cats, counts = np.unique(dets["category_id"], return_counts=True)
        short = int((counts < self._topk).sum()) + len(self._lvis_api.get_cat_ids()) - len(cats)
        self._logger.info(
            f"Fixed AP: {len(dets['score'])} detections of {num_images} images kept "
            f"(top {self._topk} per category, no per-image cap); {short} categories have fewer "
            f"than {self._topk} detections."
        )
        results = [
            {"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": s}
            for i, c, b, s in zip(
                dets["image_id"], dets["category_id"], dets["bbox"], dets["score"].tolist()
            )
        ]
        if self._with_masks:
            for result, rle in zip(results, dets["segmentation"]):
                result["segmentation"] = rle
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            path = os.path.join(self._output_dir, "lvis_fixed_ap_results.json")
            self._logger.info(f"Saving Fixed-AP detections to {path}")
            with PathManager.open(path, "w") as f:
                json.dump(results, f)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return {}
        self._results = OrderedDict()
        for task in self._tasks:
            self._logger.info(f"Evaluating {task} Fixed AP (max_dets=-1) ...")
            with lvis_numpy_compat():
                self._results[f"{task}_fixed_ap"] = _evaluate_predictions_on_lvis(
                    self._lvis_api,
                    results,
                    task,
                    max_dets_per_image=-1,
                    class_names=self._metadata.get("thing_classes"),
                )
        return copy.deepcopy(self._results)
