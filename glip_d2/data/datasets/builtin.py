"""Builtin grounding datasets, registered under ``$DETECTRON2_DATASETS`` (default ``datasets``).

Names are ``<source>_<version>_<split>``; detection sets used as grounding data carry
``grounding`` in the source (``coco_grounding_2017_val``) so that Detectron2's own builtin
names (``coco_2017_val``, ``lvis_v1_val``) keep working. Registering reads no file; a missing
file is reported, with its path, when the dataset is first loaded. ``datasets/README.md``
shows the expected folder tree.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.data.datasets.lvis import get_lvis_instances_meta

from .coco_captions import register_coco_karpathy
from .coco_grounding import register_coco_grounding
from .mdetr_grounding import register_mdetr_grounding
from .odinw import ODINW_13_TASKS, ODINW_35_TASKS, odinw_dataset_name
from .shapes import register_glip_shapes
from .shapes_vl import register_glip_shapes_vl
from .vqa import register_vqa

__all__ = ["register_all_glip_datasets"]

# name -> (image folder, json file), relative to the datasets root.
_COCO: Dict[str, Tuple[str, str]] = {
    "coco_grounding_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_grounding_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}
# LVIS image paths come from ``coco_url`` ("val2017/000000xxx.jpg"), relative to coco/.
_LVIS: Dict[str, Tuple[str, str]] = {
    "lvis_grounding_v1_train": ("coco", "lvis/lvis_v1_train.json"),
    "lvis_grounding_v1_val": ("coco", "lvis/lvis_v1_val.json"),
    # GLIP's 5k-image minival (MDETR), file DATA.md puts in coco/annotations.
    "lvis_grounding_v1_minival": (
        "coco",
        "coco/annotations/lvis_v1_minival_inserted_image_name.json",
    ),
}
_OBJECTS365: Dict[str, Tuple[str, str]] = {
    "objects365_grounding_v2_train": (
        "objects365/train",
        "objects365/annotations/zhiyuan_objv2_train.json",
    ),
    "objects365_grounding_v2_val": (
        "objects365/val",
        "objects365/annotations/zhiyuan_objv2_val.json",
    ),
}
_FLICKR: Dict[str, Tuple[str, str]] = {
    f"flickr30k_separate_{split}": (
        f"flickr30k/flickr30k_images/{split}",
        f"mdetr_annotations/final_flickr_separateGT_{split}.json",
    )
    for split in ("train", "val", "test")
}
_REFCOCO: Dict[str, Tuple[str, str]] = {
    **{
        f"refcoco_unc_{s}": ("coco/train2014", f"mdetr_annotations/final_refcoco_{s}.json")
        for s in ("train", "val", "testA", "testB")
    },
    **{
        f"refcocoplus_unc_{s}": ("coco/train2014", f"mdetr_annotations/final_refcoco+_{s}.json")
        for s in ("train", "val", "testA", "testB")
    },
    **{
        f"refcocog_umd_{s}": ("coco/train2014", f"mdetr_annotations/final_refcocog_{s}.json")
        for s in ("train", "val", "test")
    },
}
# RefCOCO/+/g referring segmentation: the evaluation splits of _REFCOCO, same MDETR json and
# images. MDETR's jsons carry no masks (its conversion leaves "segmentation" out), so the
# evaluator takes each expression's mask from the COCO annotation it was made from.
_REFCOCO_SEG: Dict[str, Tuple[str, str]] = {
    name.replace("_unc_", "_seg_unc_").replace("_umd_", "_seg_umd_"): paths
    for name, paths in _REFCOCO.items()
    if not name.endswith("_train")
}
_REFCOCO_MASKS = "coco/annotations/instances_train2014.json"
# PhraseCut in MDETR's format (scripts/fine-tuning/phrasecut_coco_format.py): one image entry
# per phrase, its instances with box and polygon. Visual Genome images, "<vg id>.jpg". miniv is
# MDETR's validation subset.
_PHRASECUT: Dict[str, Tuple[str, str]] = {
    f"phrasecut_mdetr_{split}": (
        "gqa/images",
        f"mdetr_annotations/finetune_phrasecut_{split}.json",
    )
    for split in ("train", "val", "miniv", "test")
}
# GoldG "mixed" (GQA + VG referring data of MDETR, without COCO images): one folder per source.
_MIXED_JSON = "mdetr_annotations/final_mixed_train_no_coco.json"
_MIXED_ROOTS = {"coco": "coco/train2014", "vg": "gqa/images"}


# VQA v2 (visualqa.org): name -> (image folder, questions json, annotations json or None).
# test-dev questions are on the test2015 images; test splits have no annotations.
_VQA: Dict[str, Tuple[str, str, Optional[str]]] = {
    "vqa_v2_train": (
        "coco/train2014",
        "vqav2/v2_OpenEnded_mscoco_train2014_questions.json",
        "vqav2/v2_mscoco_train2014_annotations.json",
    ),
    "vqa_v2_val": (
        "coco/val2014",
        "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
        "vqav2/v2_mscoco_val2014_annotations.json",
    ),
    "vqa_v2_test-dev": (
        "coco/test2015",
        "vqav2/v2_OpenEnded_mscoco_test-dev2015_questions.json",
        None,
    ),
    "vqa_v2_test": ("coco/test2015", "vqav2/v2_OpenEnded_mscoco_test2015_questions.json", None),
}


# COCO captions in Karpathy's split (dataset_coco.json; "train" = Karpathy's train + restval).
_COCO_KARPATHY: Dict[str, str] = {f"coco_karpathy_{s}": s for s in ("train", "val", "test")}
_KARPATHY_JSON = "coco/annotations/dataset_coco.json"


def _coco_meta() -> Dict:
    meta = _get_builtin_metadata("coco")
    return {
        "thing_classes": meta["thing_classes"],
        "thing_dataset_id_to_contiguous_id": meta["thing_dataset_id_to_contiguous_id"],
        "thing_colors": meta["thing_colors"],
    }


def register_all_glip_datasets(root: str) -> None:
    """Register every builtin dataset of glip_d2 under the datasets root ``root``."""
    for name, (image_dir, json_file) in _COCO.items():
        register_coco_grounding(
            name, _coco_meta(), os.path.join(root, json_file), os.path.join(root, image_dir)
        )
    lvis_classes = get_lvis_instances_meta("lvis_v1")["thing_classes"]
    for name, (image_dir, json_file) in _LVIS.items():
        register_coco_grounding(
            name,
            {"evaluator_type": "lvis", "thing_classes": lvis_classes},
            os.path.join(root, json_file),
            os.path.join(root, image_dir),
            file_name_from_coco_url=True,
        )
    for name, (image_dir, json_file) in _OBJECTS365.items():
        register_coco_grounding(
            name, {}, os.path.join(root, json_file), os.path.join(root, image_dir)
        )
    for name, (image_dir, json_file) in _FLICKR.items():
        register_mdetr_grounding(
            name,
            {"evaluator_type": "flickr30k"},
            os.path.join(root, json_file),
            os.path.join(root, image_dir),
        )
    for name, (image_dir, json_file) in _REFCOCO.items():
        register_mdetr_grounding(
            name,
            {"evaluator_type": "refcoco"},
            os.path.join(root, json_file),
            os.path.join(root, image_dir),
        )
    for name, (image_dir, json_file) in _REFCOCO_SEG.items():
        register_mdetr_grounding(
            name,
            {
                "evaluator_type": "refcoco_seg",
                "mask_json_file": os.path.join(root, _REFCOCO_MASKS),
            },
            os.path.join(root, json_file),
            os.path.join(root, image_dir),
        )
    for name, (image_dir, json_file) in _PHRASECUT.items():
        register_mdetr_grounding(
            name,
            {"evaluator_type": "phrasecut"},
            os.path.join(root, json_file),
            os.path.join(root, image_dir),
        )
    register_mdetr_grounding(
        "goldg_mixed_train",
        {},
        os.path.join(root, _MIXED_JSON),
        {source: os.path.join(root, d) for source, d in _MIXED_ROOTS.items()},
    )
    for version, tasks in ((13, ODINW_13_TASKS), (35, ODINW_35_TASKS)):
        for task in tasks:
            for split, (image_dir, json_file) in task.splits.items():
                name = odinw_dataset_name(version, task.name, split)
                register_coco_grounding(
                    name,
                    {"evaluator_type": "odinw", "odinw_task": task.name},
                    os.path.join(root, json_file),
                    os.path.join(root, image_dir),
                    category_overrides={i + 1: c for i, c in enumerate(task.classes)},
                    caption_prompt=task.caption_prompt,
                )
                MetadataCatalog.get(name).set(thing_classes=list(task.classes))
    for name, (image_dir, question_file, annotation_file) in _VQA.items():
        register_vqa(
            name,
            os.path.join(root, question_file),
            os.path.join(root, annotation_file) if annotation_file else None,
            os.path.join(root, image_dir),
        )
    for name, split in _COCO_KARPATHY.items():
        register_coco_karpathy(
            name, os.path.join(root, _KARPATHY_JSON), os.path.join(root, "coco"), split
        )
    register_glip_shapes(os.path.join(root, "glip_shapes"))
    register_glip_shapes_vl(os.path.join(root, "glip_shapes"))


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_glip_datasets(_root)
