"""Datasets named in the config: ``DATASETS.REGISTER``, registered by
:func:`register_datasets_from_cfg` (``train_net.py`` calls it in ``setup``, in every process).

Each entry names a COCO-format or MDETR-format json file and its image folder::

    DATASETS:
      REGISTER:
        - {NAME: my_train, FORMAT: coco, JSON_FILE: data/train.json, IMAGE_ROOT: data/images}
      TRAIN: ("my_train",)

or on the command line, as a Python literal (as Detectron2 reads every value there)::

    DATASETS.REGISTER "[{'NAME': 'my_train', 'FORMAT': 'coco', 'JSON_FILE': 'data/train.json',
                         'IMAGE_ROOT': 'data/images'}]"

Relative paths are relative to the working directory. Registering checks the entries and that
the files exist, and reads nothing else; the json is read when the dataset is first used.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Mapping, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager

from .coco_grounding import register_coco_grounding
from .mdetr_grounding import register_mdetr_grounding

__all__ = ["REGISTER_FORMATS", "register_datasets_from_cfg"]

logger = logging.getLogger(__name__)

#: ``FORMAT`` value -> registering function ``(name, metadata, json_file, image_root)``. "coco":
#: COCO detection json, prompts from the category names, ``evaluator_type`` "coco"; "mdetr":
#: MDETR grounding json (captions with ``tokens_positive`` spans), ``evaluator_type``
#: "grounding".
REGISTER_FORMATS: Dict[str, Callable[..., None]] = {
    "coco": register_coco_grounding,
    "mdetr": register_mdetr_grounding,
}
_KEYS = ("NAME", "FORMAT", "JSON_FILE", "IMAGE_ROOT")
# Metadata key holding the entry a dataset was registered from (makes registering idempotent).
_META_KEY = "registered_from_config"


def _check_entry(entry: Any, where: str) -> Dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a mapping with keys {', '.join(_KEYS)}, got {entry!r}")
    missing = [k for k in _KEYS if k not in entry]
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if missing or unknown:
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown key(s) {', '.join(unknown)}"] if unknown else []
        raise ValueError(f"{where}: {'; '.join(problems)} (the keys are {', '.join(_KEYS)})")
    name, fmt = entry["NAME"], entry["FORMAT"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: NAME must be a non-empty string, got {name!r}")
    where = f"{where} (NAME '{name}')"
    if fmt not in REGISTER_FORMATS:
        raise ValueError(
            f"{where}: unknown FORMAT {fmt!r}; known formats: {', '.join(REGISTER_FORMATS)}"
        )
    json_file = entry["JSON_FILE"]
    if not isinstance(json_file, str) or not PathManager.isfile(json_file):
        raise FileNotFoundError(f"{where}: JSON_FILE '{json_file}' is not a file")
    image_root = entry["IMAGE_ROOT"]
    # MDETR's mixed set has one folder per image data_source.
    folders = image_root if fmt == "mdetr" and isinstance(image_root, Mapping) else {"": image_root}
    for source, folder in folders.items():
        if not isinstance(folder, str) or not PathManager.isdir(folder):
            field = f"IMAGE_ROOT['{source}']" if source else "IMAGE_ROOT"
            raise FileNotFoundError(f"{where}: {field} '{folder}' is not a folder")
    return {
        "NAME": name,
        "FORMAT": fmt,
        "JSON_FILE": json_file,
        "IMAGE_ROOT": dict(image_root) if isinstance(image_root, Mapping) else image_root,
    }


def register_datasets_from_cfg(cfg: CfgNode) -> List[str]:
    """Register the datasets listed in ``cfg.DATASETS.REGISTER``.

    Idempotent: an entry whose name was already registered from the same entry is skipped, so
    calling this twice in one process is harmless.

    Args:
        cfg (CfgNode): a config with ``DATASETS.REGISTER``, a list of mappings with keys
            ``NAME`` (the dataset name for ``DATASETS.TRAIN`` / ``TEST``), ``FORMAT`` (a key of
            :data:`REGISTER_FORMATS`), ``JSON_FILE`` and ``IMAGE_ROOT`` (the folder that the
            json's ``file_name`` entries are relative to; for "mdetr" also a mapping of
            ``data_source`` -> folder).

    Returns:
        list[str]: the names of the entries, in order.

    Raises:
        ValueError: an entry is not a mapping, misses or misspells a key, has an empty NAME or
            an unknown FORMAT; two entries share a NAME; or NAME is already a registered
            dataset (a builtin one, one registered in Python, or one from a different entry).
        FileNotFoundError: JSON_FILE is not a file or IMAGE_ROOT not a folder.
    """
    entries = cfg.DATASETS.REGISTER
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ValueError(
            f"DATASETS.REGISTER must be a list of mappings with keys {', '.join(_KEYS)}, "
            f"got {entries!r}"
        )
    checked = [_check_entry(e, f"DATASETS.REGISTER[{i}]") for i, e in enumerate(entries)]
    first: Dict[str, int] = {}
    for i, entry in enumerate(checked):
        j = first.setdefault(entry["NAME"], i)
        if j != i:
            raise ValueError(f"DATASETS.REGISTER[{j}] and [{i}] both have NAME '{entry['NAME']}'")
    for i, entry in enumerate(checked):
        name = entry["NAME"]
        if name in DatasetCatalog.list():
            previous = MetadataCatalog.get(name).get(_META_KEY)
            if previous == entry:
                continue
            if previous is None:
                raise ValueError(
                    f"DATASETS.REGISTER[{i}]: dataset '{name}' is already registered (a builtin "
                    "dataset or one registered in Python); choose another NAME"
                )
            raise ValueError(
                f"DATASETS.REGISTER[{i}]: dataset '{name}' is already registered from a "
                f"different entry {previous}; choose another NAME"
            )
        REGISTER_FORMATS[entry["FORMAT"]](name, {}, entry["JSON_FILE"], entry["IMAGE_ROOT"])
        MetadataCatalog.get(name).set(**{_META_KEY: entry})
        logger.info(
            f"Registered dataset '{name}' ({entry['FORMAT']}): {entry['JSON_FILE']}, "
            f"images in {entry['IMAGE_ROOT']}"
        )
    return [e["NAME"] for e in checked]
