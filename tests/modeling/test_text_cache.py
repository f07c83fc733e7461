"""TEST.TEXT_CACHE_SIZE: the language features of a repeated prompt are computed once, and
never reused after the language weights change."""

import torch
from synthetic_inputs import model_input, prompt_tensors, tiny_model


def _model(cache_size):
    model = tiny_model(**{"MODEL.ATSS.INFERENCE_TH": 0.0, "TEST.TEXT_CACHE_SIZE": cache_size})
    calls = []
    model.language_backbone.register_forward_hook(lambda *a: calls.append(1))
    return model, calls


def _inputs(seed, ids_seed):
    ids, attn, pmap = prompt_tensors(2, generator=torch.Generator().manual_seed(ids_seed))
    return model_input(torch.Generator().manual_seed(seed), 96, 128, ids, attn, pmap)


def _same(a, b):
    a, b = a[0]["instances"], b[0]["instances"]
    return torch.equal(a.scores, b.scores) and torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_repeated_prompt_is_encoded_once_with_identical_outputs():
    cached, calls = _model(4)
    plain, plain_calls = _model(0)
    plain.load_state_dict(cached.state_dict())
    with torch.no_grad():
        outs = [cached([_inputs(seed, 0)]) for seed in (1, 2, 1)]  # three images, one prompt
        refs = [plain([_inputs(seed, 0)]) for seed in (1, 2, 1)]
    assert len(calls) == 1 and len(plain_calls) == 3
    assert all(_same(o, r) for o, r in zip(outs, refs))
    assert _same(outs[0], outs[2])


def test_changed_language_weights_are_not_served_from_the_cache():
    model, calls = _model(4)
    with torch.no_grad():
        before = model([_inputs(1, 0)])
        state = model.state_dict()
        key = next(k for k in state if k.startswith("language_backbone.") and "weight" in k)
        state[key] = state[key] + 0.5
        model.load_state_dict(state)  # copies in place: the parameters' versions change
        after = model([_inputs(1, 0)])
        with torch.no_grad():
            next(model.language_backbone.parameters()).mul_(1.0)  # an optimizer-like update
        model([_inputs(1, 0)])
    assert len(calls) == 3
    assert not _same(before, after)


def test_no_cache_with_autograd_or_in_training_and_lru_bound():
    model, calls = _model(2)
    model([_inputs(1, 0)])  # grad enabled: not cached
    model([_inputs(1, 0)])
    assert len(calls) == 2
    with torch.no_grad():
        for ids_seed in (0, 1, 2, 0):  # 0 was evicted by 1 and 2 (size 2)
            model([_inputs(1, ids_seed)])
        assert len(calls) == 6
        model([_inputs(1, 2)])  # still cached
        assert len(calls) == 6
        model.train()
        model.encode_text(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
        model.encode_text(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.long))
        assert len(calls) == 8
    assert len(model._text_cache) == 2
