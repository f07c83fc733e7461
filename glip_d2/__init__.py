"""glip_d2: GLIP and GLIPv2 (grounded language-image pre-training) as a Detectron2 extension.

Importing the package registers its components in Detectron2's registries (meta-architecture,
backbones, language backbones) and its datasets in the catalog. It never initialises CUDA.
"""

import warnings

with warnings.catch_warnings():
    # fvcore.nn, imported by detectron2.layers, applies torch.jit.script to its focal losses at
    # import time, which recent torch reports as deprecated once per function: nothing a user
    # of glip_d2 can change. Only that message is hidden, and only during this import.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    from . import data, engine, evaluation, modeling  # noqa: F401  (registration side effects)
from .config import add_glip_config

__version__ = "0.1.0"

__all__ = ["add_glip_config", "__version__"]
