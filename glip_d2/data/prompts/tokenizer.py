"""The tokenizer of the prompts (BERT WordPiece, fast, for character offsets)."""

from __future__ import annotations

import functools

__all__ = ["build_tokenizer"]


@functools.lru_cache(maxsize=8)
def build_tokenizer(name_or_path: str, config_key: str = "INPUT.PROMPT.TOKENIZER"):
    """Load (once per process) the fast BERT tokenizer named by ``INPUT.PROMPT.TOKENIZER``.

    Args:
        name_or_path (str): a Hugging Face model name (``"bert-base-uncased"``: from the local
            Hugging Face cache, else downloaded), a local folder with ``vocab.txt`` /
            ``tokenizer.json``, or ``pkg://package/sub/path`` (a folder inside an installed
            package).
        config_key (str): the config key the name comes from, named in errors.

    Returns:
        transformers.BertTokenizerFast: shared between callers; do not modify it.

    Raises:
        FileNotFoundError: a path that does not exist.
        glip_d2.utils.hub.HubUnreachableError: a hub name that is not cached while the hub
            cannot be reached (in seconds, not after minutes of retries).
    """
    from transformers import BertTokenizerFast

    from ...utils.hub import load_pretrained

    return load_pretrained(
        BertTokenizerFast.from_pretrained,
        name_or_path,
        config_key=config_key,
        needs="vocab.txt (or tokenizer.json)",
    )
