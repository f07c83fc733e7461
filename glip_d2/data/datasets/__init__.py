"""Dataset loaders and registration: COCO-format detection sets and MDETR grounding sets used as
grounding data, the ODinW task tables, the synthetic ``glip_shapes`` set, and the builtin
registrations (:mod:`.builtin`, run on import).
"""

from . import builtin  # noqa: F401  (registers the builtin datasets)
from .coco_grounding import load_coco_grounding_json, register_coco_grounding
from .from_config import register_datasets_from_cfg
from .mdetr_grounding import load_mdetr_grounding_json, register_mdetr_grounding
from .odinw import ODINW_13_TASKS, ODINW_35_TASKS, OdinwTask, odinw_dataset_name
from .shapes import SHAPES_CLASSES, ensure_glip_shapes, generate_glip_shapes, register_glip_shapes

__all__ = [
    "ODINW_13_TASKS",
    "ODINW_35_TASKS",
    "OdinwTask",
    "SHAPES_CLASSES",
    "ensure_glip_shapes",
    "generate_glip_shapes",
    "load_coco_grounding_json",
    "load_mdetr_grounding_json",
    "odinw_dataset_name",
    "register_coco_grounding",
    "register_datasets_from_cfg",
    "register_glip_shapes",
    "register_mdetr_grounding",
]
