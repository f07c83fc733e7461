"""Training-time detection prompts: positives kept, negatives sampled, token budget, shuffling."""

import random

import pytest
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from glip_d2.data.prompts import BACKGROUND_CLASS_ID, DetectionPromptSampler, build_detection_prompt

NAMES = ["cat", "dog", "hot_dog", "traffic light", "person", "bicycle", "car", "bus", "kite", "cup"]


def _num_tokens(tokenizer, text):
    return len(tokenizer(text)["input_ids"])


def test_all_categories_in_id_order(tiny_tokenizer):
    sampler = DetectionPromptSampler(NAMES, tiny_tokenizer, random_sample_neg=-1, shuffle=False)
    prompt, dropped = sampler([4, 1, 4], rng=random.Random(0))
    assert dropped == []
    assert prompt.caption == (
        "cat. dog. hot dog. traffic light. person. bicycle. car. bus. kite. cup"
    )
    assert prompt.class_ids == tuple(range(10))
    assert prompt == build_detection_prompt(NAMES)


def test_positives_always_kept_and_negatives_sampled(tiny_tokenizer):
    sampler = DetectionPromptSampler(
        NAMES, tiny_tokenizer, random_sample_neg=3, full_neg_prob=1.0, shuffle=False
    )
    for seed in range(30):
        prompt, dropped = sampler([2, 7], rng=random.Random(seed))
        ids = list(prompt.class_ids)
        assert dropped == []
        assert {2, 7} <= set(ids)
        assert ids == sorted(ids)  # no shuffling
        # 3 negatives drawn from all 10 classes; drawn positives are discarded.
        assert 1 <= len(ids) - 2 <= 3
        assert prompt == build_detection_prompt([NAMES[i] for i in ids], class_ids=ids)


def test_number_of_negatives_follows_the_probabilities(tiny_tokenizer):
    full = DetectionPromptSampler(NAMES, tiny_tokenizer, random_sample_neg=9, full_neg_prob=1.0)
    assert {len(full([0], rng=random.Random(s))[0]) for s in range(20)} <= {9, 10}
    none = DetectionPromptSampler(NAMES, tiny_tokenizer, random_sample_neg=0)
    assert none([0, 3], rng=random.Random(0))[0].class_ids in {(0, 3), (3, 0)}
    varied = DetectionPromptSampler(NAMES, tiny_tokenizer, random_sample_neg=9, full_neg_prob=0.0)
    counts = {len(varied([0], rng=random.Random(s))[0]) - 1 for s in range(200)}
    assert min(counts) <= 1 and max(counts) >= 7  # uniform in 1..9 minus collisions


def test_shuffle_and_determinism(tiny_tokenizer):
    sampler = DetectionPromptSampler(NAMES, tiny_tokenizer, random_sample_neg=-1, shuffle=True)
    orders = {sampler([0], rng=random.Random(s))[0].class_ids for s in range(10)}
    assert len(orders) > 1
    assert all(sorted(o) == list(range(10)) for o in orders)
    a = sampler([0, 5], rng=random.Random(123))[0]
    b = sampler([0, 5], rng=random.Random(123))[0]
    assert a == b


def test_token_budget_by_hand(tiny_tokenizer):
    names = ["cat", "dog", "hot dog"]  # "cat. " 2, "dog. " 2, "hot dog. " 3 wordpieces
    tight = DetectionPromptSampler(
        names, tiny_tokenizer, random_sample_neg=-1, shuffle=False, token_budget=5
    )
    # 3 used by the positive; "cat" would leave 0, which is not > 0.
    assert tight([2], rng=random.Random(0))[0].caption == "hot dog"
    wider = DetectionPromptSampler(
        names, tiny_tokenizer, random_sample_neg=-1, shuffle=False, token_budget=6
    )
    prompt, _ = wider([2], rng=random.Random(0))
    assert prompt.caption == "cat. hot dog"
    assert prompt.class_ids == (0, 2)


def test_positive_overflow_drops_classes(tiny_tokenizer):
    names = ["cat", "dog", "hot dog"]
    sampler = DetectionPromptSampler(names, tiny_tokenizer, random_sample_neg=85, token_budget=4)
    for seed in range(20):
        prompt, dropped = sampler([0, 1, 2], rng=random.Random(seed))
        assert dropped
        assert sorted(set(prompt.class_ids) | set(dropped)) == [0, 1, 2]
        assert not set(prompt.class_ids) & set(dropped)
        assert _num_tokens(tiny_tokenizer, prompt.caption) <= 4 + 2


def test_lvis_budget_holds(tiny_tokenizer):
    names = [c["name"] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]
    sampler = DetectionPromptSampler(names, tiny_tokenizer, random_sample_neg=85)
    rng = random.Random(0)
    for _ in range(20):
        positives = rng.sample(range(len(names)), rng.choice([1, 10, 200]))
        prompt, dropped = sampler(positives, rng=rng)
        assert _num_tokens(tiny_tokenizer, prompt.caption) <= 256
        assert set(prompt.class_ids) >= set(positives) - set(dropped)
        encoded = prompt.encode(tiny_tokenizer, 256)["positive_map"]
        assert bool(encoded.any(dim=1).all())  # no entry was truncated away


def test_background_negative(tiny_tokenizer):
    sampler = DetectionPromptSampler(
        ["cat", "dog"],
        tiny_tokenizer,
        random_sample_neg=2,
        full_neg_prob=1.0,
        background_negative=True,
    )
    seen = False
    for seed in range(20):
        prompt, _ = sampler([0], rng=random.Random(seed))
        if BACKGROUND_CLASS_ID in prompt.class_ids:
            seen = True
            k = prompt.class_ids.index(BACKGROUND_CLASS_ID)
            assert prompt.phrases[k] == "background"
    assert seen


def test_sampler_rejects_bad_input(tiny_tokenizer):
    with pytest.raises(ValueError, match="[Ee]mpty category list"):
        DetectionPromptSampler([], tiny_tokenizer)
    sampler = DetectionPromptSampler(["cat"], tiny_tokenizer)
    with pytest.raises(ValueError, match="class id 3"):
        sampler([3])
