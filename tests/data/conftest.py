"""Fixtures of the data tests: small MDETR-format grounding sets and mappers."""

from __future__ import annotations

import json
import logging

import pytest
from grounding_fixtures import mdetr_data, save_image

from glip_d2.data import GroundingDatasetMapper


@pytest.fixture
def mdetr_files(tmp_path):
    """Writes :func:`mdetr_data` (or a modified copy) and its images; returns (json, root)."""

    def write(data=None):
        data = mdetr_data() if data is None else data
        root = tmp_path / "images"
        for img in data["images"]:
            save_image(root / img["file_name"], img["width"], img["height"])
        path = tmp_path / "mdetr.json"
        path.write_text(json.dumps(data))
        return str(path), str(root)

    return write


@pytest.fixture
def make_mapper(tiny_tokenizer):
    """Mapper factory with deterministic defaults (no augmentation, every category)."""

    def make(is_train=True, **kwargs):
        args = dict(
            augmentations=[],
            image_format="BGR",
            tokenizer=tiny_tokenizer,
            random_sample_neg=-1,
            shuffle=False,
        )
        args.update(kwargs)
        return GroundingDatasetMapper(is_train, **args)

    return make


@pytest.fixture
def data_log():
    """Messages logged (WARNING and above) under ``glip_d2.data`` during the test."""
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("glip_d2.data")
    handler, old_level = _Collect(level=logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
