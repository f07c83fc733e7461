"""The RNG-state checkpointable: weights-only files, exact restore, earlier checkpoints."""

import random

import numpy as np
import pytest
import torch

from glip_d2.engine.hooks import RNGState
from glip_d2.utils.checkpoint import GLIPCheckpointer


def _draws():
    # np.random.randn caches its second Gaussian: has_gauss / cached_gaussian are exercised.
    return (random.random(), random.gauss(0, 1), np.random.randn(3).tolist(), torch.rand(3))


def _save_then_draw(path, state_of):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    _draws()
    model = torch.nn.Linear(2, 2)
    torch.save({"model": model.state_dict(), "rng_state": state_of()}, path)
    return model, _draws()


def _resume(model, path):
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    rng = RNGState()
    checkpointer = GLIPCheckpointer(model)
    checkpointer.add_checkpointable("rng_state", rng)
    checkpointer.load(str(path))
    assert rng.restore()
    return _draws()


def _equal(a, b):
    return a[:3] == b[:3] and torch.equal(a[3], b[3])


def test_rng_state_is_weights_only_and_restores_exactly(tmp_path):
    path = tmp_path / "ckpt.pth"
    model, expected = _save_then_draw(path, lambda: RNGState().state_dict())
    state = torch.load(path, weights_only=True)["rng_state"]
    assert isinstance(state["numpy"]["key"], torch.Tensor)
    assert _equal(_resume(model, path), expected)


def test_checkpoint_with_numpy_state_tuple_still_restores(tmp_path):
    """glip_d2 checkpoints written before the weights-only format stored np.random.get_state()."""
    path = tmp_path / "old.pth"
    model, expected = _save_then_draw(
        path,
        lambda: {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    )
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert _equal(_resume(model, path), expected)
