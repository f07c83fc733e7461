"""Helpers for the tests that read official recorded fixtures (``../shared/reference``)."""

from __future__ import annotations

from pathlib import Path


def convert_fixture_config(fixture: Path, out_dir: Path):
    """The glip_d2 config of an official recorded fixture folder, converted from its
    ``config.yaml`` and ``bert_config.json`` by ``tools/convert_glip_config.py`` (CPU, not
    frozen)."""
    import subprocess
    import sys

    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    root = Path(__file__).resolve().parents[1]
    out = out_dir / f"{fixture.name}.yaml"
    cmd = [
        sys.executable,
        str(root / "tools" / "convert_glip_config.py"),
        str(fixture / "config.yaml"),
        "-o",
        str(out),
        "--bert-config",
        str(fixture / "bert_config.json"),
        "--quiet",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(out))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def train_parity_batch(cfg, inputs, image_tensor):
    """Detectron2 input dicts of a recorded training batch (``train_parity`` format): the
    official network input un-normalised back to pixels, the inclusive boxes in Detectron2's
    continuous convention (+1), the 0/1 box token maps.

    Every image also gets the prompt fields the GLIPv2 region-word loss reads, rebuilt from
    the recorded official labels: detection-style images (``original_od_label`` >= 0) get one
    prompt entry per od label of the prompt (its tokens: ``positive_map_for_od_labels`` ==
    label; class id: the label), caption images (-10) one entry per distinct box token map.
    """
    import torch
    from detectron2.structures import Boxes, Instances

    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    box_image = torch.as_tensor(inputs["positive_map_box_to_image"])
    batch = []
    for i, target in enumerate(inputs["targets"]):
        h, w = (int(v) for v in inputs["image_sizes_hw"][i])
        image = image_tensor[i, :, :h, :w] * std + mean
        if cfg.INPUT.FORMAT == "RGB":
            image = image.flip(0)
        boxes = target["boxes_xyxy"].clone()
        boxes[:, 2:] += 1
        box_maps = inputs["positive_map"][box_image == i] > 0
        assert len(box_maps) == len(boxes), f"positive_map rows of image {i}"
        od = torch.as_tensor(target["original_od_label"]).long()
        if bool((od >= 0).all()):
            token_od = torch.as_tensor(target["positive_map_for_od_labels"]).long()
            labels = sorted(set(token_od[token_od >= 0].tolist()))
            entry_maps = torch.stack([token_od == c for c in labels])
            class_ids = torch.tensor(labels)
            entry_of_box = torch.tensor([labels.index(c) for c in od.tolist()])
            is_phrase = torch.zeros(len(labels), dtype=torch.bool)
        else:
            rows = sorted({tuple(r.nonzero().flatten().tolist()) for r in box_maps})
            entry_maps = torch.zeros(len(rows), box_maps.shape[1], dtype=torch.bool)
            for k, r in enumerate(rows):
                entry_maps[k, list(r)] = True
            class_ids = torch.arange(len(rows))
            entry_of_box = torch.tensor(
                [rows.index(tuple(r.nonzero().flatten().tolist())) for r in box_maps]
            )
            is_phrase = torch.ones(len(rows), dtype=torch.bool)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_positive_map = box_maps
        inst.gt_prompt_entry = entry_of_box
        batch.append(
            {
                "image": image,
                "height": h,
                "width": w,
                "image_id": i,
                "input_ids": inputs["input_ids"][i],
                "attention_mask": inputs["attention_mask"][i],
                "positive_map": entry_maps,
                "prompt_class_ids": class_ids,
                "prompt_is_phrase": is_phrase,
                "instances": inst,
            }
        )
    return batch


def extra_fixture_step_inputs(fixture: Path, cfg):
    """Model and batch of a GLIPv2 ``train_parity`` part (``v2_contrastive_mlm``, ``v2_mask``):
    ``cfg`` with every dropout off, the model in train mode with ``../glip/model.pth`` updated
    by the part's ``model_extra.pth`` (strictly: nothing missing or unexpected), and the batch
    on the part's crop of the ``glip`` image tensor.

    Returns:
        (model, inputs, batch): ``inputs`` is the part's ``inputs.pth``.
    """
    import torch
    from detectron2.modeling import build_model

    def load(path):
        return torch.load(path, map_location="cpu", weights_only=False)

    cfg.MODEL.FUSION.DROPOUT = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.0
    cfg.MODEL.GLIP_FPN.DROP_BLOCK = False
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg)
    inputs = load(fixture / "inputs.pth")
    base = load((fixture / inputs["image_tensor_from"]).parent / "model.pth")
    base.update(load(fixture / "model_extra.pth"))
    incompatible = model.load_state_dict(base, strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == [], incompatible
    model.train()
    glip_inputs = load(fixture / inputs["image_tensor_from"])
    n, h, w = inputs["image_tensor_crop_nhw"]
    batch = train_parity_batch(cfg, inputs, glip_inputs["image_tensor"][:n, :, :h, :w])
    return model, inputs, batch


def official_gradients(grads_file, allow_low_rank: bool = True):
    """Official gradients of a ``train_parity`` ``grads.pth`` as dense tensors under our
    parameter names, and our names of the parameters without gradient. Row-sparse entries are
    expanded; low-rank ones (the MLM decoder) are ``A_dlogits^T @ B_decoder_input``, which
    the fixture README states is exactly the gradient."""
    import torch

    from glip_d2.utils.checkpoint import convert_official_state_dict

    recorded = torch.load(grads_file, map_location="cpu", weights_only=False)
    dense = dict(recorded["dense"])
    for name, sparse in recorded["row_sparse"].items():
        full = torch.zeros(sparse["shape"], dtype=sparse["values"].dtype)
        full[torch.as_tensor(sparse["rows"])] = sparse["values"]
        dense[name] = full
    low_rank = recorded.get("low_rank") or {}
    assert allow_low_rank or not low_rank, "low-rank gradients are not part of plain GLIP"
    for name, low in low_rank.items():
        dense[name] = low["A_dlogits"].t() @ low["B_decoder_input"]
    converted, regenerated, dropped = convert_official_state_dict(dense)
    assert not regenerated and not dropped, (list(regenerated), dropped)
    no_grad, _, _ = convert_official_state_dict(dict.fromkeys(recorded["none_grad_params"]))
    return converted, list(no_grad)


def assert_gradients_match(ours, ref, no_grad, *, atol_factor, rtol, rel_l2, significant):
    """Per-tensor gradient check with the ``train_parity`` README's tolerances: ``atol =
    atol_factor x`` the largest official gradient magnitude plus ``rtol``, and a relative L2
    error <= ``rel_l2`` for tensors whose max |grad| >= ``significant`` x that maximum. BERT
    ``key.bias`` gradients are mathematically zero (softmax shift invariance): absolute bound
    only. Frozen parameters (``no_grad``) must have no gradient."""
    import torch

    for name in no_grad:
        assert ours[name] is None, f"{name} has a gradient; the official model freezes it"
    global_max = max(float(g.abs().max()) for g in ref.values())
    atol = atol_factor * global_max
    for name, expected in ref.items():
        got = ours[name]
        assert got is not None, f"{name} got no gradient"
        tensor_rtol = 0.0 if name.endswith("key.bias") else rtol
        torch.testing.assert_close(
            got, expected, atol=atol, rtol=tensor_rtol, msg=lambda m, n=name: f"grad of {n}: {m}"
        )
        if tensor_rtol and float(expected.abs().max()) >= significant * global_max:
            rel = float((got - expected).norm() / expected.norm())
            assert rel <= rel_l2, f"grad of {name}: relative L2 error {rel:.2e}"
