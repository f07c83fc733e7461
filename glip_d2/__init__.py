"""glip_d2: GLIP and GLIPv2 (grounded language-image pre-training) as a Detectron2 extension.

Importing the package registers its components in Detectron2's registries (meta-architecture,
backbones, language backbones) and its datasets in the catalog. It never initialises CUDA.
"""

from . import data, engine, evaluation, modeling  # noqa: F401  (registration side effects)
from .config import add_glip_config

__version__ = "0.1.0"

__all__ = ["add_glip_config", "__version__"]
