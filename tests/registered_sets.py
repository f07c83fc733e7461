"""Registering test datasets under a unique name prefix, and removing them afterwards."""

import contextlib
import uuid

from detectron2.data import DatasetCatalog, MetadataCatalog


def unique_prefix(stem: str) -> str:
    """``stem`` plus a random suffix, so that tests never see each other's catalog entries."""
    return f"{stem}_{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def registered(register, root: str, prefix: str, **kwargs):
    """Run ``register(root, prefix=prefix, **kwargs)`` (a ``register_glip_shapes*`` function)
    and yield the names it returns; they leave both catalogs on exit, also after a failure."""
    names = register(root, prefix=prefix, **kwargs)
    try:
        yield names
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
