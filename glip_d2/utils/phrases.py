"""A per-instance list of strings that Detectron2's ``Instances`` can index and concatenate."""

from __future__ import annotations

from typing import Iterable, Iterator, List

import numpy as np
import torch


class PhraseList:
    """Strings aligned with the rows of an ``Instances`` (e.g. ``pred_phrases``).

    Supports what ``Instances`` needs from a field: ``len``, indexing with an int, a slice, a
    bool mask or an index tensor, ``to(device)`` (a no-op) and ``PhraseList.cat``.
    """

    def __init__(self, phrases: Iterable[str]):
        self._data = np.asarray(list(phrases), dtype=object)

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data.tolist())

    def __getitem__(self, item):
        if isinstance(item, int):
            return self._data[item]
        if isinstance(item, torch.Tensor):
            item = item.cpu().numpy()
        return PhraseList(self._data[item])

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def __repr__(self) -> str:
        return f"PhraseList({self._data.tolist()!r})"

    def to(self, *args, **kwargs) -> PhraseList:
        return self

    @classmethod
    def cat(cls, lists: List[PhraseList]) -> PhraseList:
        return cls(p for lst in lists for p in lst)
