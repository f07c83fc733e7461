"""Text-model loading without network: clear errors in seconds, local folders, quiet loads."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from glip_d2.data.prompts import build_tokenizer
from glip_d2.modeling.language import BertLanguageBackbone
from glip_d2.utils.hub import HubUnreachableError, hub_unreachable_reason

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh process: huggingface_hub reads HF_HOME / HF_ENDPOINT / HF_HUB_OFFLINE at import.
OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from glip_d2.data.prompts import build_tokenizer
    from glip_d2.modeling.language import BertLanguageBackbone

    results = {}
    for what, load in [
        ("tokenizer", lambda: build_tokenizer("bert-base-uncased")),
        (
            "backbone",
            lambda: BertLanguageBackbone(model_name="bert-base-uncased", load_pretrained=True),
        ),
    ]:
        start = time.perf_counter()
        try:
            load()
            error = None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        results[what] = {"seconds": time.perf_counter() - start, "error": error}
    print(json.dumps(results))
    """
)


def _refused_endpoint() -> str:
    """An http endpoint on localhost that refuses connections (nothing listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _run_offline(tmp_path, **env):
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))
        and not k.upper().endswith("_PROXY")
    }
    # An empty cache (bert-base-uncased absent), and no proxy that would answer for the hub.
    full_env.update(HF_HOME=str(tmp_path / "empty_hf_home"), **env)
    res = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_bert_base_uncased_without_network_fails_fast_naming_the_config_keys(tmp_path):
    """configs/glip_swin_t.yaml on a machine without network: the tokenizer and the pretrained
    BERT fail in seconds (transformers alone retries each file for minutes), saying which key
    to point at a local folder."""
    results = _run_offline(tmp_path, HF_ENDPOINT=_refused_endpoint())
    for what, key in [
        ("tokenizer", "INPUT.PROMPT.TOKENIZER"),
        ("backbone", "MODEL.LANGUAGE_BACKBONE.MODEL_NAME"),
    ]:
        error, seconds = results[what]["error"], results[what]["seconds"]
        assert error is not None and error.startswith("HubUnreachableError"), (what, error)
        assert f"{key} is 'bert-base-uncased'" in error
        assert "cannot be reached" in error
        # How to fix it: both keys pointed at one local folder.
        assert (
            "MODEL.LANGUAGE_BACKBONE.MODEL_NAME /path/to/bert-base-uncased "
            "INPUT.PROMPT.TOKENIZER /path/to/bert-base-uncased" in error
        )
        assert seconds < 30, (what, seconds)


def test_offline_mode_fails_at_once(monkeypatch):
    """With HF_HUB_OFFLINE set, a model that is not cached is an error without any request."""
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    start = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="INPUT.PROMPT.TOKENIZER is .*HF_HUB_OFFLINE"):
        build_tokenizer("glip-d2-tests/never-cached-tokenizer")
    assert time.perf_counter() - start < 10


@pytest.fixture
def no_proxy(monkeypatch):
    """Requests to the local test servers go direct, not through a proxy from the environment."""
    for key in list(os.environ):
        if key.upper().endswith("_PROXY"):
            monkeypatch.delenv(key)


def test_hub_probe_gives_up_on_a_silent_server(monkeypatch, no_proxy):
    """A network that accepts the connection but never answers (a hanging proxy or firewall)
    is reported as unreachable after the probe's timeout, not after minutes."""
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)  # never accepts, never answers
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        start = time.perf_counter()
        reason = hub_unreachable_reason(timeout=1.0)
        elapsed = time.perf_counter() - start
    assert reason == f"no answer from {endpoint} in 1 s"
    assert elapsed < 5


def test_hub_probe_accepts_any_http_answer(monkeypatch, no_proxy):
    """A hub (or mirror) that answers, even with an error status, is reachable: loading goes on
    to transformers' own download."""
    import http.server
    import threading

    from huggingface_hub import constants

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_unreachable_reason(timeout=5.0) is None
    finally:
        server.shutdown()
        server.server_close()


def test_missing_local_folder_names_the_key(tmp_path):
    missing = str(tmp_path / "bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="INPUT.PROMPT.TOKENIZER .*no such folder"):
        build_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="MODEL.LANGUAGE_BACKBONE.MODEL_NAME .*no such"):
        BertLanguageBackbone(model_name=missing)
    assert issubclass(HubUnreachableError, OSError)


def _save_bert(folder: Path, extra_keys=()):
    """A tiny pretrained-style BERT folder (config.json with architectures ["BertModel"] and
    weights with a pooler, as sentence-transformers models ship), plus ``extra_keys``."""
    from safetensors.torch import save_file
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        architectures=["BertModel"],
    )
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in BertModel(config).state_dict().items()}
    for key in extra_keys:
        state[key] = torch.zeros(2)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


@pytest.fixture
def transformers_log(caplog):
    """Records of transformers' weight-loading logger, as its console handler would get them
    (logger filters run first)."""
    import logging

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def _unused_weight_messages(log):
    # A set: the record may also reach caplog through the root logger.
    return {r.getMessage() for r in log.records if "were not used" in r.getMessage()}


def test_pretrained_bert_loads_without_reporting_the_unused_pooler(tmp_path, transformers_log):
    folder = tmp_path / "bert"
    state = _save_bert(folder)
    backbone = BertLanguageBackbone(model_name=str(folder), load_pretrained=True)
    assert _unused_weight_messages(transformers_log) == set()
    loaded = backbone.model.state_dict()
    assert not any("pooler" in k for k in loaded)
    torch.testing.assert_close(
        loaded["embeddings.word_embeddings.weight"], state["embeddings.word_embeddings.weight"]
    )


def test_other_unused_weights_are_still_reported(tmp_path, transformers_log):
    """Only the expected pooler is silenced: weights the model really lacks are still shown."""
    folder = tmp_path / "bert"
    _save_bert(folder, extra_keys=["encoder.extra_adapter.weight"])
    BertLanguageBackbone(model_name=str(folder), load_pretrained=True)
    (message,) = _unused_weight_messages(transformers_log)
    assert "encoder.extra_adapter.weight" in message
