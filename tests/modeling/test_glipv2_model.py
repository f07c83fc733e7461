"""GLIPv2 on the reshaped GLIP: the two pre-training terms in a training step, GLIP's losses
unchanged by them, checkpoints, the fusion attention kernel by name, named loss terms, and the
LM head at test time."""

from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from synthetic_inputs import model_input, prompt_tensors

from glip_d2.config import add_glip_config
from glip_d2.data.prompts import concept_id
from glip_d2.modeling.criterion import LossTerm
from glip_d2.modeling.fusion import FUSION_ATTENTION_IMPLS, register_fusion_attention
from glip_d2.modeling.fusion.attention import eager_bi_attention

ROOT = Path(__file__).resolve().parents[2]
L = 256
MASK_ID = 103


def _cfg(region_word=1.0, mlm=1.0, **overrides):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / "quick_schedules" / "glip_tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.GLIPV2.REGION_WORD.WEIGHT = region_word
    cfg.MODEL.GLIPV2.MLM.WEIGHT = mlm
    cfg.MODEL.FUSION.DROPOUT = 0.0
    cfg.merge_from_list([item for pair in overrides.items() for item in pair])
    return cfg


def _item(boxes, entries, names, *, phrase=False, seed=0, h=128, w=160, masked=()):
    """An input dict as the training mapper makes it: prompt entry k covers tokens 3k+1, 3k+2."""
    g = torch.Generator().manual_seed(seed)
    ids, mask, pmap = prompt_tensors(len(names), first_id=2000)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    entry = torch.tensor(entries, dtype=torch.long)
    inst.gt_classes = entry
    inst.gt_positive_map = pmap[entry] if len(entries) else pmap[:0]
    inst.gt_prompt_entry = entry
    mlm_ids, labels = ids.clone(), torch.full((L,), -100, dtype=torch.long)
    for pos in masked:
        labels[pos] = ids[pos]
        mlm_ids[pos] = MASK_ID
    return model_input(
        g,
        h,
        w,
        ids,
        mask,
        pmap,
        image_id=seed,
        prompt_class_ids=torch.arange(len(names)),
        phrases=list(names),
        prompt_concepts=torch.tensor([concept_id(t) for t in names]),
        prompt_is_phrase=torch.full((len(names),), phrase),
        mlm_input_ids=mlm_ids,
        mlm_labels=labels,
        instances=inst,
    )


def _batch():
    return [
        _item(
            [[10, 20, 60, 90], [80, 30, 150, 120]],
            [0, 1],
            ["red circle", "blue square"],
            seed=1,
            masked=(1, 5),
        ),
        _item([[20, 10, 90, 70]], [1], ["green square", "red circle"], seed=2, masked=(4,)),
    ]


def test_training_step_has_both_glipv2_losses_and_every_parameter_learns():
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    losses = model(_batch())
    assert set(losses) == {
        "loss_token",
        "loss_giou",
        "loss_centerness",
        "loss_region_word",
        "loss_mlm",
    }
    for name, value in losses.items():
        assert torch.isfinite(value) and value > 0, name
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    assert {n for n, _ in model.named_parameters() if n.startswith("criterion.")} >= {
        "criterion.terms.region_word.projection_image.weight",
        "criterion.terms.region_word.log_scale",
        "criterion.terms.mlm.head.transform.dense.weight",
    }


def test_glipv2_terms_leave_glips_losses_unchanged():
    """Same weights and the uncorrupted prompt: GLIP's three losses are bitwise those of GLIP."""
    torch.manual_seed(0)
    glip = build_model(_cfg(0.0, 0.0, **{"MODEL.FUSION.DOT_PRODUCT_FEATURES": "fused"})).train()
    v2 = build_model(_cfg(**{"MODEL.FUSION.DOT_PRODUCT_FEATURES": "fused"})).train()
    incompatible = v2.load_state_dict(glip.state_dict(), strict=False)
    assert incompatible.unexpected_keys == []
    # A GLIP checkpoint lacks exactly the GLIPv2 parameters, which are reported by name.
    assert incompatible.missing_keys and all(
        k.startswith(("criterion.terms.region_word.", "criterion.terms.mlm."))
        for k in incompatible.missing_keys
    )
    batch = _batch()
    for x in batch:
        x["mlm_input_ids"] = x["input_ids"]
    # Dropout and DropBlock draw before any loss: the same seed gives both the same masks.
    torch.manual_seed(1)
    ours = v2(batch)
    torch.manual_seed(1)
    ref = glip(batch)
    for key in ("loss_token", "loss_giou", "loss_centerness"):
        assert torch.equal(ours[key], ref[key]), key


def test_masked_ids_replace_the_prompt_in_training_only():
    torch.manual_seed(0)
    model = build_model(_cfg(0.0, 1.0)).train()
    batch = _batch()
    torch.manual_seed(1)
    masked = model(batch)["loss_token"]
    for x in batch:
        x["mlm_input_ids"] = x["input_ids"]
    torch.manual_seed(1)
    clean = model(batch)["loss_token"]
    assert not torch.equal(masked, clean), "the grounding loss must see the masked prompt"


def test_clean_grounding_prompt_scores_mlm_on_a_second_masked_pass():
    """GROUNDING_PROMPT "clean": the grounding losses are those of the unmasked prompt and
    L_mlm that of the masked prompt's pass, each equal to the one-pass model fed that prompt."""
    torch.manual_seed(0)
    shared = build_model(_cfg(1.0, 1.0)).train()
    clean = build_model(_cfg(1.0, 1.0, **{"MODEL.GLIPV2.MLM.GROUNDING_PROMPT": "clean"})).train()
    clean.load_state_dict(shared.state_dict())
    for module in (*shared.modules(), *clean.modules()):
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # BERT's dropout would draw differently in the second pass
    batch = _batch()
    torch.manual_seed(1)
    ours = clean(batch)
    torch.manual_seed(1)
    on_masked = shared(batch)
    unmasked = [dict(x, mlm_input_ids=x["input_ids"]) for x in batch]
    torch.manual_seed(1)
    on_clean = shared(unmasked)
    for key in ("loss_token", "loss_giou", "loss_centerness", "loss_region_word"):
        torch.testing.assert_close(ours[key], on_clean[key], rtol=1e-6, atol=0, msg=key)
    torch.testing.assert_close(ours["loss_mlm"], on_masked["loss_mlm"], rtol=1e-6, atol=0)
    assert not torch.equal(on_masked["loss_token"], on_clean["loss_token"])
    with pytest.raises(ValueError, match="GROUNDING_PROMPT"):
        build_model(_cfg(**{"MODEL.GLIPV2.MLM.GROUNDING_PROMPT": "both"}))


def test_missing_concept_fields_name_the_field():
    torch.manual_seed(0)
    model = build_model(_cfg(1.0, 0.0)).train()
    batch = _batch()
    del batch[1]["prompt_concepts"]
    with pytest.raises(KeyError, match="prompt_concepts"):
        model(batch)


def test_nothing_scored_gives_zero_mlm_loss_not_nan():
    torch.manual_seed(0)
    model = build_model(_cfg(0.0, 1.0)).train()
    batch = _batch()
    for x in batch:
        x["mlm_labels"] = torch.full((L,), -100, dtype=torch.long)
    loss = model(batch)["loss_mlm"]
    assert float(loss) == 0.0


def test_tied_decoder_is_the_word_embedding():
    torch.manual_seed(0)
    model = build_model(_cfg(0.0, 1.0, **{"MODEL.GLIPV2.MLM.TIE_WORD_EMBEDDINGS": True}))
    decoder = model.criterion.terms["mlm"].head.decoder.weight
    assert decoder is model.language_backbone.model.get_input_embeddings().weight


def test_fusion_attention_kernel_is_picked_by_name():
    calls = []

    @register_fusion_attention("counting_eager_for_test")
    def counting(*args, **kwargs):
        calls.append(1)
        return eager_bi_attention(*args, **kwargs)

    try:
        torch.manual_seed(0)
        eager = build_model(_cfg(0.0, 0.0)).eval()
        counted = build_model(
            _cfg(0.0, 0.0, **{"MODEL.FUSION.ATTENTION_IMPL": "counting_eager_for_test"})
        ).eval()
        counted.load_state_dict(eager.state_dict())
        x = _batch()[:1]
        with torch.no_grad():
            a, b = eager(x)[0]["instances"], counted(x)[0]["instances"]
        assert calls, "the named kernel was not used"
        assert torch.equal(a.scores, b.scores) and torch.equal(
            a.pred_boxes.tensor, b.pred_boxes.tensor
        )
    finally:
        FUSION_ATTENTION_IMPLS.pop("counting_eager_for_test")
    with pytest.raises(ValueError, match="MODEL.FUSION.ATTENTION_IMPL"):
        build_model(_cfg(0.0, 0.0, **{"MODEL.FUSION.ATTENTION_IMPL": "no_such_kernel"}))


def test_a_new_loss_term_is_one_class_and_one_weight():
    class BoxCount(LossTerm):
        names = ("loss_box_count",)

        def forward(self, inputs):
            return {"loss_box_count": inputs.head.flat_centerness().sum() * 0 + inputs.num_pos_avg}

    torch.manual_seed(0)
    model = build_model(_cfg(0.0, 0.0)).train()
    model.criterion.terms["box_count"] = BoxCount()
    model.criterion.weights["loss_box_count"] = 0.5
    step = model.forward_train(_batch())
    assert set(step.losses) == {"loss_token", "loss_giou", "loss_centerness", "loss_box_count"}
    expected = 0.5 * max(float(step.assignment.num_pos), 1.0)
    assert float(step.losses["loss_box_count"]) == pytest.approx(expected)


def test_lm_head_fills_in_masked_tokens_at_test_time():
    torch.manual_seed(0)
    model = build_model(_cfg(0.0, 1.0)).eval()
    x = _batch()[0]
    x["input_ids"] = x["input_ids"].clone()
    x["input_ids"][4] = MASK_ID
    ((positions, logits),) = model.masked_token_logits([x], MASK_ID)
    assert positions.tolist() == [4]
    assert logits.shape == (1, model.language_backbone.bert_config.vocab_size)
    with pytest.raises(ValueError, match="MODEL.GLIPV2.MLM.WEIGHT"):
        build_model(_cfg(0.0, 0.0)).eval().masked_token_logits([x], MASK_ID)


@pytest.mark.parametrize("phrase_positives", [True, False])
def test_identical_phrases_of_two_captions_are_positives_only_when_asked(phrase_positives):
    """Both captions contain the phrase "red circle"; image 0's red-circle regions are positive
    with image 1's "red circle" tokens only with PHRASE_POSITIVES (their own tokens always)."""
    torch.manual_seed(0)
    cfg = _cfg(1.0, 0.0, **{"MODEL.GLIPV2.REGION_WORD.PHRASE_POSITIVES": phrase_positives})
    model = build_model(cfg).train()
    batch = [
        _item([[10, 20, 60, 90]], [0], ["red circle", "blue square"], phrase=True, seed=1),
        _item([[20, 10, 90, 70]], [1], ["green square", "red circle"], phrase=True, seed=2),
    ]
    term = model.criterion.terms["region_word"]
    term.record_state = True
    model(batch)
    state = term.last_state
    slots = state.region_valid.shape[1]
    rows0 = state.target[:slots][state.region_valid[0]]  # image 0's regions
    own, other = rows0[:, :L], rows0[:, L : 2 * L]
    assert own[:, 1:3].all() and not own[:, 4:6].any()  # its own phrase, not "blue square"
    assert bool(other[:, 4:6].all()) == phrase_positives  # image 1's "red circle" tokens
    assert not other[:, 1:3].any()  # "green square" never
