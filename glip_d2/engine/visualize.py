"""Draw predictions with Detectron2's Visualizer: one label (grounded phrase and score) per
object, its mask when the model predicts masks, small images drawn larger so that the text
stays readable."""

from __future__ import annotations

import logging
import os
from typing import List, Optional

import numpy as np
import torch
import torchvision
from detectron2.data.detection_utils import read_image
from detectron2.structures import Instances
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer
from PIL import Image

logger = logging.getLogger(__name__)

# GLIP scores every (box, phrase) pair, so one object often has a detection per phrase on
# (nearly) the same box. Pictures keep the best one; 0.6 is the per-phrase NMS IoU of the
# official configs (MODEL.ATSS.NMS_TH), here applied across phrases.
DRAW_IOU_THRESHOLD = 0.6
# Pictures of smaller images are drawn larger (Visualizer's ``scale``), so that labels are
# readable and do not cover the objects; the longer side is not scaled past MAX_PICTURE_SIDE.
MIN_PICTURE_SIDE = 600
MAX_PICTURE_SIDE = 2400


def select_labels_for_drawing(
    instances: Instances, iou_threshold: float = DRAW_IOU_THRESHOLD
) -> torch.Tensor:
    """The detections a picture draws: one label per object, the best-scoring one.

    Class-agnostic greedy NMS: detections are taken by decreasing score, and one whose box
    overlaps an already taken box with IoU above ``iou_threshold`` is not drawn, whatever
    its phrase. ``iou_threshold=1`` draws every detection. Only pictures use this rule;
    detections (evaluation, the demo's json) keep every box.

    Args:
        instances (Instances): N detections with ``pred_boxes`` (XYXY_ABS) and ``scores``.
        iou_threshold (float): in ``[0, 1]``.

    Returns:
        torch.Tensor: int64 indices into ``instances`` of the detections to draw, by
        decreasing score.
    """
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    boxes = instances.pred_boxes.tensor.float()
    return torchvision.ops.nms(boxes, instances.scores.float(), iou_threshold)


def picture_scale(
    height: int,
    width: int,
    min_side: int = MIN_PICTURE_SIDE,
    max_side: int = MAX_PICTURE_SIDE,
) -> float:
    """Visualizer ``scale`` for an image: enlarge it until the shorter side reaches
    ``min_side`` pixels (the longer side at most ``max_side``); never shrink (>= 1)."""
    return max(1.0, min(min_side / min(height, width), max_side / max(height, width)))


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


def draw_instances(
    image_rgb: np.ndarray,
    instances: Instances,
    score_thresh: float = 0.0,
    *,
    iou_threshold: float = DRAW_IOU_THRESHOLD,
    min_side: int = MIN_PICTURE_SIDE,
) -> np.ndarray:
    """A picture of ``instances`` above ``score_thresh``, one label per object.

    With ``pred_masks`` (a mask model's output) each drawn detection's mask is filled in its
    box's colour, as Detectron2's ``draw_instance_predictions`` draws Mask R-CNN output; the
    masks follow the same selection as the boxes (a detection that is not drawn has neither).

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB.
        instances (Instances): detections in the image's pixels (XYXY_ABS boxes), optionally
            with ``pred_masks`` (N, H, W) bool, pasted into the image.
        score_thresh (float): detections below it are not drawn.
        iou_threshold (float): see ``select_labels_for_drawing``.
        min_side (int): see ``picture_scale``.

    Returns:
        np.ndarray: (H * s, W * s, 3) uint8 RGB, ``s = picture_scale(H, W, min_side)``;
        each phrase has its own colour.

    Raises:
        ValueError: ``pred_masks`` are not (N, H, W) for the image's H and W.
    """
    instances = instances.to("cpu")
    instances = instances[instances.scores >= score_thresh]
    instances = instances[select_labels_for_drawing(instances, iou_threshold)]
    masks = None
    if instances.has("pred_masks"):
        masks = instances.pred_masks.numpy()
        if masks.shape[1:] != image_rgb.shape[:2]:
            raise ValueError(
                f"pred_masks are {masks.shape[1]}x{masks.shape[2]} (HxW) but the image is "
                f"{image_rgb.shape[0]}x{image_rgb.shape[1]}: masks must be pasted into the "
                "image the boxes refer to"
            )
    scale = picture_scale(image_rgb.shape[0], image_rgb.shape[1], min_side)
    vis = Visualizer(image_rgb, metadata=None, scale=scale)
    palette = colormap(rgb=True, maximum=1)
    colors = [palette[c % len(palette)] for c in instances.pred_classes.tolist()]
    out = vis.overlay_instances(
        boxes=instances.pred_boxes.tensor.numpy(),
        labels=instance_labels(instances),
        masks=masks,
        assigned_colors=colors,
    )
    return out.get_image()


def visualize_dataset_predictions(
    model: torch.nn.Module,
    data_loader,
    output_dir: str,
    num_images: int,
    score_thresh: float,
) -> List[str]:
    """Run ``model`` on the first ``num_images`` of a test loader and save pictures
    (``draw_instances``: one label per object, masks when the model predicts ``pred_masks``,
    small images enlarged).

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


__all__ = [
    "draw_instances",
    "instance_labels",
    "picture_scale",
    "select_labels_for_drawing",
    "visualize_dataset_predictions",
]
