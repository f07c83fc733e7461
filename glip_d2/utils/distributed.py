"""Collectives for losses that compare samples across processes (GLIPv2's L_inter).

Every function here is a collective on the default process group: every rank must call it, in
the same order, with tensors of the same shape. Without an initialised process group, or with
one process, they are the identity (``global_max_int`` returns its argument).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_with_grad", "all_gather_no_grad", "global_max_int", "global_max_ints"]


def _world_size() -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every rank's loss may depend on this rank's rows: their total gradient is the sum of
        # the gradients all ranks computed for them.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, differentiably.

    Rank ``k`` holds rows ``k * n : (k + 1) * n`` of the result (``n = x.shape[0]``). In the
    backward pass the incoming gradients are summed over ranks (all-reduce) and each rank keeps
    the slice of its own rows. Each rank's slice thus receives the gradient of the *sum* of all
    ranks' losses, ``d(sum_j L_j)/dx_k``. DistributedDataParallel then averages the parameter
    gradients over ranks, which gives the gradient of ``mean_j L_j``: N processes reproduce one
    process on the concatenated batch whenever the single-process loss equals the mean of the
    per-rank losses (e.g. per-rank sums divided by a normaliser averaged over ranks). (Gathering
    without the all-reduce, as the official GLIP code does by re-inserting the local tensor into
    a plain ``all_gather``, keeps only ``dL_k/dx_k`` and under-counts the cross-rank terms.)

    Args:
        x (Tensor): ``(n, ...)``, the same shape and dtype on every rank.

    Returns:
        Tensor: ``(world_size * n, ...)``; ``x`` itself without a process group or with one
        process.
    """
    if _world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0 (no gradient).

    Args:
        x (Tensor): ``(n, ...)``, the same shape and dtype on every rank; bool tensors are sent
            as uint8 (not every backend takes bool) and come back as bool.

    Returns:
        Tensor: ``(world_size * n, ...)``, rank-major; ``x`` without a process group.
    """
    if _world_size() == 1:
        return x
    send = x.to(torch.uint8) if x.dtype == torch.bool else x
    send = send.contiguous()
    parts = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, send)
    out = torch.cat(parts, dim=0)
    return out.bool() if x.dtype == torch.bool else out


def global_max_ints(values: Sequence[int], device: torch.device | str = "cpu") -> List[int]:
    """Element-wise maximum over ranks of a few integers (one all-reduce MAX).

    Args:
        values (sequence of int): the same length on every rank.
        device: where the reduction runs; must suit the backend (CUDA for NCCL).

    Returns:
        list of int: the maxima; ``list(values)`` without a process group.
    """
    if _world_size() == 1:
        return [int(v) for v in values]
    t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def global_max_int(v: int, device: torch.device | str = "cpu") -> int:
    """The maximum of ``v`` over ranks (all-reduce MAX); every rank must call it.

    Args:
        v (int): this rank's value.
        device: where the reduction runs; must suit the backend (CUDA for NCCL).

    Returns:
        int: the maximum; ``v`` without a process group.
    """
    return global_max_ints([v], device=device)[0]
