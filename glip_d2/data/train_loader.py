"""A training loader that resumes at any batch without mapping the batches it skips.

Detectron2's training loader maps the records of an infinite index stream (``TrainingSampler``,
``RepeatFactorTrainingSampler``) and, with aspect-ratio grouping, batches the mapped dicts by
orientation, so that its position after N batches is only known by running it. Here the
grouping is done on the indices first, with Detectron2's ``GroupedBatchSampler`` and the rule
of its ``AspectRatioGroupedDataset`` (bucket 0: wider than high, else 1) applied to the
records' ``width`` / ``height`` (which the mapper keeps). The loader's own grouping then
receives every batch whole and in order, batch k is the stream positions ``[k B, (k + 1) B)``,
and starting at batch N only runs the integer stream: no record is mapped, no image read.

Exactness of a resumed run: with ``num_workers`` 0 the mapper runs in the main process and the
trainer restores the random state saved at N right before the first record is mapped. With
workers, each mapped record carries its worker's random state out of the worker; the loader
keeps the latest per worker as its checkpoint state, and a resumed worker starts from the state
its predecessor had at the same stream position (the same ``num_workers`` is needed). One
case shifts the batches: a training image that cannot be read (``INPUT.ON_BAD_IMAGE: skip``) is
replaced by another record, which may have the other orientation; Detectron2's grouping then
regroups the batches after it, and a run resumed past that point is no longer exact.

Each record reaches the mapper with :data:`STREAM_VISIT_KEY`, its draw number: the k-th time
(k = 0, 1, ...) this process's stream draws the record, as ``k * world_size + rank``. It is a
function of the index stream alone (the skipped batches of a resumed run are counted too), so
it is the same with any ``num_workers`` and after a resume; with one process and a
``TrainingSampler`` it is the epoch. Per-sample randomness that must differ between passes
but be reproducible (GLIPv2's MLM masking) is seeded with it.
"""

from __future__ import annotations

import collections
import itertools
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.samplers import GroupedBatchSampler
from detectron2.utils.file_io import PathManager
from torch.utils.data import Dataset, Sampler, get_worker_info

from ..utils.rng import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)

#: key of the worker random state a mapped record carries until the loader takes it off
_WORKER_RNG_KEY = "_glip_worker_rng_state"
#: record field with the record's draw number in this process's stream (see the module doc)
STREAM_VISIT_KEY = "stream_visit"


def _image_size(file_name: str) -> tuple:
    """(width, height) after EXIF orientation, from the file header (nothing is decoded)."""
    from PIL import Image

    with PathManager.open(file_name, "rb") as f, Image.open(f) as image:
        width, height = image.size
        # Orientations 5-8 rotate by 90 degrees (Detectron2's read_image applies them).
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


def aspect_ratio_group_ids(dicts: Sequence[Dict[str, Any]]) -> np.ndarray:
    """Each record's aspect-ratio bucket as Detectron2's ``AspectRatioGroupedDataset`` assigns it.

    Args:
        dicts: dataset records; ``width`` and ``height`` are used, or, when a record lacks
            them, the size in its image file's header.

    Returns:
        np.ndarray: (len(dicts),) int64, 0 where the image is wider than high, else 1.
    """
    groups = np.empty(len(dicts), dtype=np.int64)
    for i, record in enumerate(dicts):
        width, height = record.get("width"), record.get("height")
        if width is None or height is None:
            width, height = _image_size(record["file_name"])
        groups[i] = 0 if width > height else 1
    return groups


class ResumableTrainingSampler(Sampler):
    """An infinite index stream laid out in whole batches, that can start at any batch.

    Args:
        sampler (Sampler): an infinite index sampler of this process (Detectron2's
            ``TrainingSampler`` or ``RepeatFactorTrainingSampler``).
        batch_size (int): images per batch on this process.
        group_ids (np.ndarray or None): (num_records,) group of each record
            (:func:`aspect_ratio_group_ids`); every batch then holds one group, in the order
            Detectron2's aspect-ratio grouping would emit them. None: consecutive indices.
        num_records (int): N > 0: yield keys ``visits * N + index`` instead of indices,
            ``visits`` = how often ``index`` came earlier in this stream (skipped batches
            included); :class:`_VisitedRecords` decodes them. 0: plain indices.
    """

    def __init__(
        self,
        sampler: Sampler,
        batch_size: int,
        group_ids: Optional[np.ndarray] = None,
        num_records: int = 0,
    ):
        self.sampler = sampler
        self.batch_size = batch_size
        self.group_ids = group_ids
        self.num_records = num_records
        self._start = 0
        self._on_start: Optional[Callable[[], None]] = None
        self._worker_rng: Dict[int, Dict[str, Any]] = {}

    def start_at(
        self,
        batch: int,
        on_start: Optional[Callable[[], None]] = None,
        worker_rng: Optional[Dict[int, Dict[str, Any]]] = None,
    ) -> None:
        """Make the next iteration begin at batch ``batch`` (counted from the stream's start).

        Args:
            batch (int): batches to skip.
            on_start (callable): called once in the main process, after the skip and before
                the first index is produced (with ``num_workers`` 0: before anything is mapped).
            worker_rng (dict): data loader worker id -> random state (:func:`get_rng_state`)
                that worker starts from.
        """
        self._start = batch
        self._on_start = on_start
        self._worker_rng = dict(worker_rng or {})

    def __iter__(self) -> Iterator[int]:
        if self.group_ids is None:
            stream = iter(self.sampler)
        else:
            # A new grouper per iteration: GroupedBatchSampler keeps its buckets.
            grouped = GroupedBatchSampler(self.sampler, self.group_ids, self.batch_size)
            stream = itertools.chain.from_iterable(grouped)
        skip = self._start * self.batch_size
        if self.num_records > 0:
            skipped = np.fromiter(itertools.islice(stream, skip), dtype=np.int64, count=skip)
            visits = np.bincount(skipped, minlength=self.num_records)
        else:
            collections.deque(itertools.islice(stream, skip), maxlen=0)
        worker = get_worker_info()
        if worker is None:
            on_start, self._on_start = self._on_start, None
            if on_start is not None:
                on_start()
        elif worker.id in self._worker_rng:
            set_rng_state(self._worker_rng[worker.id])
        if self.num_records <= 0:
            yield from stream
            return
        for index in stream:
            yield int(visits[index]) * self.num_records + int(index)
            visits[index] += 1


class _VisitedRecords(Dataset):
    """The records, indexed by the keys of :class:`ResumableTrainingSampler` (``num_records``
    set): each comes out as a shallow copy with :data:`STREAM_VISIT_KEY` added."""

    def __init__(self, records: List[Dict[str, Any]], world_size: int, rank: int):
        # Detectron2's own container (serialised: no copy-on-read growth in workers).
        self.records = DatasetFromList(records, copy=False)
        self.world_size = world_size
        self.rank = rank

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int) -> Dict[str, Any]:
        visits, index = divmod(int(key), len(self.records))
        record = dict(self.records[index])
        record[STREAM_VISIT_KEY] = visits * self.world_size + self.rank
        return record


class _RecordWorkerRNG:
    """Mapper wrapper: in a data loader worker, the mapped dict carries the worker's random
    state after mapping (what the worker's next record starts from)."""

    def __init__(self, mapper: Callable[[Dict[str, Any]], Dict[str, Any]]):
        self.mapper = mapper

    def __call__(self, record: Dict[str, Any]) -> Dict[str, Any]:
        mapped = self.mapper(record)
        worker = get_worker_info()
        if worker is not None and isinstance(mapped, dict):
            mapped[_WORKER_RNG_KEY] = (worker.id, get_rng_state())
        return mapped


class ResumableTrainLoader:
    """Iterable of training batches (lists of mapped dicts) that can start at any batch.

    Also a checkpointable: with workers its state holds the random state of each worker after
    the last record it delivered (empty without workers). Iterating creates the underlying
    Detectron2 loader's iterator at the first batch, so :meth:`start_at` may be called after
    the trainer took this object.

    Args:
        loader: Detectron2's training loader reading ``sampler``.
        sampler (ResumableTrainingSampler): its index stream.
        num_workers (int): the loader's worker processes.
    """

    def __init__(self, loader, sampler: ResumableTrainingSampler, num_workers: int):
        self.loader = loader
        self.sampler = sampler
        self.num_workers = num_workers
        self._offset = 0  # stream position of the first record of this run
        self._worker_rng: Dict[int, Dict[str, Any]] = {}  # position mod num_workers -> state
        self._loaded: Optional[Dict[str, Any]] = None
        self._on_start: Optional[Callable[[], None]] = None

    def start_at(
        self, batch: int, on_start: Optional[Callable[[], None]] = None, worker_rng: bool = True
    ) -> None:
        """Begin at batch ``batch`` without mapping the batches before it.

        Args:
            batch (int): batches already trained on (the resumed iteration).
            on_start (callable): called once in the main process when the loader starts,
                before the main process maps anything (e.g. restoring the saved RNG state).
            worker_rng (bool): start the workers from the loaded random states (False: from
                their own seeds).
        """
        offset = batch * self.sampler.batch_size
        states = {}
        saved = self._loaded or {}
        if self.num_workers > 0 and batch > 0 and worker_rng:
            if saved.get("num_workers") == self.num_workers:
                # Worker w now reads positions offset + w + k * num_workers.
                for w in range(self.num_workers):
                    state = saved["worker_rng"].get((offset + w) % self.num_workers)
                    if state is not None:
                        states[w] = state
            saved_workers = saved.get("num_workers", 0)
            if len(states) < self.num_workers:
                logger.warning(
                    f"Resuming with DATALOADER.NUM_WORKERS {self.num_workers}, but the checkpoint "
                    f"has the random states of {len(states)} data loader workers (saved with "
                    f"{saved_workers} workers): the same images in the same batches, but other "
                    "augmentations than an uninterrupted run would use"
                )
        self._offset = offset
        self._worker_rng = {}
        self._on_start = on_start if self.num_workers > 0 else None
        self.sampler.start_at(batch, on_start if self.num_workers == 0 else None, states)

    def state_dict(self) -> Dict[str, Any]:
        if self.num_workers == 0:
            return {}
        return {"num_workers": self.num_workers, "worker_rng": dict(self._worker_rng)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._loaded = state

    def __iter__(self) -> Iterator[List[Dict[str, Any]]]:
        on_start, self._on_start = self._on_start, None
        for batch in self.loader:
            for mapped in batch:
                worker_state = mapped.pop(_WORKER_RNG_KEY, None)
                if worker_state is not None:
                    worker, state = worker_state
                    self._worker_rng[(self._offset + worker) % self.num_workers] = state
            if on_start is not None:
                # With workers the main process maps nothing; its state is restored after its
                # loader iterator was created (which draws the workers' base seed).
                on_start()
                on_start = None
            yield batch


def build_resumable_train_loader(
    dataset: List[Dict[str, Any]],
    *,
    mapper: Callable[[Dict[str, Any]], Dict[str, Any]],
    sampler: Sampler,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
) -> ResumableTrainLoader:
    """Detectron2's ``build_detection_train_loader`` over a :class:`ResumableTrainingSampler`.

    Args:
        dataset (list[dict]): the records.
        mapper (callable): record -> model input dict.
        sampler (Sampler): an infinite index sampler of this process.
        total_batch_size, aspect_ratio_grouping, num_workers: as for
            ``build_detection_train_loader``.

    Returns:
        ResumableTrainLoader: yields lists of ``total_batch_size / world_size`` mapped dicts,
        the same batches as ``build_detection_train_loader``; each record reaches the mapper
        with its :data:`STREAM_VISIT_KEY` draw number.
    """
    from detectron2.utils import comm

    world_size = comm.get_world_size()
    batch_size = total_batch_size // world_size
    group_ids = aspect_ratio_group_ids(dataset) if aspect_ratio_grouping else None
    resumable = ResumableTrainingSampler(sampler, batch_size, group_ids, num_records=len(dataset))
    loader = build_detection_train_loader(
        _VisitedRecords(dataset, world_size, comm.get_rank()),
        mapper=_RecordWorkerRNG(mapper) if num_workers > 0 else mapper,
        sampler=resumable,
        total_batch_size=total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
    )
    return ResumableTrainLoader(loader, resumable, num_workers)
