"""Reusable scratch buffers for the large intermediates of one inference pass.

On CPU a fresh tensor of more than a few tens of MB is mapped from the OS and every page of
it faults on first touch; at 800x1333 the fusion's (positions x heads*tokens) attention maps
and the deformable convs' im2col columns are 100-150 MB each, and filling new ones costs about
as much as computing them (a softmax into a fresh tensor: 65 ms, into a reused one: 23 ms).
Inside :func:`scratch_scope` a kernel asks :func:`scratch_buffer` for a named buffer and writes
into it with ``out=``; the same memory serves every fusion block, deformable conv, prompt chunk
and image of the pass, and is released when the outermost scope exits.

The scope is only opened where no gradient is recorded, and a kernel only writes into a
buffer that it consumes before returning, so no result ever aliases a buffer. The current
scope lives in a :mod:`contextvars` variable: threads (and asyncio tasks) never share one.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch

__all__ = ["ScratchBuffers", "scratch_scope", "scratch_buffer"]


class ScratchBuffers:
    """Named flat buffers that grow to the largest size asked for."""

    def __init__(self):
        self._buffers: Dict[Tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def get(
        self, name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape`` backed by buffer ``name``.

        Two calls with the same name return the same memory: use a name for one purpose, and
        finish with the tensor before asking for the name again.
        """
        numel = 1
        for s in shape:
            numel *= int(s)
        key = (name, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            self._buffers.pop(key, None)  # release the smaller one first
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(tuple(shape))

    def nbytes(self) -> int:
        """Bytes held."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


_CURRENT: contextvars.ContextVar[Optional[ScratchBuffers]] = contextvars.ContextVar(
    "glip_d2_scratch_buffers", default=None
)


@contextlib.contextmanager
def scratch_scope(enabled: bool = True) -> Iterator[Optional[ScratchBuffers]]:
    """Open a scope of reusable buffers (nested scopes share the outermost one).

    Args:
        enabled (bool): open it (callers pass ``not torch.is_grad_enabled()``); with False
            the block runs without buffers, except those of an enclosing scope.

    Yields:
        ScratchBuffers or None: the scope's buffers.
    """
    current = _CURRENT.get()
    if current is not None or not enabled:
        yield current
        return
    buffers = ScratchBuffers()
    token = _CURRENT.set(buffers)
    try:
        yield buffers
    finally:
        _CURRENT.reset(token)


def scratch_buffer(
    name: str, shape: Sequence[int], dtype: torch.dtype, device: torch.device
) -> Optional[torch.Tensor]:
    """A buffer of the current scope (see :meth:`ScratchBuffers.get`), or None outside a scope,
    while autograd records or under autocast (a kernel then allocates as usual)."""
    buffers = _CURRENT.get()
    if buffers is None or torch.is_grad_enabled():
        return None
    if torch.is_autocast_enabled(torch.device(device).type):
        return None  # autocast picks the result dtypes; out= would fight it
    return buffers.get(name, shape, dtype, device)
