"""GLIPPredictor: detect any categories in an image, like Detectron2's DefaultPredictor."""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..data.prompts import build_tokenizer, chunk_categories
from ..data.transforms import GLIPResize
from ..utils.checkpoint import GLIPCheckpointer
from ..utils.paths import resolve_path


class GLIPPredictor:
    """End-to-end GLIP inference on single BGR images with a list of category names.

    Uses the official test pre-processing: the maskrcnn-benchmark resize rule
    (``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``, PIL bilinear), BGR x 255 input
    normalised with ``MODEL.PIXEL_MEAN/STD`` and zero padding to ``SIZE_DIVISIBILITY``; and the
    official query rules for category lists (reference §9): cleaned names joined with
    ``INPUT.PROMPT.SEPARATOR`` and no trailing separator. A vocabulary that does not fit in
    ``MAX_QUERY_LEN`` tokens (or ``INPUT.PROMPT.CHUNK_SIZE`` categories) is split into prompts;
    the backbone still runs once.

    Example::

        predictor = GLIPPredictor(cfg)
        out = predictor(cv2.imread("street.jpg"), ["person", "bicycle", "stop sign"])
        out["instances"].pred_phrases  # the category each box grounds
    """

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg (CfgNode): a glip_d2 config; ``MODEL.WEIGHTS`` (an official GLIP ``.pth`` or a
                glip_d2 checkpoint) is loaded if set.
        """
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            GLIPCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.tokenizer = build_tokenizer(resolve_path(cfg.INPUT.PROMPT.TOKENIZER))
        self.resize = GLIPResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.max_query_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
        self.separator = cfg.INPUT.PROMPT.SEPARATOR
        self.chunk_size = cfg.INPUT.PROMPT.CHUNK_SIZE

    def encode_categories(self, categories: Sequence[str]) -> List[Dict]:
        """The prompt chunks (model prompt fields) of a category list.

        Args:
            categories: K category names; ``pred_classes`` index this list.

        Returns:
            list[dict]: one dict per chunk (see ``GLIP``'s input format).
        """
        if isinstance(categories, str):
            raise TypeError(
                "GLIPPredictor takes a list of category names, e.g. ['person', 'dog'], "
                f"not a string: {categories!r}"
            )
        prompts = chunk_categories(
            list(categories),
            self.tokenizer,
            self.chunk_size,
            max_len=self.max_query_len,
            separator=self.separator,
        )
        return [p.encode(self.tokenizer, self.max_query_len) for p in prompts]

    def preprocess(self, image_bgr: np.ndarray) -> Dict:
        """Resize an HxWx3 uint8 BGR image into a model input dict (without prompt fields)."""
        if not (
            isinstance(image_bgr, np.ndarray) and image_bgr.ndim == 3 and image_bgr.shape[2] == 3
        ):
            shape = getattr(image_bgr, "shape", None)
            raise ValueError(f"Expected an HxWx3 uint8 BGR array, got shape {shape}")
        image = image_bgr if self.input_format == "BGR" else image_bgr[:, :, ::-1]
        height, width = image.shape[:2]
        image = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, image_bgr: np.ndarray, categories: Sequence[str]) -> Dict:
        """
        Args:
            image_bgr (np.ndarray): HxWx3 uint8, BGR (OpenCV order).
            categories (Sequence[str]): names to detect.

        Returns:
            dict: ``{"instances": Instances}`` in original-image pixels with ``pred_boxes``,
            ``scores``, ``pred_classes`` (index into ``categories``) and ``pred_phrases``.
        """
        chunks = self.encode_categories(categories)
        inputs = self.preprocess(image_bgr)
        if len(chunks) == 1:
            inputs.update(chunks[0])
        else:
            inputs["prompt_chunks"] = chunks
        with torch.no_grad():
            return self.model([inputs])[0]
