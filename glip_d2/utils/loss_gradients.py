"""Gradient norms of each training loss, for choosing loss weights.

With full-model gradient clipping (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``, GLIP's
default at 1.0) every parameter's step is scaled by ``CLIP_VALUE / ||g||`` of the *summed*
gradient. A loss whose gradient norm is much larger than the others' therefore also shrinks
their steps, even for parameters it does not reach. :func:`loss_gradient_norms` measures the
L2 norm of each loss's gradient (its weighted value as the model returns it) and of their sum.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch

__all__ = ["loss_gradient_norms", "clip_scale"]


def loss_gradient_norms(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.nn.Parameter],
    groups: Optional[Mapping[str, Sequence[str]]] = None,
) -> Dict[str, float]:
    """L2 gradient norm over ``params`` of each loss group and of all losses together.

    Args:
        losses (Mapping[str, Tensor]): a training step's losses (``model(batched_inputs)``),
            with their graph.
        params (Sequence[Parameter]): the parameters the optimizer updates.
        groups (Mapping[str, Sequence[str]], optional): group name -> loss keys, summed within
            a group; keys absent from ``losses`` are skipped. Default: one group per loss.

    Returns:
        dict[str, float]: the norm of each group with at least one present loss, and
        ``"all"``: the norm of the gradient of the sum of every loss in ``losses``.

    Raises:
        ValueError: ``losses`` is empty.
    """
    if not losses:
        raise ValueError("loss_gradient_norms: no losses given")
    if groups is None:
        groups = {k: [k] for k in losses}
    params = list(params)
    total = [torch.zeros_like(p) for p in params]
    norms: Dict[str, float] = {}
    covered = set()
    for name, keys in groups.items():
        present = [k for k in keys if k in losses]
        if not present:
            continue
        covered.update(present)
        grads = _grads(sum(losses[k] for k in present), params)
        norms[name] = _norm(grads)
        for t, g in zip(total, grads):
            t.add_(g)
    rest = [k for k in losses if k not in covered]
    if rest:
        for t, g in zip(total, _grads(sum(losses[k] for k in rest), params)):
            t.add_(g)
    norms["all"] = _norm(total)
    return norms


def clip_scale(total_norm: float, max_norm: float) -> float:
    """The factor full-model clipping applies to every gradient: ``min(1, max / norm)``
    (``torch.nn.utils.clip_grad_norm_`` up to its 1e-6 guard)."""
    return min(1.0, max_norm / (total_norm + 1e-6))


def _grads(loss: torch.Tensor, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
