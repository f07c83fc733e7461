"""The global random states (Python, NumPy, torch) as values a weights-only checkpoint holds.

``numpy.random.get_state()`` contains an ``ndarray``, which ``torch.load(weights_only=True)``
(the default since torch 2.6) refuses; here the NumPy key is a tensor and everything else is a
plain Python value, so that checkpoints stay readable by Detectron2's ``DetectionCheckpointer``.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Dict

import numpy as np
import torch

logger = logging.getLogger(__name__)


def get_rng_state() -> Dict[str, Any]:
    """The global random states of this process.

    Returns:
        dict: ``python`` (``random.getstate()``: a tuple of ints and a float or None), ``numpy``
        (dict: ``algorithm`` str, ``key`` (624,) int64 tensor, ``pos``, ``has_gauss`` int,
        ``cached_gaussian`` float), ``torch`` (uint8 tensor) and, once CUDA is in use, ``cuda``
        (list of uint8 tensors, one per device).
    """
    algorithm, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": str(algorithm),
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s output exactly.

    Also accepts the format of earlier glip_d2 checkpoints, whose ``numpy`` entry is the tuple
    of ``numpy.random.get_state()`` (such files load with ``weights_only=False`` only).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["algorithm"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                f"The saved CUDA random states are for {len(cuda_states)} devices, this process "
                f"sees {torch.cuda.device_count()}: the CUDA random state is not restored"
            )
