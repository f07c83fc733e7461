"""MLM on the data side: greenlight maps (reference §3.3.2) and seeded BERT masking."""

import random

import numpy as np
import pytest
import torch

from glip_d2.data.prompts import (
    CORRUPTIBLE,
    FROZEN,
    GREEN,
    IGNORE_LABEL,
    build_detection_prompt,
    build_greenlight_map,
    build_grounding_prompt,
    mask_tokens,
    mlm_generator,
    tokenize_prompt,
)

MASK_ID = 103
VOCAB = 30522
L = 32


def _mask(ids, light, seed=0, image_id=0, epoch=0):
    return mask_tokens(
        ids,
        light,
        rng=mlm_generator(seed, image_id, epoch),
        mask_token_id=MASK_ID,
        vocab_size=VOCAB,
    )


def _sample(n_text=20, n_pad=12, token=2000):
    """Ids ``[CLS] token*n_text [SEP] [PAD]*n_pad`` and a greenlight green on the text."""
    ids = torch.tensor([101] + [token] * n_text + [102] + [0] * n_pad)
    light = torch.tensor([CORRUPTIBLE] + [GREEN] * n_text + [CORRUPTIBLE] + [FROZEN] * n_pad)
    return ids, light


def test_masking_statistics_15_80_10_10():
    # 4000 samples, each with its own (seed, image id, epoch) generator: ~88k draws.
    ids, light = _sample(n_text=20, n_pad=12)
    selected = to_mask = to_random = kept = 0
    for image_id in range(4000):
        masked, labels = _mask(ids, light, image_id=image_id)
        # Only green tokens are labelled, so count selection on the green text positions.
        sel = labels != IGNORE_LABEL
        selected += int(sel.sum())
        to_mask += int((sel & (masked == MASK_ID)).sum())
        kept += int((sel & (masked == ids)).sum())
        to_random += int((sel & (masked != MASK_ID) & (masked != ids)).sum())
    green_total = 4000 * 20
    assert abs(selected / green_total - 0.15) < 0.01
    assert abs(to_mask / selected - 0.80) < 0.01
    assert abs(to_random / selected - 0.10) < 0.01
    assert abs(kept / selected - 0.10) < 0.01


def test_random_replacement_spans_whole_vocabulary():
    ids = torch.full((2000, 256), 2000)
    light = torch.full_like(ids, GREEN)
    masked, labels = mask_tokens(
        ids, light, rng=mlm_generator(0, 1, 0), mask_token_id=MASK_ID, vocab_size=VOCAB
    )
    replaced = masked[(labels != IGNORE_LABEL) & (masked != MASK_ID) & (masked != 2000)]
    # Special ids ([PAD] 0, [unusedN] 1..998, [CLS] 101, [SEP] 102) are drawn as the official.
    assert int(replaced.min()) < 999
    assert int(replaced.max()) >= VOCAB - 1000
    assert int(replaced.max()) < VOCAB


def test_pad_is_never_masked_or_labelled():
    ids, light = _sample(n_text=4, n_pad=26)
    pad = light == FROZEN
    for image_id in range(500):
        masked, labels = _mask(ids, light, image_id=image_id)
        assert torch.equal(masked[pad], ids[pad])
        assert (labels[pad] == IGNORE_LABEL).all()


def test_only_green_selected_tokens_get_labels():
    ids = torch.arange(1000, 1000 + L)
    light = torch.tensor([GREEN, CORRUPTIBLE] * (L // 2))
    labelled_any = False
    for image_id in range(300):
        masked, labels = _mask(ids, light, image_id=image_id)
        has_label = labels != IGNORE_LABEL
        assert (light[has_label] == GREEN).all()
        assert torch.equal(labels[has_label], ids[has_label])
        labelled_any |= bool(has_label.any())
    assert labelled_any


def test_selected_non_green_tokens_are_corrupted_without_label():
    # [CLS], [SEP] and negative names (greenlight 0) can be corrupted but are never scored.
    ids, light = _sample()
    light = torch.where(light == GREEN, CORRUPTIBLE, light)
    corrupted_cls_sep = corrupted_text = 0
    for image_id in range(500):
        masked, labels = _mask(ids, light, image_id=image_id)
        assert (labels == IGNORE_LABEL).all()
        changed = masked != ids
        corrupted_cls_sep += int(changed[0]) + int(changed[21])
        corrupted_text += int(changed[1:21].sum())
    assert corrupted_cls_sep > 0
    assert corrupted_text > 0


def test_all_zero_greenlight_gives_well_formed_all_ignored_labels():
    ids, light = _sample()
    light = torch.zeros_like(light)
    masked, labels = _mask(ids, light)
    assert labels.shape == ids.shape and labels.dtype == torch.int64
    assert masked.shape == ids.shape and masked.dtype == torch.int64
    assert (labels == IGNORE_LABEL).all()


def test_same_triple_same_mask_other_epoch_other_mask():
    ids, light = _sample(n_text=200, n_pad=0)
    first = _mask(ids, light, seed=7, image_id=42, epoch=3)
    # Another sample masked in between (another batch composition) changes nothing.
    _mask(ids, light, seed=7, image_id=43, epoch=3)
    again = _mask(ids, light, seed=7, image_id=42, epoch=3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    for other in ({"epoch": 4, "image_id": 42}, {"epoch": 3, "image_id": 41}):
        masked, _ = _mask(ids, light, seed=7, **other)
        assert not torch.equal(masked, first[0])
    masked, _ = _mask(ids, light, seed=8, image_id=42, epoch=3)
    assert not torch.equal(masked, first[0])


def test_masking_reads_and_advances_no_global_rng():
    ids, light = _sample()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    first = _mask(ids, light, image_id=5)
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    assert torch.equal(_mask(ids, light, image_id=5)[0], first[0])


def test_detection_greenlight_covers_exactly_positive_names(tiny_tokenizer):
    prompt = build_detection_prompt(["cat", "traffic light", "hot_dog", "dog"])
    encoding = tokenize_prompt(tiny_tokenizer, prompt.caption, L)
    light = build_greenlight_map(encoding, prompt, data_kind="detection", positive_class_ids=[1, 3])
    assert light.shape == (L,) and light.dtype == torch.int64
    green = torch.nonzero(light == GREEN).flatten().tolist()
    assert tiny_tokenizer.decode([encoding["input_ids"][i] for i in green]) == "traffic light dog"
    # Exactly the positive-map tokens of the positive entries.
    positive_map = prompt.positive_map(tiny_tokenizer, L)
    assert torch.equal(light == GREEN, positive_map[1] | positive_map[3])
    n = int(sum(encoding["attention_mask"]))
    assert light[0] == CORRUPTIBLE and light[n - 1] == CORRUPTIBLE  # [CLS], [SEP]
    assert (light[n:] == FROZEN).all()
    # Negative names ("cat", "hot dog") and the ". " separators are corruptible, not green.
    assert int((light[:n] == CORRUPTIBLE).sum()) == n - len(green)


def test_detection_greenlight_without_positives_is_not_green(tiny_tokenizer):
    prompt = build_detection_prompt(["cat", "dog"], class_ids=[-1, 0])
    encoding = tokenize_prompt(tiny_tokenizer, prompt.caption, L)
    # The __background__ entry (class id -1) is never positive.
    light = build_greenlight_map(encoding, prompt, data_kind="detection", positive_class_ids=[-1])
    assert not (light == GREEN).any()
    assert (_mask(torch.as_tensor(encoding["input_ids"]), light)[1] == IGNORE_LABEL).all()


def test_grounding_greenlight_covers_whole_caption(tiny_tokenizer):
    caption = "a red circle next to a blue square"
    prompt = build_grounding_prompt(caption, [[[2, 12]], [[23, 34]]])
    encoding = tokenize_prompt(tiny_tokenizer, caption, L)
    light = build_greenlight_map(encoding, prompt, data_kind="grounding")
    n = int(sum(encoding["attention_mask"]))
    assert light[0] == CORRUPTIBLE and light[n - 1] == CORRUPTIBLE
    assert (light[1 : n - 1] == GREEN).all()
    assert (light[n:] == FROZEN).all()
    green = torch.nonzero(light == GREEN).flatten().tolist()
    assert tiny_tokenizer.decode([encoding["input_ids"][i] for i in green]) == caption


def test_scope_all_and_none(tiny_tokenizer):
    prompt = build_detection_prompt(["cat", "dog"])
    encoding = tokenize_prompt(tiny_tokenizer, prompt.caption, L)
    attention = torch.as_tensor(encoding["attention_mask"])
    light = build_greenlight_map(encoding, prompt, data_kind="detection", scope="all")
    assert torch.equal(light, torch.where(attention == 1, GREEN, FROZEN))
    light = build_greenlight_map(encoding, prompt, data_kind="detection", scope="none")
    assert (light == FROZEN).all()
    ids = torch.as_tensor(encoding["input_ids"])
    masked, labels = _mask(ids, light)
    assert torch.equal(masked, ids) and (labels == IGNORE_LABEL).all()


def test_bad_inputs_raise_clear_errors(tiny_tokenizer):
    prompt = build_detection_prompt(["cat"])
    encoding = tokenize_prompt(tiny_tokenizer, prompt.caption, L)
    with pytest.raises(ValueError, match="data kind"):
        build_greenlight_map(encoding, prompt, data_kind="vqa")
    with pytest.raises(ValueError, match="scope"):
        build_greenlight_map(encoding, prompt, data_kind="detection", scope="positives")
    with pytest.raises(ValueError, match="grounding"):
        build_greenlight_map(encoding, prompt, data_kind="grounding", positive_class_ids=[0])
    with pytest.raises(ValueError, match="image_id"):
        mlm_generator(0, -1, 0)
    ids, light = _sample()
    with pytest.raises(ValueError, match="shape"):
        _mask(ids, light[:-1])
    with pytest.raises(ValueError, match="outside"):
        _mask(ids, light * 2)
