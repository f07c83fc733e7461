"""The resumable training loader: Detectron2's batches, started at any batch without mapping the
skipped ones, with the random states an uninterrupted run would have."""

import random

import numpy as np
import pytest
import torch
from detectron2.data import build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.data.samplers import TrainingSampler
from PIL import Image

from glip_d2.data.train_loader import aspect_ratio_group_ids, build_resumable_train_loader
from glip_d2.utils.rng import get_rng_state, set_rng_state

# Landscape and portrait records (AspectRatioGroupedDataset buckets 0 and 1) in a mixed order.
SIZES = [(64, 48), (40, 56), (40, 56), (64, 48), (30, 30), (80, 20), (20, 80)]
RECORDS = [{"index": i, "width": w, "height": h} for i, (w, h) in enumerate(SIZES)]


class _RandomMapper:
    """Draws from the three global generators, as augmentations and prompt sampling do."""

    def __init__(self):
        self.calls = 0

    def __call__(self, record):
        self.calls += 1
        draws = (random.random(), float(np.random.rand()), float(torch.rand(())))
        return {**record, "draws": draws}


def _loader(mapper, num_workers=0, grouping=True, seed=5):
    return build_resumable_train_loader(
        list(RECORDS),
        mapper=mapper,
        sampler=TrainingSampler(len(RECORDS), seed=seed),
        total_batch_size=2,
        aspect_ratio_grouping=grouping,
        num_workers=num_workers,
    )


def _take(loader, n):
    it = iter(loader)
    return [[(d["index"], d["draws"]) for d in next(it)] for _ in range(n)]


@pytest.mark.parametrize("grouping", [True, False])
def test_batches_are_detectron2s(grouping):
    reference = build_detection_train_loader(
        list(RECORDS),
        mapper=lambda r: dict(r),
        sampler=TrainingSampler(len(RECORDS), seed=5),
        total_batch_size=2,
        aspect_ratio_grouping=grouping,
        num_workers=0,
    )
    ours = _loader(lambda r: dict(r), grouping=grouping)
    expected = [[d["index"] for d in b] for _, b in zip(range(12), reference)]
    assert [[d["index"] for d in b] for _, b in zip(range(12), ours)] == expected
    if grouping:
        for batch in expected:
            assert len({SIZES[i][0] > SIZES[i][1] for i in batch}) == 1


@pytest.mark.parametrize("grouping", [True, False])
def test_resume_maps_nothing_it_skips_and_continues_exactly(grouping):
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    full = _loader(_RandomMapper(), grouping=grouping)
    it = iter(full)
    first = [next(it) for _ in range(4)]
    saved = get_rng_state()  # what the trainer checkpoints after batch 4
    rest = [next(it) for _ in range(3)]
    expected = [[(d["index"], d["draws"]) for d in b] for b in rest]
    assert first  # the run before the interruption

    torch.manual_seed(1), np.random.seed(1), random.seed(1)  # a new process
    mapper = _RandomMapper()
    resumed = _loader(mapper, grouping=grouping)
    resumed.start_at(4, on_start=lambda: set_rng_state(saved))
    assert _take(resumed, 3) == expected
    assert mapper.calls == 3 * 2  # only the delivered batches were mapped


def test_resume_with_workers_continues_exactly(tmp_path):
    full = _loader(_RandomMapper(), num_workers=2)
    it = iter(full)
    for _ in range(3):
        next(it)
    torch.save(full.state_dict(), tmp_path / "loader.pth")
    saved = get_rng_state()  # the main process's, checkpointed by the trainer
    main_draw = float(torch.rand(()))
    expected = [[(d["index"], d["draws"]) for d in next(it)] for _ in range(4)]
    del it

    resumed = _loader(_RandomMapper(), num_workers=2)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pth", weights_only=True))
    resumed.start_at(3, on_start=lambda: set_rng_state(saved))
    it = iter(resumed)
    got = [[(d["index"], d["draws"]) for d in next(it)]]
    # The main process continues from the saved state once the loader has started its workers.
    assert float(torch.rand(())) == main_draw
    got += [[(d["index"], d["draws"]) for d in next(it)] for _ in range(3)]
    assert got == expected
    del it

    fresh = _loader(_RandomMapper(), num_workers=2)
    fresh.start_at(3)  # no saved worker states: the same records, other random draws
    got = _take(fresh, 4)
    assert [[i for i, _ in b] for b in got] == [[i for i, _ in b] for b in expected]
    assert got != expected


def test_aspect_ratio_groups_from_records_or_image_headers(tmp_path):
    wide, tall, rotated = (str(tmp_path / n) for n in ("wide.png", "tall.png", "rotated.jpg"))
    Image.new("RGB", (30, 20)).save(wide)
    Image.new("RGB", (20, 30)).save(tall)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 30x20, shown rotated by 90 degrees: 20x30
    Image.new("RGB", (30, 20)).save(rotated, exif=exif)
    assert utils.read_image(rotated).shape[:2] == (30, 20)  # what the mapper sees: portrait
    records = [
        {"file_name": wide},
        {"file_name": tall},
        {"file_name": rotated},
        {"file_name": wide, "width": 10, "height": 40},  # the record's size wins
        {"file_name": "missing.png", "width": 50, "height": 40},
    ]
    assert aspect_ratio_group_ids(records).tolist() == [0, 1, 1, 1, 0]
