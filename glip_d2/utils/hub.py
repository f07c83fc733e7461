"""Load Hugging Face files named in configs without hanging when the hub cannot be reached.

``transformers`` retries an unreachable hub with back-off for every file it looks for (five
times per file, minutes per model) and then reports a generic error. Here a name that is not a
local folder is looked up in the local Hugging Face cache first; only when it is not cached is
the hub asked, after one short probe, so that an offline machine gets a clear error in seconds
naming the config key and how to point it at a local folder.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, List, Optional, TypeVar

from .paths import resolve_path

__all__ = ["HubUnreachableError", "hub_unreachable_reason", "load_pretrained"]

T = TypeVar("T")

#: Seconds the reachability probe waits for the hub's first answer (DNS, connect, response).
PROBE_TIMEOUT_S = 5.0

#: The config keys that name Hugging Face models; one local folder usually serves both.
TEXT_MODEL_KEYS = ("MODEL.LANGUAGE_BACKBONE.MODEL_NAME", "INPUT.PROMPT.TOKENIZER")


class HubUnreachableError(OSError):
    """A model name is neither a local folder nor cached, and the hub cannot be reached."""


def _is_offline_mode() -> bool:
    from transformers.utils import is_offline_mode

    return bool(is_offline_mode())


def hub_unreachable_reason(timeout: Optional[float] = None) -> Optional[str]:
    """Why the Hugging Face hub cannot be used now, or ``None`` if it answers.

    Offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) answers at once. Otherwise one
    HEAD request goes to the endpoint (``HF_ENDPOINT``, through the proxies ``huggingface_hub``
    uses), without retries; any HTTP answer counts as reachable. It runs in a daemon thread so
    that a hanging name lookup cannot block longer than ``timeout``.

    Args:
        timeout (float, optional): seconds to wait for an answer; default
            :data:`PROBE_TIMEOUT_S`.

    Returns:
        str or None: a short reason, e.g. ``"no answer from https://huggingface.co in 5 s"``.
    """
    if _is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    from huggingface_hub import constants, get_session

    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    endpoint = constants.ENDPOINT
    errors: List[BaseException] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=timeout)  # requests and httpx: no redirects
        except Exception as e:  # any failure to get an HTTP answer means "unreachable"
            errors.append(e)

    thread = threading.Thread(target=probe, name="glip_d2-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer from {endpoint} in {timeout:.0f} s"
    if errors:
        error = errors[0]
        if "Timeout" in type(error).__name__:  # requests' / httpx's ConnectTimeout, ReadTimeout
            return f"no answer from {endpoint} in {timeout:.0f} s"
        # requests wraps urllib3's MaxRetryError, whose ``reason`` is the readable cause.
        cause = getattr(error.args[0], "reason", error) if error.args else error
        return f"{endpoint} cannot be reached ({type(cause).__name__}: {cause})"
    return None


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or name.endswith(os.sep)


def _from_cache(loader: Callable[..., T], name: str, kwargs) -> Optional[T]:
    """``loader(name)`` from the local Hugging Face cache only; ``None`` if it is not there."""
    try:
        return loader(name, local_files_only=True, **kwargs)
    except Exception:
        # Not (completely) cached. transformers says so with OSError for most files, but with
        # TypeError (BertTokenizerFast without vocab.txt) or AttributeError (BertModel without
        # weights) in 4.57, which would only obscure the error that follows; any other error
        # recurs when the hub is asked.
        return None


def load_pretrained(
    loader: Callable[..., T], name: str, *, config_key: str, needs: str, **kwargs
) -> T:
    """Call a ``from_pretrained`` loader on a config value, failing fast when offline.

    Order: a local folder (or ``pkg://`` folder, see :func:`resolve_path`) is loaded directly;
    a path-like name that does not exist is an error; a hub name is loaded from the local
    Hugging Face cache when it is there, else from the hub if :func:`hub_unreachable_reason`
    finds it reachable.

    Args:
        loader: e.g. ``BertTokenizerFast.from_pretrained`` or ``BertModel.from_pretrained``.
        name (str): the config value: a hub name, a local folder or ``pkg://package/sub``.
        config_key (str): the config key ``name`` comes from, named in errors.
        needs (str): the files the folder must hold, named in errors (e.g. ``"vocab.txt"``).
        **kwargs: passed to ``loader``.

    Returns:
        what ``loader`` returns.

    Raises:
        FileNotFoundError: ``name`` is a path that does not exist.
        HubUnreachableError: ``name`` is not cached and the hub cannot be reached; the message
            says how to point the config keys at a local folder.
    """
    path = os.path.expanduser(resolve_path(name))
    if os.path.isdir(path):
        return loader(path, **kwargs)
    if _looks_like_path(path):
        raise FileNotFoundError(f"{config_key} {name!r}: no such folder (it should hold {needs})")
    cached = _from_cache(loader, path, kwargs)
    if cached is not None:
        return cached
    reason = hub_unreachable_reason()
    if reason is not None:
        keys = " ".join(f"{k} /path/to/{path.split('/')[-1]}" for k in TEXT_MODEL_KEYS)
        raise HubUnreachableError(
            f"{config_key} is {name!r}: not a local folder, not in the Hugging Face cache, and "
            f"the hub cannot be used: {reason}. Point it at a local folder holding {needs}, "
            f"e.g. made on a machine with network by `hf download {path} --local-dir "
            f"/path/to/{path.split('/')[-1]}`, then pass `{keys}` (or set HF_HOME to a "
            "Hugging Face cache that holds it)."
        )
    return loader(path, **kwargs)
