"""Dataset loaders and registration: COCO-format detection sets and MDETR grounding sets used as
grounding data, the ODinW task tables, the synthetic ``glip_shapes`` set, and the builtin
registrations (:mod:`.builtin`, run on import).
"""

from . import builtin  # noqa: F401  (registers the builtin datasets)
from .coco_captions import load_karpathy_captions, register_coco_karpathy
from .coco_grounding import load_coco_grounding_json, register_coco_grounding
from .from_config import register_datasets_from_cfg
from .mdetr_grounding import load_mdetr_grounding_json, register_mdetr_grounding
from .odinw import ODINW_13_TASKS, ODINW_35_TASKS, OdinwTask, odinw_dataset_name
from .shapes import SHAPES_CLASSES, ensure_glip_shapes, generate_glip_shapes, register_glip_shapes
from .shapes_vl import register_glip_shapes_vl
from .vqa import answer_targets, build_answer_vocab, load_vqa_json, register_vqa

__all__ = [
    "ODINW_13_TASKS",
    "ODINW_35_TASKS",
    "OdinwTask",
    "SHAPES_CLASSES",
    "answer_targets",
    "build_answer_vocab",
    "ensure_glip_shapes",
    "generate_glip_shapes",
    "load_coco_grounding_json",
    "load_karpathy_captions",
    "load_mdetr_grounding_json",
    "load_vqa_json",
    "odinw_dataset_name",
    "register_coco_grounding",
    "register_coco_karpathy",
    "register_datasets_from_cfg",
    "register_glip_shapes",
    "register_glip_shapes_vl",
    "register_mdetr_grounding",
    "register_vqa",
]
