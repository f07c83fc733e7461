"""GLIPv2's L_inter on two processes (gloo) against one process on the concatenated batch."""

import socket
from datetime import timedelta

import pytest
import torch
from detectron2.engine import launch
from detectron2.utils import comm

from glip_d2.modeling.criterion.region_word import RegionWordContrastiveLoss

IMAGES, ANCHORS, TOKENS, C, D = 4, 10, 7, 5, 4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch(empty_image_rows=()):
    """Four images whose boxes and prompt entries draw their concepts from {0, 1, 2}, so that
    regions have positives in other images' prompts (and every image has padded tokens)."""
    gen = torch.Generator().manual_seed(0)
    matched = torch.randint(0, 3, (IMAGES, ANCHORS), generator=gen)
    is_pos = torch.rand(IMAGES, ANCHORS, generator=gen) < 0.5
    is_pos[list(empty_image_rows)] = False
    text_mask = torch.ones(IMAGES, TOKENS, dtype=torch.long)
    text_mask[:, -2:] = 0
    gt_concepts, gt_maps, entry_maps, entry_concepts = [], [], [], []
    for i in range(IMAGES):
        gt_concepts.append(torch.randint(-1, 3, (3,), generator=gen))
        gt_maps.append(torch.rand(3, TOKENS, generator=gen) < 0.3)
        entry_concepts.append(torch.randint(-1, 3, (1 + i % 3,), generator=gen))
        entry_maps.append(torch.rand(1 + i % 3, TOKENS, generator=gen) < 0.4)
        gt_maps[-1][:, -2:] = False
        entry_maps[-1][:, -2:] = False
    return dict(
        visual=torch.randn(IMAGES, ANCHORS, C, generator=gen),
        text=torch.randn(IMAGES, TOKENS, D, generator=gen),
        text_mask=text_mask,
        matched=matched,
        is_pos=is_pos,
        gt_concepts=gt_concepts,
        gt_token_maps=gt_maps,
        entry_maps=entry_maps,
        entry_concepts=entry_concepts,
    )


def _run(batch, images, world_size):
    """Loss, parameter gradients and input gradients on ``images`` of ``batch``."""
    torch.manual_seed(0)  # same parameters on every rank and in the reference
    module = RegionWordContrastiveLoss(visual_dim=C, text_dim=D, embed_dim=6, mode="paper")
    with torch.no_grad():
        module.log_scale.fill_(-0.5)
    part = {
        k: (v[images] if torch.is_tensor(v) else [v[i] for i in images]) for k, v in batch.items()
    }
    part["visual"] = part["visual"].clone().requires_grad_(True)
    part["text"] = part["text"].clone().requires_grad_(True)
    # The ATSS normaliser: the global positive count averaged over ranks.
    num_pos_avg = max(float(batch["is_pos"].sum()) / world_size, 1.0)
    loss = module(**part, num_pos_avg=num_pos_avg)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return dict(
        loss=loss.detach(),
        grads=grads,
        visual_grad=part["visual"].grad.clone(),
        text_grad=part["text"].grad.clone(),
    )


SCENARIOS = {
    "all_ranks_positive": (),
    "rank1_without_positives": (2, 3),
    "no_positives": (0, 1, 2, 3),
}


def _worker(out_dir):
    rank = comm.get_rank()
    halves = [[0, 1], [2, 3]]
    for name, empty_image_rows in SCENARIOS.items():
        result = _run(_batch(empty_image_rows), halves[rank], world_size=2)
        torch.save(result, out_dir / f"{name}_rank{rank}.pt")
    # Leave together: a rank exiting while gloo still serves the other rank's last collective
    # can abort it at interpreter shutdown ("terminate called without an active exception").
    comm.synchronize()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("region_word")
    launch(
        _worker,
        2,
        num_machines=1,
        machine_rank=0,
        dist_url=f"tcp://127.0.0.1:{_free_port()}",
        args=(out_dir,),
        timeout=timedelta(seconds=60),  # a rank stuck in a collective fails instead of hanging
    )
    return out_dir


def _check_two_processes_equal_one(out_dir, name):
    ranks = [torch.load(out_dir / f"{name}_rank{r}.pt", weights_only=True) for r in range(2)]
    full = _run(_batch(SCENARIOS[name]), [0, 1, 2, 3], world_size=1)
    assert float(full["loss"]) > 0
    for r in ranks:
        assert torch.isfinite(r["loss"])
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    torch.testing.assert_close(mean_loss, full["loss"], atol=1e-6, rtol=0)
    # DistributedDataParallel averages parameter gradients over ranks.
    for param, grad in full["grads"].items():
        mean = (ranks[0]["grads"][param] + ranks[1]["grads"][param]) / 2
        torch.testing.assert_close(mean, grad, atol=1e-6, rtol=0, msg=param)
    # Each rank's inputs get the gradient of the sum of both ranks' losses (= 2 x the mean).
    for key in ("visual_grad", "text_grad"):
        local = torch.cat([ranks[0][key], ranks[1][key]])
        torch.testing.assert_close(local / 2, full[key], atol=1e-6, rtol=0, msg=key)


def test_two_processes_equal_one_process_on_the_concatenated_batch(two_process_results):
    _check_two_processes_equal_one(two_process_results, "all_ranks_positive")


def test_rank_without_positives_does_not_hang(two_process_results):
    # Rank 1 holds images 2 and 3, neither of which has an ATSS positive; both ranks still
    # finished (the launch above would time out otherwise) and agree with one process.
    _check_two_processes_equal_one(two_process_results, "rank1_without_positives")


def test_no_positive_on_any_rank_gives_zero_loss(two_process_results):
    for r in range(2):
        result = torch.load(two_process_results / f"no_positives_rank{r}.pt", weights_only=True)
        assert float(result["loss"]) == 0.0
        for name, grad in result["grads"].items():  # defined (DDP needs them) and zero
            assert torch.equal(grad, torch.zeros_like(grad)), name
