"""GLIPv2 VQA and captioning on the tiny trunk: causal text through fusion, the heads' losses,
greedy and beam decoding."""

import json

import pytest
import torch
import torch.nn.functional as F

from glip_d2.modeling.vl_tasks import VQAHead, beam_search, greedy_search
from tests.synthetic_inputs import tiny_model


@pytest.fixture
def answer_vocab(tmp_path):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(["red", "green", "blue", "yes", "no"]))
    return str(path)


def caption_model(**opts):
    return tiny_model(**{"MODEL.CAPTION_ON": True, **opts})


def _image(seed, h=96, w=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (3, h, w), generator=g, dtype=torch.uint8)


def _text(ids, length=12):
    ids = torch.tensor(ids, dtype=torch.long)
    out = torch.zeros(length, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.long)
    out[: len(ids)] = ids
    mask[: len(ids)] = 1
    return out, mask


def _causal_pass(model, images, input_ids, attention_mask):
    x = [{"image": im} for im in images]
    feats = model.extract_features(model.preprocess_image(x))
    with torch.no_grad():
        head = model.dense_head(feats, input_ids, attention_mask, causal=True)
    return head


@pytest.mark.parametrize("fused_dot_product", ["fused", "backbone"])
def test_caption_causality_through_the_whole_trunk(fused_dot_product):
    """Changing later caption tokens changes no earlier token's output (language backbone,
    fusion in both directions, the tower's BERT layer, DyHead), while the non-causal trunk
    does leak (so the test can fail)."""
    model = caption_model(**{"MODEL.FUSION.DOT_PRODUCT_FEATURES": fused_dot_product})
    # Non-zero layer scale: the fusion's updates are large enough to show any leak.
    for name, p in model.head.named_parameters():
        if name.endswith(("gamma_v", "gamma_l")):
            p.data.fill_(0.5)
    images = [_image(0), _image(1)]
    a_ids, a_mask = _text([101, 2023, 2003, 1037, 2417, 4418, 102])
    b_ids, b_mask = _text([101, 2023, 2003, 1037, 2630, 2675, 1998, 3899, 102])
    ids = torch.stack([a_ids, a_ids])
    other = torch.stack([b_ids, b_ids])
    masks = torch.stack([a_mask, a_mask])
    other_masks = torch.stack([b_mask, b_mask])
    first = _causal_pass(model, images, ids, masks)
    second = _causal_pass(model, images, other, other_masks)
    shared = 4  # [CLS] this is a: equal in both
    assert torch.equal(ids[:, :shared], other[:, :shared])
    torch.testing.assert_close(
        first.text_fused[:, :shared], second.text_fused[:, :shared], rtol=0, atol=1e-6
    )
    # The visual side never reads the text: identical maps whatever the caption.
    for a, b in zip(first.fused_visual, second.fused_visual):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(first.text_fused[:, shared], second.text_fused[:, shared])
    x = [{"image": im} for im in images]
    with torch.no_grad():
        feats = model.extract_features(model.preprocess_image(x))
        bi_a = model.dense_head(feats, ids, masks)
        bi_b = model.dense_head(feats, other, other_masks)
    assert not torch.allclose(bi_a.text_fused[:, :shared], bi_b.text_fused[:, :shared], atol=1e-4)


def test_caption_training_step_teacher_forcing():
    model = caption_model()
    model.train()
    ids, mask = _text([101, 1037, 2417, 4418, 102])
    batch = [
        {"image": _image(i), "input_ids": ids, "attention_mask": mask, "task": "caption"}
        for i in range(2)
    ]
    losses = model(batch)
    assert set(losses) == {"loss_caption"}
    assert torch.isfinite(losses["loss_caption"])
    losses["loss_caption"].backward()
    assert model.caption_head.lm_head.transform.dense.weight.grad.abs().sum() > 0
    # The loss is the teacher-forcing cross-entropy on the causal features.
    model.eval()
    head = _causal_pass(
        model,
        [b["image"] for b in batch],
        ids[None].repeat(2, 1)[:, :5],
        mask[None].repeat(2, 1)[:, :5],
    )
    logits = model.caption_head.logits(head.text_fused[:, :4])
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[1:5].repeat(2))
    got = model.caption_head.loss(
        head.text_fused, ids[None].repeat(2, 1)[:, :5], mask[None].repeat(2, 1)[:, :5]
    )
    torch.testing.assert_close(got, expected)


def test_vqa_training_and_inference(answer_vocab):
    model = tiny_model(**{"MODEL.VQA_ON": True, "MODEL.VQA.ANSWER_VOCAB": answer_vocab})
    model.train()
    ids, mask = _text([101, 2054, 3609, 2003, 1996, 4418, 1029, 102])
    batch = [
        {
            "image": _image(i),
            "input_ids": ids,
            "attention_mask": mask,
            "task": "vqa",
            "answer_target_ids": torch.tensor([i, 3]),
            "answer_target_scores": torch.tensor([1.0, 0.3]),
        }
        for i in range(2)
    ]
    losses = model(batch)
    assert set(losses) == {"loss_vqa"} and torch.isfinite(losses["loss_vqa"])
    losses["loss_vqa"].backward()
    model.eval()
    with torch.no_grad():
        out = model([{k: v for k, v in b.items() if "target" not in k} for b in batch])
    assert [o["answer"] for o in out] == [
        model.vqa_head.answers[int(o["answer_scores"].argmax())] for o in out
    ]
    assert out[0]["answer_scores"].shape == (5,)


def test_vqa_loss_is_bce_summed_over_answers():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    targets = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 1.0]])
    manual = 0.0
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = 1 / (1 + torch.exp(torch.tensor(-z)))
        manual += float(-(y * torch.log(p) + (1 - y) * torch.log(1 - p)))
    torch.testing.assert_close(VQAHead.loss(logits, targets), torch.tensor(manual / 2))


def test_mixed_task_batch_and_missing_head_are_errors():
    model = caption_model()
    ids, mask = _text([101, 102])
    with pytest.raises(ValueError, match="mixes the tasks"):
        model([{"image": _image(0), "task": "caption"}, {"image": _image(1), "task": "vqa"}])
    with pytest.raises(ValueError, match="MODEL.VQA_ON"):
        model([{"image": _image(0), "task": "vqa", "input_ids": ids, "attention_mask": mask}])


def _toy_step(table):
    """A fixed next-token distribution per (last token): a tiny Markov chain."""

    def step(ids):
        return torch.log_softmax(table[ids[:, -1]], dim=-1)

    return step


def test_beam_one_equals_greedy_and_beam_finds_the_better_caption():
    torch.manual_seed(0)
    vocab = 12
    for _ in range(20):
        table = torch.randn(vocab, vocab) * 3
        step = _toy_step(table)
        common = {"bos_id": 0, "eos_id": 1, "max_length": 6, "banned": (0,)}
        greedy = greedy_search(step, 1, **common)
        for lp in (0.0, 1.0):
            assert beam_search(step, 1, beam_size=1, length_penalty=lp, **common) == greedy
    # A chain where greedy's first step is a trap (0 is [CLS], 1 is [SEP]):
    # 0 -> 2 (0.6) -> 4 (0.55) -> [SEP]: 0.33; 0 -> 2 -> [SEP] (0.45): 0.27;
    # 0 -> 3 (0.4) -> [SEP]: 0.4
    table = torch.full((5, 5), -1e9)
    table[0, 2], table[0, 3] = torch.log(torch.tensor(0.6)), torch.log(torch.tensor(0.4))
    table[2, 4], table[2, 1] = torch.log(torch.tensor(0.55)), torch.log(torch.tensor(0.45))
    table[3, 1] = 0.0
    table[4, 1] = 0.0
    step = _toy_step(table)
    common = {"bos_id": 0, "eos_id": 1, "max_length": 4}
    assert greedy_search(step, 1, **common) == [[2, 4]]
    assert beam_search(step, 1, beam_size=3, length_penalty=0.0, **common) == [[3]]
    # Length-normalised (log p / n): [2, 4] + [SEP] is -1.11 / 3 = -0.37 > [3] + [SEP], -0.46.
    assert beam_search(step, 1, beam_size=3, length_penalty=1.0, **common) == [[2, 4]]
    # The length limit ends live beams: at most 1 token, so [2] or [3]: 0.6 > 0.4.
    assert beam_search(step, 1, **{**common, "max_length": 1}, beam_size=3, length_penalty=0.0) == [
        [2]
    ]


def test_generate_captions_respects_length_and_banned_tokens():
    model = caption_model(**{"MODEL.CAPTION.MAX_LENGTH": 5})
    x = [{"image": _image(0)}, {"image": _image(1)}]
    feats = model.extract_features(model.preprocess_image(x))
    for beam in (1, 3):
        out = model.generate_captions(feats, beam_size=beam)
        assert len(out) == 2
        for o in out:
            assert len(o["caption_ids"]) <= 5
            assert not set(o["caption_ids"]) & set(model.caption_decoding["banned"])
            assert isinstance(o["caption"], str)
    greedy = model.generate_captions(feats, beam_size=1)
    assert [o["caption_ids"] for o in model.generate_captions(feats, beam_size=1)] == [
        o["caption_ids"] for o in greedy
    ]


def test_caption_head_starts_from_the_mlm_head():
    """A GLIPv2 checkpoint (MLM head, no caption head) loads into a caption model with the
    caption LM head equal to the MLM head; an own caption head is kept."""
    model = caption_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lm = {k: v for k, v in state.items() if k.startswith("caption_head.lm_head.")}
    for k in lm:
        del state[k]
        state[k.replace("caption_head.lm_head.", "criterion.terms.mlm.head.")] = lm[k] + 1
    result = model.load_state_dict(state, strict=False)
    assert not [k for k in result.missing_keys if k.startswith("caption_head.")]
    for k, v in lm.items():
        torch.testing.assert_close(model.state_dict()[k], v + 1)
