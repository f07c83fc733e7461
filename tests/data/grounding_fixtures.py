"""Helpers shared by the data tests: a small MDETR-format grounding set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# "a red cat next to two small dogs.": [CLS] a red cat next to two small dogs . [SEP]
MDETR_CAPTION = "a red cat next to two small dogs."
RED_CAT, SMALL_DOGS = [2, 9], [22, 32]


def save_image(path: Path, width: int, height: int, value=(128, 128, 128)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path)
    return path


def mdetr_data():
    """A two-image MDETR-style json (image 2 has a caption and no boxes)."""
    images = [
        {
            "id": 1,
            "file_name": "a.png",
            "height": 48,
            "width": 64,
            "caption": MDETR_CAPTION,
            "dataset_name": "flickr",
            "sentence_id": 0,
            "original_img_id": 100,
            "tokens_positive_eval": [[RED_CAT], [SMALL_DOGS]],
        },
        {
            "id": 2,
            "file_name": "b.png",
            "height": 56,
            "width": 40,
            "caption": "a photo of nothing in particular.",
            "dataset_name": "flickr",
            "sentence_id": 1,
            "original_img_id": 101,
            "tokens_positive_eval": [],
        },
    ]
    anns = [
        {"id": 11, "image_id": 1, "bbox": [4, 6, 20, 16], "tokens_positive": [RED_CAT]},
        {"id": 12, "image_id": 1, "bbox": [30, 10, 10, 10], "tokens_positive": [SMALL_DOGS]},
        {"id": 13, "image_id": 1, "bbox": [42, 20, 12, 20], "tokens_positive": [SMALL_DOGS]},
    ]
    for a in anns:
        a.update(category_id=1, iscrowd=0, area=a["bbox"][2] * a["bbox"][3])
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
