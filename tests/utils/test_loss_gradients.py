"""Per-loss gradient norms (glip_d2.utils.loss_gradients, tools/loss_gradient_norms.py) equal
the hand-derived gradients, and the clip scale is what full-model clipping applies."""

import pytest
import torch

from glip_d2.utils.loss_gradients import clip_scale, loss_gradient_norms


def _setup():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    u = torch.nn.Parameter(torch.tensor([3.0]))
    x1 = torch.tensor([0.3, 0.4, -1.2])
    x2 = torch.tensor([2.0, 1.0, 0.0])
    losses = {
        "loss_a": (w * x1).sum(),  # d/dw = x1
        "loss_b": 0.5 * (w * x2).sum() ** 2,  # d/dw = (w.x2) x2
        "loss_c": 2.0 * u.sum() ** 2,  # d/du = 4u; no gradient to w
    }
    return w, u, x1, x2, losses


def test_norms_per_loss_per_group_and_all_equal_the_hand_derived_gradients():
    w, u, x1, x2, losses = _setup()
    ga = x1
    gb = (w.detach() @ x2) * x2
    gc = 4 * u.detach()
    norms = loss_gradient_norms(losses, [w, u])
    assert norms["loss_a"] == pytest.approx(float(ga.norm()))
    assert norms["loss_b"] == pytest.approx(float(gb.norm()))
    assert norms["loss_c"] == pytest.approx(float(gc.norm()))
    everything = torch.cat([ga + gb, gc])
    assert norms["all"] == pytest.approx(float(everything.norm()))

    grouped = loss_gradient_norms(losses, [w, u], {"ab": ["loss_a", "loss_b"], "x": ["nope"]})
    assert set(grouped) == {"ab", "all"}  # a group with no present loss is left out
    assert grouped["ab"] == pytest.approx(float((ga + gb).norm()))
    # "all" still counts the ungrouped loss_c
    assert grouped["all"] == pytest.approx(float(everything.norm()))
    # the graph is kept: the step can still be taken
    sum(losses.values()).backward()
    assert torch.allclose(w.grad, ga + gb) and torch.allclose(u.grad, gc)


def test_clip_scale_is_what_full_model_clipping_applies():
    w, u, _, _, losses = _setup()
    norms = loss_gradient_norms(losses, [w, u])
    sum(losses.values()).backward()
    before = [w.grad.clone(), u.grad.clone()]
    torch.nn.utils.clip_grad_norm_([w, u], 1.0)
    scale = clip_scale(norms["all"], 1.0)
    assert scale < 1.0
    assert torch.allclose(w.grad, before[0] * scale) and torch.allclose(u.grad, before[1] * scale)
    assert clip_scale(0.5, 1.0) == 1.0


def test_no_losses_is_an_error():
    with pytest.raises(ValueError, match="no losses"):
        loss_gradient_norms({}, [torch.nn.Parameter(torch.zeros(1))])


def test_tool_reports_every_loss_group_and_the_clip_scale_of_their_sum(capsys):
    # tools/loss_gradient_norms.py on the GLIPv2 quick-start config, one small batch: one
    # JSON line per batch with the grounding group, the two GLIPv2 terms, "all" and the clip
    # scale that SOLVER.CLIP_GRADIENTS (full_model, 1.0) gives it, then the means.
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "loss_gradient_norms", root / "tools" / "loss_gradient_norms.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    opts = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128"]
    opts += ["SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    config = str(root / "configs" / "glipv2" / "glipv2_tiny_shapes.yaml")
    assert tool.main(["--config-file", config, "--iters", "1", *opts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["iter"] == 0
    row, mean = lines[0], lines[1]["mean"]
    assert {"grounding", "loss_region_word", "loss_mlm", "all", "clip_scale"} <= set(row)
    assert not any(k in row for k in ("loss_token", "loss_giou", "loss_centerness"))
    parts = [row["grounding"], row["loss_region_word"], row["loss_mlm"]]
    assert all(v > 0 for v in parts)
    # the norm of a sum is at most the sum of the norms, and at least their spread
    assert max(parts) - sum(sorted(parts)[:-1]) - 1e-3 <= row["all"] <= sum(parts) + 1e-3
    assert row["clip_scale"] == pytest.approx(min(1.0, 1.0 / row["all"]), abs=1e-4)
    assert mean == {k: v for k, v in row.items() if k != "iter"}

    with pytest.raises(SystemExit):
        tool.main(["--config-file", config, "--iters", "0"])
