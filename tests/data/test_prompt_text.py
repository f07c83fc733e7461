"""Prompt text, character spans and token positive maps against hand-computed values."""

import pytest
import torch
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

from glip_d2.data.prompts import (
    Prompt,
    build_detection_prompt,
    build_grounding_prompt,
    build_positive_map,
    chunk_categories,
    clean_name,
    encode_prompt,
)


def _rows(positive_map):
    return [row.nonzero().flatten().tolist() for row in positive_map]


def _ids(tokenizer, tokens, length=256):
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return ids + [tokenizer.pad_token_id] * (length - len(ids))


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("hot_dog", "hot dog"),
        ("bow_(weapon)", "bow"),
        ("a (b) c (d)", "a"),  # the official regex is greedy
        ("  traffic   light ", "traffic light"),
        ("(x)", ""),
        ("person", "person"),
    ],
)
def test_clean_name(raw, cleaned):
    assert clean_name(raw) == cleaned


def test_detection_prompt_text_spans_and_tokens(tiny_tokenizer):
    prompt = build_detection_prompt(["person", "traffic_light", "bow_(weapon)"])
    assert prompt.caption == "person. traffic light. bow"
    assert prompt.spans == (((0, 6),), ((8, 21),), ((23, 26),))
    assert prompt.class_ids == (0, 1, 2)
    assert prompt.phrases == ["person", "traffic light", "bow"]

    fields = prompt.encode(tiny_tokenizer, 256)
    tokens = ["[CLS]", "person", ".", "traffic", "light", ".", "bow", "[SEP]"]
    assert fields["input_ids"].tolist() == _ids(tiny_tokenizer, tokens)
    assert fields["input_ids"].dtype == torch.int64
    assert fields["attention_mask"].tolist() == [1] * 8 + [0] * 248
    assert fields["positive_map"].shape == (3, 256)
    assert fields["positive_map"].dtype == torch.bool
    # [CLS] is index 0: "person" is token 1, "traffic light" 3-4, "bow" 6.
    assert _rows(fields["positive_map"]) == [[1], [3, 4], [6]]
    assert fields["prompt_class_ids"].tolist() == [0, 1, 2]
    assert fields["caption"] == prompt.caption


def test_detection_prompt_with_caption_prompt(tiny_tokenizer):
    # ODinW Aquarium style: prefix " " for fish, a suffix for penguin; spans cover names only.
    prompt = build_detection_prompt(
        ["fish", "penguin"],
        prefixes=[" ", ""],
        suffixes=["", " , which is black and white"],
        class_ids=[4, 9],
    )
    assert prompt.caption == " fish. penguin , which is black and white"
    assert prompt.spans == (((1, 5),), ((7, 14),))
    assert prompt.class_ids == (4, 9)
    assert _rows(prompt.positive_map(tiny_tokenizer)) == [[1], [3]]


def test_detection_prompt_separator_and_empty_name(tiny_tokenizer):
    prompt = build_detection_prompt(["  ", "black bishop"], separator=" . ")
    assert prompt.caption == " . black bishop"
    assert prompt.phrases == ["", "black bishop"]
    # The empty name has no tokens; "black bishop" follows "[CLS] ." at tokens 2-3.
    assert _rows(prompt.positive_map(tiny_tokenizer)) == [[], [2, 3]]


def test_empty_category_list_is_an_error():
    with pytest.raises(ValueError, match="[Ee]mpty category list"):
        build_detection_prompt([])


def test_positive_map_fallbacks(tiny_tokenizer):
    caption = "a red circle"  # [CLS] a red circle [SEP]
    spans = [
        [(1, 6)],  # " red ": starts and ends on spaces -> start+1, end-2
        [(5, 6)],  # only a space: no token
        [(0, 1), (6, 12)],  # two spans of one entry: "a" and "circle"
        [(2, 2)],  # empty span
        [(3, 12)],  # starts inside "red": the covering token
    ]
    assert _rows(build_positive_map(tiny_tokenizer, caption, spans)) == [
        [2],
        [],
        [1, 3],
        [],
        [2, 3],
    ]


def test_positive_map_truncation(tiny_tokenizer):
    # With L = 5 only "a red circle" fit: [CLS] a red circle [SEP]; "next" was cut.
    caption = "a red circle next to"
    fields = encode_prompt(tiny_tokenizer, caption, [[(6, 12)], [(13, 17)]], max_len=5)
    tokens = ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert fields["input_ids"].tolist() == tiny_tokenizer.convert_tokens_to_ids(tokens)
    assert _rows(fields["positive_map"]) == [[3], []]


def test_grounding_prompt(tiny_tokenizer):
    caption = "a small red circle next to two blue squares."
    prompt = build_grounding_prompt(caption, [[[2, 18]], [[31, 43]]])
    assert prompt.phrases == ["small red circle", "blue squares"]
    assert prompt.class_ids == (0, 1)
    # [CLS] a small red circle next to two blue squares . [SEP]; "squares" is one token.
    assert _rows(prompt.positive_map(tiny_tokenizer)) == [[2, 3, 4], [8, 9]]


@pytest.mark.parametrize("caption", ["", "   "])
def test_grounding_prompt_empty_caption(caption):
    with pytest.raises(ValueError, match="empty caption"):
        build_grounding_prompt(caption, [], what="image 7")


def test_grounding_prompt_span_outside_caption():
    with pytest.raises(ValueError, match=r"annotation 12.*\[5, 40\)"):
        build_grounding_prompt("a cat", [[[5, 40]]], what="annotation 12")


def test_prompt_checks_lengths():
    with pytest.raises(ValueError):
        Prompt(caption="cat", spans=(((0, 3),),), class_ids=(0, 1))


# ---------------------------------------------------------------------------- chunking


def _lvis_names():
    return [c["name"] for c in sorted(LVIS_CATEGORIES, key=lambda c: c["id"])]


def _check_cover(tokenizer, chunks, num):
    assert [c for chunk in chunks for c in chunk.class_ids] == list(range(num))
    for chunk in chunks:
        assert len(tokenizer(chunk.caption)["input_ids"]) <= 256
        fields = chunk.encode(tokenizer, 256)
        assert fields["attention_mask"].sum() <= 256
        # Every name has tokens, so nothing was cut by the truncation.
        assert bool(fields["positive_map"].any(dim=1).all())


def test_chunk_lvis_vocabulary_by_token_budget(tiny_tokenizer):
    names = _lvis_names()
    assert len(names) == 1203
    chunks = chunk_categories(names, tiny_tokenizer)
    assert len(chunks) > 1
    _check_cover(tiny_tokenizer, chunks, 1203)
    # Greedy packing: the first name of a chunk would not have fit in the previous one.
    for prev, nxt in zip(chunks, chunks[1:]):
        joined = prev.caption + ". " + clean_name(names[nxt.class_ids[0]])
        assert len(tiny_tokenizer(joined)["input_ids"]) > 256


def test_chunk_lvis_vocabulary_official_40(tiny_tokenizer):
    chunks = chunk_categories(_lvis_names(), tiny_tokenizer, 40)
    assert [len(c) for c in chunks] == [40] * 30 + [3]  # as the official LVIS evaluation
    _check_cover(tiny_tokenizer, chunks, 1203)


def test_chunk_small_budget_by_hand(tiny_tokenizer):
    # [CLS] person . traffic light [SEP] = 6 tokens; adding ". dog" would make 8.
    chunks = chunk_categories(["person", "traffic_light", "dog"], tiny_tokenizer, max_len=6)
    assert [c.caption for c in chunks] == ["person. traffic light", "dog"]
    assert [c.class_ids for c in chunks] == [(0, 1), (2,)]
    assert [c.spans for c in chunks] == [(((0, 6),), ((8, 21),)), (((0, 3),),)]


def test_chunk_too_large_fixed_chunk_is_split(tiny_tokenizer):
    names = [f"thing number {i}" for i in range(100)]
    chunks = chunk_categories(names, tiny_tokenizer, chunk_size=100)
    assert len(chunks) > 1
    _check_cover(tiny_tokenizer, chunks, 100)


def test_chunk_name_that_cannot_fit(tiny_tokenizer):
    names = ["cat", "very " * 300 + "long name", "dog"]
    with pytest.raises(ValueError, match="class id 1.*cannot be put in any prompt"):
        chunk_categories(names, tiny_tokenizer)


def test_chunk_name_too_long_error_names_it_once_and_short(tiny_tokenizer):
    """The error shows an over-long name once, shortened, with its token count."""
    name = "very " * 300 + "long name"
    with pytest.raises(ValueError) as info:
        chunk_categories(["cat", name, "dog"], tiny_tokenizer)
    message = str(info.value)
    assert message.count("long name") == 1 and message.count("very") < 20, message
    assert "class id 1" in message and "304 tokens, more than 256" in message
