"""Export of GLIP for a fixed prompt (TorchScript, ONNX): see :mod:`.fixed_prompt`."""

from . import fixed_prompt
from .fixed_prompt import *  # noqa: F403  (its __all__ is this package's public API)

__all__ = list(fixed_prompt.__all__)
