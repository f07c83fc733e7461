"""Fixtures for the evaluator tests: synthetic datasets registered under unique names."""

from typing import Callable, Dict, List, Sequence

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances


@pytest.fixture
def register_records(dataset_name) -> Callable:
    """Register ``records`` (Detectron2 dicts) under ``dataset_name`` with ``metadata``."""

    def register(records: List[Dict], **metadata) -> str:
        DatasetCatalog.register(dataset_name, lambda: records)
        MetadataCatalog.get(dataset_name).set(**metadata)
        return dataset_name

    return register


def _make_instances(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    classes: Sequence[int],
    image_size=(1000, 1000),
) -> Instances:
    """Model-style output: ``XYXY_ABS`` boxes in original pixels."""
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


@pytest.fixture
def make_instances() -> Callable:
    return _make_instances


class _ReplayModel(torch.nn.Module):
    """Stands in for GLIP in ``inference_on_dataset``: returns fixed outputs per image id."""

    def __init__(self, outputs: Dict):
        super().__init__()
        self.outputs = outputs

    def forward(self, batched_inputs):
        return [{"instances": self.outputs[x["image_id"]]} for x in batched_inputs]


@pytest.fixture
def replay_model() -> Callable:
    """``replay_model({image_id: Instances})`` -> an ``nn.Module`` for ``inference_on_dataset``."""
    return _ReplayModel
