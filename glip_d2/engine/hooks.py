"""Training hooks and checkpointables: model EMA (reference §14), RNG state."""

from __future__ import annotations

import contextlib
from typing import Any, Dict

import torch
from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

from ..utils.rng import get_rng_state, set_rng_state


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """Exponential moving average of a model's whole state dict (parameters and buffers).

    ``ema = decay * ema + (1 - decay) * current`` for floating-point entries after every step;
    integer buffers are copied. Saved in checkpoints as ``model_ema`` (the official name).
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in unwrap_model(model).state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for key, value in unwrap_model(model).state_dict().items():
            ema = self.state[key]
            if ema.dtype.is_floating_point:
                ema.mul_(self.decay).add_(value.detach(), alpha=1 - self.decay)
            else:
                ema.copy_(value)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        for key, value in state.items():
            if key in self.state:
                self.state[key].copy_(value)

    @contextlib.contextmanager
    def apply_to(self, model: torch.nn.Module):
        """Temporarily load the EMA weights into ``model`` (e.g. for evaluation)."""
        model = unwrap_model(model)
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(backup)


class EMAHook(HookBase):
    """Update a :class:`ModelEMA` after every training step."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self):
        self.ema.update(self.trainer.model)


class RNGState:
    """The Python, NumPy and torch RNG states as a checkpointable (for exact resumption).

    Saved as tensors and plain Python values (:func:`glip_d2.utils.rng.get_rng_state`), so the
    checkpoint loads with ``torch.load(weights_only=True)``; the earlier format (NumPy's state
    tuple) still restores. Loading keeps the state aside until :meth:`restore` is called, so
    that the trainer applies it when the data loader restarts at the resumed position.
    """

    def __init__(self):
        self._pending = None

    def state_dict(self) -> Dict[str, Any]:
        return get_rng_state()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._pending = state

    def restore(self) -> bool:
        """Apply a loaded state; returns False if there was none."""
        if self._pending is None:
            return False
        set_rng_state(self._pending)
        self._pending = None
        return True
