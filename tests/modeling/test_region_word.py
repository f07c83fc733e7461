"""GLIPv2's inter-image region-word contrastive loss (L_inter) on one process."""

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from glip_d2.modeling.criterion.region_word import RegionWordContrastiveLoss

FIXTURE = (
    Path(
        os.environ.get("GLIP_TRAIN_PARITY_FIXTURE", "/work/shared/reference/train_parity/glip")
    ).parent
    / "v2_contrastive_mlm"
)

PERSON, DOG, RED_DOG = 10, 11, 20  # concept keys (the mapper's normalised entry texts)


def _maps(rows, length):
    out = torch.zeros(len(rows), length, dtype=torch.bool)
    for r, tokens in enumerate(rows):
        out[r, list(tokens)] = True
    return out


def _hand_made_batch():
    """Three images, 8 anchors, 6 token slots (the last one padding).

    Image 0, detection prompt "[CLS] person . dog [SEP]": entries person (token 1), dog (3);
    boxes person (GT 0, anchors 0 and 1) and dog (GT 1, anchor 2).
    Image 1, caption "[CLS] red dog person [SEP]": phrases "red dog" (1-2) and "person" (3,
    the same concept as the category name of image 0); boxes red dog (GT 0, anchor 3) and
    person (GT 1, anchors 4 and 5).
    Image 2, caption "[CLS] the red dog [SEP]": phrase "red dog" (2-3, repeated from image 1),
    the category name "dog" (3, overlapping it) and "the" (1) without concept; boxes red dog
    (GT 0, anchor 0) and an unlabelled box (concept -1) whose span is "the" (GT 1, anchor 6).
    """
    L, A = 6, 8
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]] * 3)
    entry_maps = [_maps([[1], [3]], L), _maps([[1, 2], [3]], L), _maps([[2, 3], [3], [1]], L)]
    entry_concepts = [
        torch.tensor([PERSON, DOG]),
        torch.tensor([RED_DOG, PERSON]),
        torch.tensor([RED_DOG, DOG, -1]),
    ]
    gt_concepts = [
        torch.tensor([PERSON, DOG]),
        torch.tensor([RED_DOG, PERSON]),
        torch.tensor([RED_DOG, -1]),
    ]
    gt_token_maps = [_maps([[1], [3]], L), _maps([[1, 2], [3]], L), _maps([[2, 3], [1]], L)]
    matched = torch.full((3, A), 7)  # any value where not positive
    is_pos = torch.zeros(3, A, dtype=torch.bool)
    for i, a, g in [
        (0, 0, 0),
        (0, 1, 0),
        (0, 2, 1),
        (1, 3, 0),
        (1, 4, 1),
        (1, 5, 1),
        (2, 0, 0),
        (2, 6, 1),
    ]:
        matched[i, a], is_pos[i, a] = g, True
    gen = torch.Generator().manual_seed(0)
    return dict(
        visual=torch.randn(3, A, 5, generator=gen),
        text=torch.randn(3, L, 4, generator=gen),
        text_mask=mask,
        matched=matched,
        is_pos=is_pos,
        gt_concepts=gt_concepts,
        gt_token_maps=gt_token_maps,
        entry_maps=entry_maps,
        entry_concepts=entry_concepts,
        num_pos_avg=float(is_pos.sum()),
    )


def _module(mode="paper", cap=100):
    torch.manual_seed(0)
    module = RegionWordContrastiveLoss(
        visual_dim=5, text_dim=4, embed_dim=6, mode=mode, max_regions_per_image=cap
    )
    with torch.no_grad():
        module.log_scale.fill_(-0.7)  # temperature 0.5: a non-trivial scale
        module.projection_image.bias.normal_()
        module.projection_text.bias.normal_()
    return module


def _dense_paper_loss(module, batch):
    """L_inter of the paper mode, written out with loops over regions and tokens (float64)."""
    w_i, b_i = module.projection_image.weight.double(), module.projection_image.bias.double()
    w_t, b_t = module.projection_text.weight.double(), module.projection_text.bias.double()
    tau = math.exp(float(module.log_scale))
    B, A, _ = batch["visual"].shape
    L = batch["text"].shape[1]
    regions = [(i, a) for i in range(B) for a in range(A) if batch["is_pos"][i, a]]
    tokens = [(j, t) for j in range(B) for t in range(L) if batch["text_mask"][j, t]]

    def positive(i, a, j, t):
        g = int(batch["matched"][i, a])
        concept = int(batch["gt_concepts"][i][g])
        if i == j and batch["gt_token_maps"][i][g, t]:
            return True
        if concept < 0:
            return False
        for k in range(len(batch["entry_concepts"][j])):
            if batch["entry_maps"][j][k, t] and int(batch["entry_concepts"][j][k]) == concept:
                return True
        return False

    emb_r = {
        r: F.normalize(w_i @ batch["visual"][r[0], r[1]].double() + b_i, dim=0) for r in regions
    }
    emb_t = {k: F.normalize(w_t @ batch["text"][k[0], k[1]].double() + b_t, dim=0) for k in tokens}
    sim = {(r, k): float(emb_r[r] @ emb_t[k]) / tau for r in regions for k in tokens}
    pos = {(r, k): positive(*r, *k) for r in regions for k in tokens}

    region_to_token = 0.0
    for r in regions:
        positives = [k for k in tokens if pos[r, k]]
        log_z = math.log(sum(math.exp(sim[r, k]) for k in tokens))
        for k in positives:
            region_to_token -= (sim[r, k] - log_z) / len(positives)
    token_to_region = 0.0
    for k in tokens:
        positives = [r for r in regions if pos[r, k]]
        log_z = math.log(sum(math.exp(sim[r, k]) for r in regions))
        for r in positives:
            token_to_region -= (sim[r, k] - log_z) / len(positives)
    loss = (region_to_token + token_to_region) / 2 / batch["num_pos_avg"]
    return loss, region_to_token, token_to_region, pos


def test_paper_mode_equals_dense_computation():
    batch = _hand_made_batch()
    module = _module("paper")
    loss, state = module(**batch, return_state=True)
    expected, r2t, t2r, pos = _dense_paper_loss(module, batch)

    # Every ATSS positive is a region, the first GT box's anchors included.
    assert int(state.region_valid.sum()) == int(batch["is_pos"].sum())
    assert bool((batch["matched"][state.region_valid.nonzero(as_tuple=True)] == 0).any())
    # Target matrix: local rows (image-major slots) x tokens (image-major), pads all False.
    B, M = state.region_valid.shape
    L = batch["text"].shape[1]
    for i in range(B):
        for s in range(M):
            row = state.target[i * M + s]
            if not state.region_valid[i, s]:
                assert not row.any()
                continue
            a = int(state.anchor_indices[i, s])
            for j in range(B):
                for t in range(L):
                    want = pos.get(((i, a), (j, t)), False)
                    assert bool(row[j * L + t]) == want, (i, a, j, t)
    # The facts the batch was built for.
    assert pos[(0, 0), (1, 3)]  # person box of image 0 <-> "person" phrase of image 1
    assert pos[(1, 3), (2, 2)] and pos[(1, 3), (2, 3)]  # repeated phrase "red dog"
    assert pos[(0, 2), (2, 3)]  # category "dog" overlapping the phrase "red dog"
    assert pos[(2, 6), (2, 1)] and not pos[(2, 6), (0, 1)]  # unlabelled box: own span only
    assert sum(pos[(1, 3), k] for k in [(j, t) for j in range(3) for t in range(5)]) == 4

    torch.testing.assert_close(
        state.loss_region_to_token.double(), torch.tensor(r2t).double(), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(
        state.loss_token_to_region.double(), torch.tensor(t2r).double(), rtol=1e-5, atol=0
    )
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), torch.tensor(expected).double(), rtol=1e-5, atol=0)


def test_paper_mode_is_independent_of_padding_and_region_order():
    """Padding rows are masked: a batch whose third image has no positive (so every other
    image is padded further) gives the dense loss too."""
    batch = _hand_made_batch()
    batch["is_pos"][2] = False
    batch["num_pos_avg"] = float(batch["is_pos"].sum())
    module = _module("paper")
    loss, state = module(**batch, return_state=True)
    assert not state.region_valid[2].any()
    expected = _dense_paper_loss(module, batch)[0]
    torch.testing.assert_close(loss.double(), torch.tensor(expected).double(), rtol=1e-5, atol=0)


def test_code_mode_drops_the_first_gt_box_and_pads_with_negative_anchors():
    batch = _hand_made_batch()
    # The span of image 2's second box ("the") now differs from its concept's entry ("dog",
    # token 3): the official own-image block keeps the span only.
    batch["gt_concepts"][2] = torch.tensor([RED_DOG, DOG])
    _, state = _module("code")(**batch, return_state=True)
    B, M = state.region_valid.shape
    for i in range(B):
        kept = state.anchor_indices[i][state.region_valid[i]]
        expected = torch.nonzero(batch["is_pos"][i] & (batch["matched"][i] >= 1)).view(-1)
        assert torch.equal(kept, expected)
        pads = state.anchor_indices[i][~state.region_valid[i]]
        assert len(pads) == M - len(kept)
        assert not (batch["is_pos"][i] & (batch["matched"][i] >= 1))[pads].any()
        assert (state.region_concepts[i][~state.region_valid[i]] == -100).all()
        # Own-image block = the GT boxes' spans (overwritten, official), pads all False.
        L = batch["text"].shape[1]
        own = state.target[i * M : (i + 1) * M, i * L : (i + 1) * L]
        spans = batch["gt_token_maps"][i][batch["matched"][i, kept]]
        assert torch.equal(own[: len(kept)], spans) and not own[len(kept) :].any()
    # Cross-image: by concept only. Image 1's person box (anchor 4) meets image 0's "person".
    row = state.target[1 * M + 0]
    assert int(state.anchor_indices[1, 0]) == 4 and row[0 * 6 + 1] and row.sum() == 2


def test_cap_draws_sorted_subsets_reproducibly():
    batch = _hand_made_batch()
    module = _module("code", cap=1)
    states = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(3)
        states.append(module(**batch, generator=gen, return_state=True)[1])
    assert torch.equal(states[0].anchor_indices, states[1].anchor_indices)
    # Image 1 has two candidates (anchors 4, 5 of GT 1): one is kept; its pads exclude both.
    kept = states[0].anchor_indices[1][states[0].region_valid[1]]
    assert len(kept) == 1 and int(kept) in (4, 5)
    pads = states[0].anchor_indices[1][~states[0].region_valid[1]]
    assert not set(pads.tolist()) & {4, 5}


def test_autocast_does_not_lower_the_precision():
    batch = _hand_made_batch()
    module = _module("paper")
    expected = module(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(**batch)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)


def test_no_positive_anywhere_gives_zero_loss_with_gradients():
    batch = _hand_made_batch()
    batch["is_pos"][:] = False
    batch["num_pos_avg"] = 1.0
    batch["visual"].requires_grad_(True)
    for mode in ("paper", "code"):
        module = _module(mode)
        loss = module(**batch)
        assert torch.isfinite(loss) and float(loss) == 0.0
        loss.backward()
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert batch["visual"].grad is not None


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="MODEL.GLIPV2.REGION_WORD.MODE"):
        RegionWordContrastiveLoss(visual_dim=5, text_dim=4, mode="papr")
    batch = _hand_made_batch()
    module = _module("paper")
    with pytest.raises(ValueError, match="num_pos_avg"):
        module(**{**batch, "num_pos_avg": 0.0})
    bad = [m.clone() for m in batch["entry_maps"]]
    bad[1][0, 5] = True  # a padded token
    with pytest.raises(ValueError, match=r"entry_maps\[1\]"):
        module(**{**batch, "entry_maps": bad})


def _fixture_inputs():
    if not FIXTURE.is_dir():
        pytest.skip(f"no fixture folder {FIXTURE}")
    load = lambda name: torch.load(FIXTURE / name, weights_only=False)  # noqa: E731
    inputs, outputs, extra = load("inputs.pth"), load("outputs.pth"), load("model_extra.pth")
    return inputs, outputs, extra


def test_code_mode_matches_official_fixture():
    inputs, outputs, extra = _fixture_inputs()
    sc, atss = outputs["shallow_contrastive"], outputs["atss"]
    matched = atss["matched_gt_index"]  # -1 = not positive
    is_pos = matched >= 0
    B, A = matched.shape
    for i in range(B):  # the official candidates: nonzero(matched index) over all anchors
        candidates = torch.nonzero(is_pos[i] & (matched[i] >= 1)).view(-1)
        assert candidates.tolist() == list(map(int, sc["positive_indices_before_cap"][i]))

    positive_map = inputs["positive_map"].bool()
    owner = inputs["positive_map_box_to_image"]
    L = positive_map.shape[1]
    gt_concepts = [t["original_od_label"].long() for t in inputs["targets"]]
    gt_token_maps = [positive_map[owner == i] for i in range(B)]
    entry_maps, entry_concepts = [], []
    for t in inputs["targets"]:
        token_label = t["positive_map_for_od_labels"].long()
        concepts = token_label[token_label >= 0].unique()
        entry_concepts.append(concepts)
        entry_maps.append(token_label[None, :] == concepts[:, None])

    feats, rows = sc["shallow_img_emb_feats"], sc["selected_anchor_indices"]
    visual = torch.zeros(B, A, feats.shape[-1])
    for i in range(B):
        visual[i, rows[i]] = feats[i]
    tokens = sc["proj_tokens_normalized"]
    text = torch.zeros(B, L, tokens.shape[-1])
    text[:, : tokens.shape[1]] = tokens

    prefix = "rpn.loss_evaluator."
    weight = extra[prefix + "shallow_contrastive_projection_image.weight"]
    max_pos = yaml.safe_load((FIXTURE / "config.yaml").read_text())["MODEL"]["DYHEAD"][
        "FUSE_CONFIG"
    ]["SHALLOW_MAX_POSITIVE_ANCHORS"]
    module = RegionWordContrastiveLoss(
        visual_dim=weight.shape[1],
        text_dim=extra[prefix + "shallow_contrastive_projection_text.weight"].shape[1],
        embed_dim=weight.shape[0],
        mode="code",
        max_regions_per_image=max_pos,
    )
    module.load_state_dict(
        {
            "projection_image.weight": weight,
            "projection_image.bias": extra[prefix + "shallow_contrastive_projection_image.bias"],
            "projection_text.weight": extra[prefix + "shallow_contrastive_projection_text.weight"],
            "projection_text.bias": extra[prefix + "shallow_contrastive_projection_text.bias"],
            "log_scale": extra[prefix + "shallow_log_scale"],
        }
    )
    injected = inputs["injected"]
    selection = list(
        zip(injected["shallow_selected_positive_indices"], injected["shallow_negative_pad_indices"])
    )
    loss, state = module(
        visual=visual,
        text=text,
        text_mask=inputs["attention_mask"],
        matched=matched,
        is_pos=is_pos,
        gt_concepts=gt_concepts,
        gt_token_maps=gt_token_maps,
        entry_maps=entry_maps,
        entry_concepts=entry_concepts,
        num_pos_avg=float(max(atss["num_pos"], 1)),
        selection=selection,
        return_state=True,
    )
    assert int(is_pos.sum()) == int(atss["num_pos"])
    assert torch.equal(state.anchor_indices, rows)
    assert torch.equal(state.region_concepts, sc["region_labels"].long())
    assert torch.equal(state.token_labels, sc["token_labels"].long())
    assert torch.equal(state.target, sc["target_matrix"].bool())
    torch.testing.assert_close(state.logits, sc["logits"].float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, sc["loss"].float(), rtol=1e-5, atol=0)
