"""Auto-labelling with a teacher GLIP: sharded, resumable, multi-process pseudo-labelling.

The teacher is any callable with :class:`glip_d2.engine.GLIPPredictor`'s call signature,
``teacher(image_bgr, prompt, phrase_spans=None) -> {"instances": Instances}``, whose
``Instances`` have ``pred_boxes`` (XYXY, original pixels), ``scores`` and ``pred_classes``
(the index of the phrase or prompt each box grounds).

Two modes:

* :func:`label_captions`: ground the phrases of one caption per record and write an
  MDETR-format grounding json (loadable by
  :func:`glip_d2.data.datasets.mdetr_grounding.register_mdetr_grounding`).
* :func:`label_ontology`: detect a ``{prompt: class_name}`` vocabulary in every image of a
  folder and write a COCO detection json (optionally YOLO txt labels).

Both split the work list into shards of ``shard_size`` items in a fixed order. With
Detectron2's ``comm`` world size W and rank R, rank R processes the shards ``i % W == R``.
Each finished shard is written atomically as ``<output_dir>/shards/shard_XXXXX.json``; a
restarted run skips the shards already written. Rank 0 then merges the shards in order and
numbers images and annotations 1, 2, ... so the output does not depend on W.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.utils import comm
from torchvision.ops import batched_nms
from tqdm import tqdm

__all__ = [
    "DEFAULT_LOG_EVERY",
    "DEFAULT_NMS_IOU",
    "DEFAULT_SCORE_THRESHOLD",
    "DEFAULT_SHARD_SIZE",
    "DEFAULT_TOPK",
    "IMAGE_EXTENSIONS",
    "LabelSettings",
    "filter_detections",
    "label_captions",
    "label_ontology",
    "list_images",
    "load_caption_records",
    "load_ontology",
    "write_yolo_labels",
]

logger = logging.getLogger(__name__)

#: Keep boxes scoring at least this. Pseudo-labels are training targets: a false positive
#: teaches the student a wrong box, a missed box only gives one less target, so the default
#: favours precision. 0.5 is the middle of GLIP's sigmoid score range.
DEFAULT_SCORE_THRESHOLD = 0.5
#: IoU above which a lower-scoring box of the same phrase / class is suppressed: Detectron2's
#: and GLIP's test-time NMS value; the teacher already ran its own NMS, this one also merges
#: boxes of prompts that map to the same class and of separate prompt chunks.
DEFAULT_NMS_IOU = 0.5
#: At most this many boxes per phrase (captions) or class (ontology) and image: a caption's
#: phrase rarely names more objects, and a cap keeps one noisy phrase from flooding an image.
DEFAULT_TOPK = 10
#: Images per shard: small enough that a killed run loses little work (a shard is written when
#: finished), large enough that the shard files stay few.
DEFAULT_SHARD_SIZE = 64
#: A progress line (images/s) every this many images per process.
DEFAULT_LOG_EVERY = 50

#: File extensions :func:`list_images` takes (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_SHARD_DIR = "shards"
_FORMAT_VERSION = 1

Teacher = Callable[..., Dict[str, Any]]


@dataclass(frozen=True)
class LabelSettings:
    """How boxes are kept and how the work is split; ``cfg.AUTOLABEL`` holds the same values.

    Attributes:
        score_threshold (float): keep boxes scoring at least this.
        nms_iou (float): NMS IoU within a phrase (captions) or class (ontology); ``>= 1``: none.
        topk (int): at most this many boxes per phrase or class and image; ``<= 0``: no limit.
        shard_size (int): items per shard (changing it starts a new run).
        log_every (int): a progress line every this many images per process; 0: none.
    """

    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    nms_iou: float = DEFAULT_NMS_IOU
    topk: int = DEFAULT_TOPK
    shard_size: int = DEFAULT_SHARD_SIZE
    log_every: int = DEFAULT_LOG_EVERY

    @classmethod
    def from_config(cls, cfg) -> LabelSettings:
        """The settings of ``cfg.AUTOLABEL`` (see :func:`glip_d2.config.add_glip_config`)."""
        a = cfg.AUTOLABEL
        return cls(a.SCORE_THRESHOLD, a.NMS_IOU, a.TOPK, a.SHARD_SIZE, a.LOG_EVERY)

    def filter_args(self) -> Dict[str, Any]:
        """The keyword arguments of :func:`filter_detections`: what decides the output."""
        return {"score_threshold": self.score_threshold, "nms_iou": self.nms_iou, "topk": self.topk}


# ---------------------------------------------------------------------------- inputs


def load_caption_records(path: str) -> List[Dict[str, Any]]:
    """Read caption records from a json list or a jsonl file (one json object per line).

    Each record is ``{"file_name": str, "caption": str, "phrase_spans": [[start, end], ...]}``
    (``phrase_spans`` optional: one ``[start, end)`` character span per phrase; a phrase may
    also be a list of spans, ``[[[s, e], [s2, e2]], ...]``).

    Returns:
        list[dict]: records with ``file_name``, ``caption`` and ``phrase_spans`` (per phrase, a
        list of ``[start, end]`` spans; None when absent), in file order.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: invalid json, or a record without a file name or caption, or with a span
            outside its caption; the message names the file and the record (index or line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Caption file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    raw: List[tuple] = []
    if path.endswith(".jsonl"):
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append((f"line {line_no}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not valid json: {e}") from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid json ({e}); use a .jsonl name for jsonl") from e
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a json list of records, got {type(data).__name__}")
        raw = [(f"record {i}", r) for i, r in enumerate(data)]
    return [_check_caption_record(rec, f"{path}: {where}") for where, rec in raw]


def _check_caption_record(rec: Any, where: str) -> Dict[str, Any]:
    if not isinstance(rec, dict):
        raise ValueError(f"{where} is a {type(rec).__name__}, expected an object")
    file_name, caption = rec.get("file_name"), rec.get("caption")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError(f"{where} has no file_name")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where} ({file_name}) has no caption")
    spans = rec.get("phrase_spans")
    phrases = None
    if spans is not None:
        if not isinstance(spans, list) or not spans:
            raise ValueError(f"{where} ({file_name}): phrase_spans must be a non-empty list")
        phrases = []
        for k, entry in enumerate(spans):
            # [s, e] is one phrase with one span; [[s, e], ...] a phrase with several.
            entry_spans = [entry] if entry and not isinstance(entry[0], list) else entry
            checked = []
            for span in entry_spans:
                ok = (
                    isinstance(span, list)
                    and len(span) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
                )
                if not ok or not 0 <= span[0] < span[1] <= len(caption):
                    raise ValueError(
                        f"{where} ({file_name}): phrase {k} span {span!r} is not a [start, end) "
                        f"character span inside the caption (length {len(caption)})"
                    )
                checked.append([span[0], span[1]])
            phrases.append(checked)
    return {"file_name": file_name, "caption": caption, "phrase_spans": phrases}


def load_ontology(path: str) -> Dict[str, str]:
    """Read a ``{prompt: class_name}`` json mapping (several prompts may share a class).

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: not a non-empty object of non-empty strings (names the file and entry).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Ontology file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid json: {e}") from e
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty json object {{prompt: class_name}}")
    for prompt, name in data.items():
        if not prompt.strip() or not isinstance(name, str) or not name.strip():
            raise ValueError(
                f"{path}: entry {prompt!r}: {name!r}: prompts and class names must be "
                "non-empty strings"
            )
    return dict(data)


def list_images(image_root: str) -> List[str]:
    """Image files under ``image_root`` (recursively), as sorted ``/``-separated relative paths.

    Raises:
        FileNotFoundError: ``image_root`` is not a folder.
    """
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Image folder not found: {image_root}")
    found = []
    for folder, dirs, files in os.walk(image_root):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = os.path.relpath(os.path.join(folder, name), image_root)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


# ---------------------------------------------------------------------------- filtering


def filter_detections(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_iou: float = DEFAULT_NMS_IOU,
    topk: int = DEFAULT_TOPK,
) -> List[int]:
    """Indices of the detections kept: ``score >= score_threshold``, NMS within each group
    (phrase or class) at ``nms_iou``, then at most ``topk`` per group by score.

    Args:
        boxes: (N, 4) XYXY. scores: (N,). groups: (N,) int group of each box.
        nms_iou: suppress boxes of a group overlapping a higher-scoring one above this IoU;
            ``>= 1`` disables NMS.
        topk: boxes per group; ``<= 0`` means no limit.

    Returns:
        list[int]: sorted by (group, descending score, index), a deterministic order.
    """
    boxes = boxes.detach().float().cpu().reshape(-1, 4)
    scores = scores.detach().float().cpu().reshape(-1)
    groups = groups.detach().long().cpu().reshape(-1)
    idx = torch.nonzero(scores >= score_threshold).flatten()
    if len(idx) and nms_iou < 1:
        keep = batched_nms(boxes[idx], scores[idx], groups[idx], nms_iou)
        idx = idx[keep]
    order = sorted(idx.tolist(), key=lambda i: (int(groups[i]), -float(scores[i]), i))
    out, per_group = [], {}
    for i in order:
        g = int(groups[i])
        if topk > 0 and per_group.get(g, 0) >= topk:
            continue
        per_group[g] = per_group.get(g, 0) + 1
        out.append(i)
    return out


def _detections(output: Dict[str, Any], groups_of_class: Optional[Sequence[int]], settings):
    inst = output["instances"]
    boxes = inst.pred_boxes.tensor if hasattr(inst.pred_boxes, "tensor") else inst.pred_boxes
    classes = inst.pred_classes.long().cpu()
    groups = classes if groups_of_class is None else torch.as_tensor(groups_of_class)[classes]
    keep = filter_detections(boxes, inst.scores, groups, **settings.filter_args())
    boxes, scores = boxes.detach().float().cpu(), inst.scores.detach().float().cpu()
    result = []
    for i in keep:
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        result.append(
            {
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[i]),
                "class": int(classes[i]),
                "group": int(groups[i]),
            }
        )
    return result


# ---------------------------------------------------------------------------- shards


def _atomic_write_json(path: str, data: Any) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _run_key(mode: str, items: List[Any], settings: Mapping[str, Any], shard_size: int) -> str:
    blob = json.dumps(
        {
            "v": _FORMAT_VERSION,
            "mode": mode,
            "items": items,
            "settings": dict(settings),
            "shard_size": shard_size,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _shard_path(output_dir: str, i: int) -> str:
    return os.path.join(output_dir, _SHARD_DIR, f"shard_{i:05d}.json")


def _read_shard(path: str, key: str) -> Optional[Dict[str, Any]]:
    """The shard at ``path``; None when not written yet."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            shard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"Shard {path} cannot be read ({e}); delete it to redo it") from e
    if shard.get("key") != key:
        raise ValueError(
            f"Shard {path} belongs to another run (other inputs, settings or shard size); "
            "use a new output folder or delete its shards/ folder"
        )
    return shard


def _process_shards(
    items: List[Any],
    process_item: Callable[[int, Any], Dict[str, Any]],
    output_dir: str,
    key: str,
    shard_size: int,
    log_every: int,
) -> None:
    """Process this rank's shards that are not written yet, each written when finished."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    world, rank = comm.get_world_size(), comm.get_rank()
    num_shards = (len(items) + shard_size - 1) // shard_size
    mine = [i for i in range(num_shards) if i % world == rank]
    todo = [i for i in mine if _read_shard(_shard_path(output_dir, i), key) is None]
    if len(todo) < len(mine):
        logger.info(f"Resuming: {len(mine) - len(todo)} of {len(mine)} shards already written")
    total = sum(len(items[i * shard_size : (i + 1) * shard_size]) for i in todo)
    done, start = 0, time.perf_counter()
    # A bar on the terminal (each rank its own line), log lines for log files.
    bar = tqdm(
        total=total,
        desc=f"pseudo-labelling [rank {rank}]",
        unit="img",
        position=comm.get_local_rank(),
        disable=total == 0 or not sys.stderr.isatty(),
        leave=comm.get_local_rank() == 0,
    )
    with bar:
        for i in todo:
            results = []
            for j in range(i * shard_size, min((i + 1) * shard_size, len(items))):
                results.append(process_item(j, items[j]))
                done += 1
                bar.update(1)
                if log_every > 0 and (done % log_every == 0 or done == total):
                    rate = done / max(time.perf_counter() - start, 1e-9)
                    logger.info(f"[rank {rank}] {done}/{total} images, {rate:.2f} images/s")
            _atomic_write_json(
                _shard_path(output_dir, i), {"key": key, "shard": i, "results": results}
            )


def _gather_results(output_dir: str, key: str, num_items: int, shard_size: int):
    num_shards = (num_items + shard_size - 1) // shard_size
    results = []
    for i in range(num_shards):
        path = _shard_path(output_dir, i)
        shard = _read_shard(path, key)
        if shard is None:
            raise RuntimeError(f"Shard {path} is missing after all processes finished")
        results.extend(shard["results"])
    return results


def _read_image(path: str) -> Optional[np.ndarray]:
    if not os.path.isfile(path):
        return None
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.size == 0:
        return None
    return image


def _run(mode, items, process_item, output_dir, key_settings, settings: LabelSettings, merge):
    """Process the shards (each rank its share), then merge them on rank 0.

    ``key_settings``: everything besides the items that decides the output; a run whose key
    differs from the shards' refuses to mix with them."""
    key = _run_key(mode, items, key_settings, settings.shard_size)
    os.makedirs(os.path.join(output_dir, _SHARD_DIR), exist_ok=True)
    _process_shards(items, process_item, output_dir, key, settings.shard_size, settings.log_every)
    comm.synchronize()
    out = None
    if comm.is_main_process():
        results = _gather_results(output_dir, key, len(items), settings.shard_size)
        out = merge(results)
    comm.synchronize()
    return out


def _skip(results: List[Dict[str, Any]], summary: Dict[str, Any]) -> None:
    unreadable = [r["file_name"] for r in results if r["status"] == "unreadable"]
    failed = [
        {"file_name": r["file_name"], "error": r["error"]}
        for r in results
        if r["status"] == "failed"
    ]
    summary.update(
        {
            "records": len(results),
            "labelled": sum(r["status"] == "ok" for r in results),
            "unreadable": len(unreadable),
            "unreadable_files": unreadable,
            "failed": len(failed),
            "failed_records": failed,
        }
    )


# ---------------------------------------------------------------------------- captions


def label_captions(
    teacher: Teacher,
    records: Sequence[Mapping[str, Any]],
    image_root: str,
    output_dir: str,
    settings: Optional[LabelSettings] = None,
    *,
    spacy_model: Optional[str] = None,
    output_name: str = "pseudo_labels.json",
) -> Optional[str]:
    """Ground each record's caption with the teacher; write an MDETR-format grounding json.

    Call it in every process of a (possibly) distributed run; all must pass the same records.

    Args:
        teacher: a :class:`~glip_d2.engine.GLIPPredictor` or any callable
            ``teacher(image_bgr, caption, phrase_spans)`` returning ``{"instances": ...}`` whose
            ``pred_classes`` index ``phrase_spans``.
        records: ``{"file_name", "caption", "phrase_spans" (optional)}`` dicts (see
            :func:`load_caption_records`); ``file_name`` is relative to ``image_root``.
        image_root (str): the image folder.
        output_dir (str): gets ``shards/``, ``output_name`` and ``summary.json``.
        settings (LabelSettings): box filter (per phrase) and sharding; default
            ``LabelSettings()``.
        spacy_model (str): for records without ``phrase_spans``, the spaCy pipeline that finds
            their noun phrases; default: the teacher's ``cfg.INPUT.PROMPT.SPACY_MODEL`` or
            ``en_core_web_sm``.
        output_name (str): the merged json's file name.

    Returns:
        str: on rank 0 the merged json's path (None on other ranks). Its images are one per
        labelled record (``id``, ``file_name``, ``height``, ``width``, ``caption``,
        ``tokens_positive_eval``: all its phrases); its annotations have ``bbox`` (XYWH),
        ``area``, ``iscrowd`` 0, ``category_id`` 1, ``tokens_positive`` (the phrase's
        character spans), ``phrase`` (their text joined by a space) and ``score``.
        A record whose image cannot be read is skipped with a warning naming the file;
        ``summary.json`` counts and lists those.
    """
    if spacy_model is None:
        cfg = getattr(teacher, "cfg", None)
        spacy_model = cfg.INPUT.PROMPT.SPACY_MODEL if cfg is not None else "en_core_web_sm"
    items = [_check_caption_record(dict(r), f"record {i}") for i, r in enumerate(records)]
    settings = settings or LabelSettings()

    def process(j: int, rec: Dict[str, Any]) -> Dict[str, Any]:
        base = {"index": j, "file_name": rec["file_name"], "caption": rec["caption"]}
        image = _read_image(os.path.join(image_root, rec["file_name"]))
        if image is None:
            logger.warning(f"Skipping record {j}: cannot read image {rec['file_name']}")
            return {**base, "status": "unreadable"}
        spans = rec["phrase_spans"]
        if spans is None:
            from ..engine.predictor import noun_phrase_spans

            spans = noun_phrase_spans(rec["caption"], spacy_model)
            if not spans:
                logger.warning(f"Skipping record {j} ({rec['file_name']}): no noun phrase found")
                return {**base, "status": "failed", "error": "no noun phrase in the caption"}
        try:
            output = teacher(image, rec["caption"], spans)
        except ValueError as e:  # e.g. a caption longer than MAX_QUERY_LEN
            logger.warning(f"Skipping record {j} ({rec['file_name']}): {e}")
            return {**base, "status": "failed", "error": str(e)}
        h, w = image.shape[:2]
        dets = _detections(output, None, settings)
        return {**base, "status": "ok", "height": h, "width": w, "spans": spans, "dets": dets}

    def image_fields(r):
        return {"caption": r["caption"], "tokens_positive_eval": r["spans"]}

    def box_fields(r, d):
        phrase_spans = r["spans"][d["class"]]
        phrase = " ".join(r["caption"][s:e] for s, e in phrase_spans)
        return {"category_id": 1, "tokens_positive": phrase_spans, "phrase": phrase}

    def merge(results):
        categories = [{"id": 1, "name": "object"}]
        data = _coco_dict(results, categories, image_fields, box_fields)
        return _write_outputs(output_dir, output_name, data, "captions", results, settings)

    key_settings = {**settings.filter_args(), "spacy_model": spacy_model}
    return _run("captions", items, process, output_dir, key_settings, settings, merge)


def _coco_dict(results, categories, image_fields, box_fields) -> Dict[str, Any]:
    """The labelled results as a COCO-style dict, images and boxes numbered 1, 2, ... in order;
    ``image_fields(r)`` and ``box_fields(r, det)`` add each mode's own fields."""
    images, annotations = [], []
    for r in results:
        if r["status"] != "ok":
            continue
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": r["file_name"],
                "height": r["height"],
                "width": r["width"],
                **image_fields(r),
            }
        )
        for d in r["dets"]:
            x, y, bw, bh = d["bbox"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "bbox": [x, y, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                    "score": d["score"],
                    **box_fields(r, d),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def _write_outputs(output_dir, output_name, data, mode, results, settings) -> str:
    """Write the merged json and ``summary.json`` (counts, settings, skipped records)."""
    summary = {"mode": mode, "annotations": len(data["annotations"]), **settings.filter_args()}
    _skip(results, summary)
    path = os.path.join(output_dir, output_name)
    _atomic_write_json(path, data)
    summary["output"] = output_name
    _atomic_write_json(os.path.join(output_dir, "summary.json"), summary)
    logger.info(
        f"Wrote {path}: {summary['labelled']} images labelled, {summary['annotations']} "
        f"boxes; {summary['unreadable']} unreadable, {summary['failed']} failed "
        "(see summary.json)"
    )
    if summary["unreadable"]:
        logger.warning(f"Unreadable images skipped: {summary['unreadable_files']}")
    return path


# ---------------------------------------------------------------------------- ontology


def label_ontology(
    teacher: Teacher,
    image_root: str,
    ontology: Mapping[str, str],
    output_dir: str,
    settings: Optional[LabelSettings] = None,
    *,
    images: Optional[Sequence[str]] = None,
    yolo_dir: Optional[str] = None,
    output_name: str = "pseudo_labels.json",
) -> Optional[str]:
    """Detect an ontology's prompts in every image; write a COCO detection json.

    Call it in every process of a (possibly) distributed run.

    Args:
        teacher: a :class:`~glip_d2.engine.GLIPPredictor` or any callable
            ``teacher(image_bgr, prompts)`` whose ``pred_classes`` index the prompt list.
        image_root (str): the image folder.
        ontology: ``{prompt: class_name}``; several prompts may map to one class. The
            prompts are given to the teacher as one list (it chunks large vocabularies).
        output_dir (str): gets ``shards/``, ``output_name`` and ``summary.json``.
        images: relative image paths; default :func:`list_images` of ``image_root``.
        settings (LabelSettings): box filter and sharding; NMS and top-k are per class
            (boxes of prompts of one class compete). Default ``LabelSettings()``.
        yolo_dir (str): also write YOLO labels there (see :func:`write_yolo_labels`).

    Returns:
        str: on rank 0 the json's path (None on other ranks): ``images`` (``id``,
        ``file_name``, ``height``, ``width``), ``annotations`` (``id``, ``image_id``,
        ``category_id``, ``bbox`` XYWH, ``area``, ``iscrowd`` 0, ``score``) and
        ``categories`` with ids 1..K in sorted class-name order.
    """
    prompts = list(ontology)
    if not prompts:
        raise ValueError("The ontology is empty: give at least one {prompt: class_name}")
    classes = sorted(set(ontology.values()))
    class_of_prompt = [classes.index(ontology[p]) for p in prompts]
    items = list(images) if images is not None else list_images(image_root)
    settings = settings or LabelSettings()
    key_settings = {**settings.filter_args(), "ontology": [[p, ontology[p]] for p in prompts]}

    def process(j: int, file_name: str) -> Dict[str, Any]:
        image = _read_image(os.path.join(image_root, file_name))
        if image is None:
            logger.warning(f"Skipping image {j}: cannot read {file_name}")
            return {"index": j, "file_name": file_name, "status": "unreadable"}
        output = teacher(image, prompts)
        h, w = image.shape[:2]
        dets = _detections(output, class_of_prompt, settings)
        return {
            "index": j,
            "file_name": file_name,
            "status": "ok",
            "height": h,
            "width": w,
            "dets": dets,
        }

    def merge(results):
        categories = [{"id": k + 1, "name": n} for k, n in enumerate(classes)]
        data = _coco_dict(
            results, categories, lambda r: {}, lambda r, d: {"category_id": d["group"] + 1}
        )
        path = _write_outputs(output_dir, output_name, data, "ontology", results, settings)
        if yolo_dir is not None:
            write_yolo_labels(data, yolo_dir)
        return path

    return _run("ontology", items, process, output_dir, key_settings, settings, merge)


def write_yolo_labels(coco: Mapping[str, Any], yolo_dir: str) -> None:
    """Write YOLO txt labels of a COCO detection dict: one ``<image path>.txt`` per image
    (its extension replaced; an image without boxes gets an empty file), lines
    ``class cx cy w h`` normalised by the image size, ``class`` = ``category_id - 1``
    (categories must have ids 1..K); plus ``classes.txt``, one class name per line."""
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    if [c["id"] for c in cats] != list(range(1, len(cats) + 1)):
        raise ValueError("YOLO labels need category ids 1..K")
    lines: Dict[int, List[str]] = {img["id"]: [] for img in coco["images"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    for ann in coco["annotations"]:
        w, h = sizes[ann["image_id"]]
        x, y, bw, bh = ann["bbox"]
        vals = [(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h]
        lines[ann["image_id"]].append(
            f"{ann['category_id'] - 1} " + " ".join(f"{v:.6f}" for v in vals)
        )
    os.makedirs(yolo_dir, exist_ok=True)
    for img in coco["images"]:
        path = os.path.join(yolo_dir, os.path.splitext(img["file_name"])[0] + ".txt")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines[img["id"]]))
    with open(os.path.join(yolo_dir, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(c["name"] + "\n" for c in cats))
