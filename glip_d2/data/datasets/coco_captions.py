"""COCO captions in Karpathy's split (``dataset_coco.json``), the split GLIPv2 and most
captioning papers report: 5,000 val and 5,000 test images of COCO 2014, the rest for training.

Karpathy's file (from his ``neuraltalk2`` release, also in BLIP's and OSCAR's downloads) lists
every image with its COCO 2014 folder (``filepath``), file name, COCO id (``cocoid``), split
(``train``, ``restval``, ``val`` or ``test``) and its reference sentences (``raw`` text and
``tokens``). ``restval`` are the 30,504 val2014 images outside Karpathy's val/test; by the
common convention they are training images, so split ``"train"`` here is
``train`` + ``restval`` (113,287 images).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

__all__ = ["KARPATHY_SPLITS", "load_karpathy_captions", "register_coco_karpathy"]

logger = logging.getLogger(__name__)

#: Split name -> the ``split`` values of ``dataset_coco.json`` it contains.
KARPATHY_SPLITS: Dict[str, tuple] = {
    "train": ("train", "restval"),
    "restval": ("restval",),
    "val": ("val",),
    "test": ("test",),
}
_IMAGE_KEYS = ("filepath", "filename", "cocoid", "split", "sentences")


def load_karpathy_captions(
    json_file: str, image_root: str, split: str, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load one split of Karpathy's ``dataset_coco.json`` as caption records.

    Args:
        json_file (str): path of ``dataset_coco.json``.
        image_root (str): the folder holding COCO's ``train2014/`` and ``val2014/`` (each
            image's ``filepath`` is relative to it).
        split (str): ``"train"`` (Karpathy's ``train`` and ``restval``), ``"restval"``,
            ``"val"`` or ``"test"``.
        dataset_name (str, optional): the registered name, for the log.

    Returns:
        list[dict]: one record per image, in file order: ``{"file_name"``
        (``image_root/filepath/filename``), ``"image_id"`` (the COCO id ``cocoid``),
        ``"captions"`` (the ``raw`` reference sentences, list of str), ``"task": "caption"}``.

    Raises:
        ValueError: unknown ``split``; a file without ``images``, an image without one of
            ``filepath``, ``filename``, ``cocoid``, ``split``, ``sentences`` or a sentence
            without ``raw``; the message names the file (and the image).
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"Unknown Karpathy split '{split}' for {json_file}; expected one of "
            f"{list(KARPATHY_SPLITS)}"
        )
    with PathManager.open(json_file, "r") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{json_file} has no 'images' list: not Karpathy's dataset_coco.json")
    wanted = KARPATHY_SPLITS[split]
    records = []
    for index, image in enumerate(data["images"]):
        missing = [k for k in _IMAGE_KEYS if k not in image]
        if missing:
            raise ValueError(
                f"Image {index} ({image.get('filename', 'no filename')}) of {json_file} lacks "
                f"{missing}; expected Karpathy's keys {list(_IMAGE_KEYS)}"
            )
        if image["split"] not in ("train", "restval", "val", "test"):
            raise ValueError(
                f"Image {image['cocoid']} of {json_file} has unknown split {image['split']!r}"
            )
        if image["split"] not in wanted:
            continue
        if any("raw" not in s for s in image["sentences"]):
            raise ValueError(f"A sentence of image {image['cocoid']} of {json_file} has no 'raw'")
        records.append(
            {
                "file_name": os.path.join(image_root, image["filepath"], image["filename"]),
                "image_id": image["cocoid"],
                "captions": [s["raw"] for s in image["sentences"]],
                "task": "caption",
            }
        )
    logger.info(
        f"Loaded {len(records)} images of Karpathy split '{split}' from {json_file}"
        + (f" ({dataset_name})" if dataset_name else "")
    )
    return records


def register_coco_karpathy(name: str, json_file: str, image_root: str, split: str) -> None:
    """Register a Karpathy split of COCO captions (``evaluator_type`` ``"caption"``).

    Args:
        name (str): the dataset name, e.g. ``coco_karpathy_test``.
        json_file (str): path of ``dataset_coco.json`` (read when the set is first loaded).
        image_root (str): the folder holding ``train2014/`` and ``val2014/``.
        split (str): see :func:`load_karpathy_captions`.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"Unknown Karpathy split '{split}'; expected one of {list(KARPATHY_SPLITS)}"
        )
    DatasetCatalog.register(
        name, lambda: load_karpathy_captions(json_file, image_root, split, name)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="caption",
        task="caption",
        split=split,
    )
