"""The official (maskrcnn-benchmark) resize rule as a Detectron2 augmentation.

microsoft/GLIP (MIT licence) resizes with ``maskrcnn_benchmark/data/transforms/transforms.py``
``Resize.get_size`` (reference §11): the short side becomes ``size`` unless the long side would
then exceed ``max_size``, in which case ``size = round(max_size * short / long)``; the other
side is ``int(size * long / short)`` (truncated, where Detectron2's ``ResizeShortestEdge``
rounds). Resampling is PIL bilinear, as torchvision's ``F.resize`` on a PIL image.
"""

from __future__ import annotations

import sys
from typing import List, Sequence, Tuple, Union

import numpy as np
from detectron2.data.transforms import Augmentation, NoOpTransform, RandomFlip, ResizeTransform
from PIL import Image

__all__ = ["GLIPResize", "build_glip_augmentation", "glip_resize_shape"]


def glip_resize_shape(h: int, w: int, size: int, max_size: int = sys.maxsize) -> Tuple[int, int]:
    """The output size of the official resize.

    Args:
        h, w (int): input height and width in pixels.
        size (int): target length of the short side.
        max_size (int): cap on the long side (values <= 0 mean no cap).

    Returns:
        tuple[int, int]: ``(new_h, new_w)``.
    """
    if max_size is not None and max_size > 0:
        short, long = float(min(h, w)), float(max(h, w))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


class GLIPResize(Augmentation):
    """Resize the short side to a (sampled) length with the official rounding rule.

    A drop-in for ``detectron2.data.transforms.ResizeShortestEdge``: same arguments and
    sampling, but the output size follows :func:`glip_resize_shape`.
    """

    def __init__(
        self,
        short_edge_length: Union[int, Sequence[int]],
        max_size: int = sys.maxsize,
        sample_style: str = "choice",
        interp: int = Image.BILINEAR,
    ):
        """
        Args:
            short_edge_length (int or Sequence[int]): the short-side length, or the lengths
                to choose from (``"choice"``), or ``(min, max)`` of a range (``"range"``).
            max_size (int): maximum length of the long side.
            sample_style (str): ``"choice"`` or ``"range"``.
            interp (int): PIL resampling filter.
        """
        super().__init__()
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        short_edge_length = tuple(int(x) for x in short_edge_length)
        if sample_style == "range" and len(short_edge_length) != 2:
            raise ValueError(f"sample_style 'range' needs (min, max), got {short_edge_length}")
        self.is_range = sample_style == "range"
        self._init(locals())

    def get_transform(self, image: np.ndarray):
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        new_h, new_w = glip_resize_shape(h, w, int(size), self.max_size)
        return ResizeTransform(h, w, new_h, new_w, self.interp)


def build_glip_augmentation(cfg, is_train: bool) -> List[Augmentation]:
    """GLIP's augmentations from a config (reference §10-§11).

    Training: :class:`GLIPResize` over ``INPUT.MIN_SIZE_TRAIN`` (sampled as
    ``INPUT.MIN_SIZE_TRAIN_SAMPLING``) capped at ``INPUT.MAX_SIZE_TRAIN``, then
    ``RandomFlip`` as ``INPUT.RANDOM_FLIP`` (the caption is not edited on flip). Testing:
    :class:`GLIPResize` to ``INPUT.MIN_SIZE_TEST`` capped at ``INPUT.MAX_SIZE_TEST``.

    Args:
        cfg (CfgNode): the run's config.
        is_train (bool): training or test augmentations.

    Returns:
        list[Augmentation]
    """
    if not is_train:
        return [GLIPResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs: List[Augmentation] = [
        GLIPResize(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    return augs
