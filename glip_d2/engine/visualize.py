"""Draw predictions with Detectron2's Visualizer, labelled with the grounded phrase and score."""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

logger = logging.getLogger(__name__)


def instance_labels(instances: Instances, class_names: Optional[List[str]] = None) -> List[str]:
    """``"<phrase> <score>"`` per instance (the class name when there is no phrase)."""
    scores = instances.scores.tolist()
    if instances.has("pred_phrases"):
        names = list(instances.pred_phrases)
    elif class_names is not None:
        names = [class_names[c] for c in instances.pred_classes.tolist()]
    else:
        names = [str(c) for c in instances.pred_classes.tolist()]
    return [f"{n} {s:.2f}" for n, s in zip(names, scores)]


def draw_instances(image_rgb: np.ndarray, instances: Instances, score_thresh: float = 0.0):
    """An RGB uint8 picture of ``instances`` (original-image pixels) above ``score_thresh``."""
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_thresh]
    vis = Visualizer(image_rgb, metadata=None)
    out = vis.overlay_instances(
        boxes=instances.pred_boxes.tensor.numpy(), labels=instance_labels(instances)
    )
    return out.get_image()


def visualize_dataset_predictions(
    model: torch.nn.Module,
    data_loader,
    output_dir: str,
    num_images: int,
    score_thresh: float,
) -> List[str]:
    """Run ``model`` on the first ``num_images`` of a test loader and save pictures.

    Returns:
        list[str]: the written PNG paths.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in data_loader:
                for x, out in zip(inputs, model(inputs)):
                    image = read_image(x["file_name"], format="RGB")
                    picture = draw_instances(image, out["instances"], score_thresh)
                    stem = os.path.splitext(os.path.basename(x["file_name"]))[0]
                    path = os.path.join(output_dir, f"{stem}_{len(written):03d}.png")
                    Image.fromarray(picture).save(path)
                    written.append(path)
                if len(written) >= num_images:
                    return written
    finally:
        model.train(training)
    return written


__all__ = ["draw_instances", "instance_labels", "visualize_dataset_predictions"]
