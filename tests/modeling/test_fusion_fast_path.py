"""The reassociated fusion attention (the default) against the reference one: the same
outputs and gradients, for prompts of different lengths (padding), several image sizes, with
and without the text update, and through the whole model."""

import pytest
import torch
from synthetic_inputs import random_prompt_input, tiny_model

from glip_d2.modeling.fusion import FUSION_ATTENTION_IMPLS
from glip_d2.modeling.fusion.bi_attention import BiMultiHeadAttention


def _pair(update_lang, dropout=0.0):
    torch.manual_seed(0)
    ref = BiMultiHeadAttention(48, 40, 96, 4, dropout=dropout, update_lang=update_lang)
    ref.kernel = FUSION_ATTENTION_IMPLS["reference"]
    fast = BiMultiHeadAttention(48, 40, 96, 4, dropout=dropout, update_lang=update_lang)
    fast.load_state_dict(ref.state_dict())
    assert fast.attention_impl == "reassociated"
    with torch.no_grad():  # non-zero biases, so the bias terms are exercised
        for a, b in zip(ref.parameters(), fast.parameters()):
            a.add_(0.1 * torch.randn_like(a))
            b.copy_(a)
    return ref, fast


@pytest.mark.parametrize("update_lang", [True, False])
@pytest.mark.parametrize("n_img,lengths", [(37, (5, 11)), (300, (9, 9)), (1, (3, 7))])
def test_same_outputs_and_gradients_as_the_reference(update_lang, n_img, lengths):
    ref, fast = _pair(update_lang)
    g = torch.Generator().manual_seed(1)
    width = max(lengths)
    visual = torch.randn(len(lengths), n_img, 48, generator=g)
    lang = torch.randn(len(lengths), width, 40, generator=g) * 3
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1  # shorter prompts are padded
    outs = []
    for module in (ref, fast):
        v = visual.clone().requires_grad_(True)
        t = lang.clone().requires_grad_(True)
        dv, dl = module(v, t, mask)
        loss = (dv * torch.linspace(-1, 1, dv.numel()).view_as(dv)).sum()
        if dl is not None:
            loss = loss + (dl.square()).sum()
        loss.backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        outs.append((dv, dl, v.grad, t.grad, grads))
    (dv0, dl0, gv0, gt0, gp0), (dv1, dl1, gv1, gt1, gp1) = outs
    assert (dl0 is None) == (dl1 is None) == (not update_lang)
    pairs = [(dv1, dv0, "delta_v"), (gv1, gv0, "grad visual"), (gt1, gt0, "grad lang")]
    if update_lang:
        pairs.append((dl1, dl0, "delta_l"))
    assert set(gp0) == set(gp1)
    pairs += [(gp1[n], gp0[n], f"grad {n}") for n in gp0]
    # float32 rounding of a different summation order, relative to the largest gradient
    # (without the text update, the key bias's gradient is mathematically zero: noise only)
    scale = max(float(t.abs().max()) for _, t, _ in pairs)
    for got, expected, name in pairs:
        atol = 1e-5 * max(float(expected.abs().max()), scale if "grad" in name else 0.0)
        torch.testing.assert_close(got, expected, atol=atol, rtol=1e-4, msg=name)


def test_attention_dropout_keeps_the_text_value_bias_exact(monkeypatch):
    """With dropout the text branch's probability rows no longer sum to 1, so the
    reassociated value bias must be weighted by the kept mass. Both paths get the same
    dropout pattern: it is chosen by each probability's value, whatever the layout."""
    import glip_d2.modeling.fusion.attention as attention

    def value_dropout(x, p=0.5, training=False):
        if not training:
            return x
        keep = torch.frac(x.detach() * 997.0) < 0.5
        return x * keep / (1 - p)

    monkeypatch.setattr(attention.F, "dropout", value_dropout)
    ref, fast = _pair(True, dropout=0.5)
    ref.train()
    fast.train()
    g = torch.Generator().manual_seed(2)
    visual, lang = torch.randn(1, 20, 48, generator=g), torch.randn(1, 6, 40, generator=g)
    dv0, dl0 = ref(visual, lang, None)
    dv1, dl1 = fast(visual, lang, None)
    torch.testing.assert_close(dv1, dv0, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(dl1, dl0, atol=2e-5, rtol=1e-4)


def _model(impl, deform_impl):
    return tiny_model(
        **{
            "MODEL.FUSION.ATTENTION_IMPL": impl,
            "MODEL.GLIP_HEAD.DEFORM_CONV_IMPL": deform_impl,
            "MODEL.ATSS.INFERENCE_TH": 0.0,
        }
    )


def test_whole_model_detections_equal_the_reference():
    """Two images of different sizes batched, prompts of 2 and 5 entries (so one is padded),
    a chunked vocabulary and single images of three more sizes: the same detections on the
    fast kernels (fusion attention and deformable conv) as on the reference ones."""
    fast, ref = _model("reassociated", "auto"), _model("reference", "reference")
    ref.load_state_dict(fast.state_dict())
    batch = [random_prompt_input(2, 1, 128, 160), random_prompt_input(5, 2, 96, 192)]
    chunked = dict(random_prompt_input(3, 3, 128, 128))
    chunked["prompt_chunks"] = [
        random_prompt_input(3, 4, 128, 128),
        random_prompt_input(1, 5, 128, 128),
    ]
    # Single images of other sizes: odd sides, and one whose coarsest level is 1x1.
    singles = [
        [random_prompt_input(4, 6, 200, 120)],
        [random_prompt_input(2, 7, 75, 301)],
        [random_prompt_input(3, 8, 33, 47)],
    ]
    with torch.no_grad():
        for inputs in (batch, [chunked], *singles):
            a = fast(inputs)
            b = ref(inputs)
            for x, y in zip(a, b):
                x, y = x["instances"], y["instances"]
                assert len(x) == len(y) > 0
                torch.testing.assert_close(x.scores, y.scores, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(
                    x.pred_boxes.tensor, y.pred_boxes.tensor, atol=1e-3, rtol=1e-4
                )
                assert torch.equal(x.pred_classes, y.pred_classes)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e5])
def test_text_side_softmax_is_bitwise_the_official_sequence(scale):
    """The official max-subtraction and clamp before the softmax over positions change no bit
    (the reassociated kernel skips them)."""
    g = torch.Generator().manual_seed(3)
    attn = (torch.randn(2, 300, 8, 21, generator=g) * scale).clamp(-50000.0, 50000.0)
    official = attn - attn.max(dim=1, keepdim=True)[0]
    official = official.clamp(min=-50000.0, max=50000.0).softmax(dim=1)
    assert torch.equal(attn.softmax(dim=1), official)
