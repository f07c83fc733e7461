"""Fixtures of the data tests: small MDETR-format grounding sets and mappers."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def _collect(level: int, *, with_level: bool):
    """Messages logged at ``level`` and above under ``glip_d2.data`` inside the block."""
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            messages.append((record.levelno, message) if with_level else message)

    logger = logging.getLogger("glip_d2.data")
    handler, old_level = _Collect(level=level), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def data_log():
    """Messages logged (WARNING and above) under ``glip_d2.data`` during the test."""
    with _collect(logging.WARNING, with_level=False) as messages:
        yield messages


@pytest.fixture
def info_log():
    """``(level, message)`` logged (INFO and above) under ``glip_d2.data`` during the test."""
    with _collect(logging.INFO, with_level=True) as messages:
        yield messages
