"""Two-process training on CPU (gloo) through Detectron2's launch."""

import socket
from pathlib import Path

import pytest
import torch
from detectron2.engine import launch
from detectron2.utils import comm

ROOT = Path(__file__).resolve().parents[2]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_steps(out_dir, config_file, opts):
    """Train ``config_file`` (relative to configs/) for two iterations in this process; the
    model's state dict afterwards."""
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config
    from glip_d2.engine import GLIPTrainer

    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them)
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / "configs" / config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(out_dir)
    cfg.DATASETS.TEST = ()
    # Two iterations: DistributedDataParallel reports a parameter without a gradient at the
    # start of the second one.
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH = 2, 2
    cfg.SEED = 7
    trainer = GLIPTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}


def _worker(out_dir):
    from glip_d2.modeling.head.atss import GLIPBoxCoder, grid_anchors
    from glip_d2.modeling.head.loss import glip_losses

    rank = comm.get_rank()
    opts = ["DATASETS.TRAIN", ("glip_shapes_train",)]
    state = _train_two_steps(out_dir, "quick_schedules/glip_tiny.yaml", opts)

    # Loss normaliser: rank 0 has one box, rank 1 two; both divide by the global mean count.
    anchors = grid_anchors([(8, 8)], [8], [32], torch.device("cpu"))
    boxes = [
        torch.tensor([[4.0, 4.0, 30.0, 30.0]]),
        torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 30.0, 60.0, 60.0]]),
    ][rank]
    maps = torch.zeros(len(boxes), 8)
    maps[:, 1] = 1
    logits = torch.linspace(-3, 3, 64 * 8).reshape(1, 64, 8)
    args = (
        logits,
        torch.zeros(1, 64, 4),
        torch.zeros(1, 64),
        anchors,
        [boxes],
        [maps],
        torch.ones(1, 8, dtype=torch.long),
        GLIPBoxCoder(),
    )
    kw = dict(topk=9, focal_alpha=0.25, focal_gamma=2.0, token_loss_weight=1.0, reg_loss_weight=2.0)
    losses = glip_losses(*args, **kw)
    torch.save({"state": state, "loss_token": losses["loss_token"]}, out_dir / f"rank{rank}.pt")


def test_two_processes_end_with_identical_weights(tmp_path):
    launch(
        _worker,
        2,
        num_machines=1,
        machine_rank=0,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(tmp_path,),
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key

    # Single-process check of the normaliser: the same loss with the positive counts of both
    # ranks, recomputed here as sum(focal) / mean(num_pos over ranks).
    from glip_d2.modeling.head.atss import atss_assign, grid_anchors
    from glip_d2.modeling.head.loss import token_sigmoid_focal_loss

    anchors = grid_anchors([(8, 8)], [8], [32], torch.device("cpu"))
    counts = []
    for boxes in (
        torch.tensor([[4.0, 4.0, 30.0, 30.0]]),
        torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 30.0, 60.0, 60.0]]),
    ):
        counts.append(int(atss_assign(anchors, boxes, 9)[1].sum()))
    assert counts[0] != counts[1]
    logits = torch.linspace(-3, 3, 64 * 8).reshape(1, 64, 8)
    for rank, result in enumerate((r0, r1)):
        boxes = [
            torch.tensor([[4.0, 4.0, 30.0, 30.0]]),
            torch.tensor([[4.0, 4.0, 30.0, 30.0], [34.0, 30.0, 60.0, 60.0]]),
        ][rank]
        matched, pos = atss_assign(anchors, boxes, 9)
        target = torch.zeros(64, 8)
        target[pos, 1] = 1
        target[~pos, -1] = 1
        focal = token_sigmoid_focal_loss(logits[0], target, 0.25, 2.0).sum()
        expected = focal / (sum(counts) / 2)
        torch.testing.assert_close(result["loss_token"], expected)


def _quickstart_worker(out_dir, fusion_type):
    # The quick start as the README runs it, on smaller images. With fusion on (the config's
    # earlier form, GLIP-T (C)-like but with the dot product on the language backbone's
    # features), the last fusion block's text-side update would reach no loss.
    opts = ["INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128, "DATALOADER.NUM_WORKERS", 0]
    opts += ["MODEL.FUSION.TYPE", fusion_type] if fusion_type else []
    state = _train_two_steps(out_dir, "quickstart/glip_tiny_shapes.yaml", opts)
    torch.save(state, out_dir / f"rank{comm.get_rank()}.pt")


@pytest.mark.parametrize("fusion_type", [None, "MHA-B"], ids=["as_shipped", "with_fusion"])
def test_quickstart_config_trains_on_two_processes(tmp_path, fusion_type):
    _assert_ranks_end_identical(_quickstart_worker, tmp_path, fusion_type)


def _assert_ranks_end_identical(worker, tmp_path, *args):
    """Run ``worker(tmp_path, *args)`` on two gloo processes; both saved state dicts
    (``rank{r}.pt``) must be equal. Returns rank 0's."""
    launch(
        worker,
        2,
        num_machines=1,
        machine_rank=0,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(tmp_path, *args),
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for key, value in r0.items():
        assert torch.equal(value, r1[key]), key
    return r0


def _glipv2_worker(out_dir):
    # GLIPv2 quick start: fusion, L_inter (all-gathered every step) and L_mlm (the fused text
    # update of the last block reaches the LM head). Every parameter must get a gradient on
    # both ranks, and the collectives must line up, or DDP fails or hangs.
    opts = ["INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128, "DATALOADER.NUM_WORKERS", 0]
    state = _train_two_steps(out_dir, "glipv2/glipv2_tiny_shapes.yaml", opts)
    torch.save(state, out_dir / f"rank{comm.get_rank()}.pt")


def test_glipv2_quickstart_config_trains_on_two_processes(tmp_path):
    r0 = _assert_ranks_end_identical(_glipv2_worker, tmp_path)
    assert any(k.startswith("criterion.terms.region_word.") for k in r0)
