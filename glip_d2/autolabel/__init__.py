"""Auto-labelling with a teacher GLIP (pseudo-labels for captions or an ontology)."""

from . import core
from .core import *  # noqa: F403  (the public names are core's __all__)

__all__ = list(core.__all__)
