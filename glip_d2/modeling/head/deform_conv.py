"""Modulated deformable conv (DCNv2) kernels, picked by ``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL``.

Every kernel computes the same numbers (up to float rounding) as the DCNv2 definition used by
the official CUDA kernel and by ``torchvision.ops.deform_conv2d``: for output position p and
kernel tap k, the input is sampled bilinearly at ``p * stride - padding + k * dilation +
offset[k](p)`` (offsets are (dy, dx) pairs per tap in row-major tap order), a sample point
outside (-1, H) x (-1, W) gives 0 and each of its four corners counts only when it lies inside
the map; the sample is multiplied by the tap's mask and the columns go through one GEMM with
the weight.

* ``"torchvision"`` (alias ``"reference"``): ``torchvision.ops.deform_conv2d``. Its CPU kernel
  builds the columns one scalar at a time and runs at a small fraction of the matmul rate.
* ``"sparse"``: the bilinear sampling of all (position, tap) pairs as one sparse matrix (four
  entries a row: the corners' bilinear weights times the mask) times a zero-bordered
  channels-last copy of the input, then one GEMM whose columns are already laid out
  (position, tap, channel). About 3x faster than torchvision's CPU kernel at GLIP-T's P3 size
  (1x256x100x167, 2 threads). Autograd gives exact gradients of every input, but training
  keeps the columns (taps x positions x C values per call) for the backward pass.
* ``"auto"`` (default): ``"sparse"`` for CPU inference (no gradient needed), ``"torchvision"``
  otherwise, so training memory and the GPU kernel are what they were (the sparse product has
  not been measured on a GPU).
"""

from __future__ import annotations

import warnings
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d as _tv_deform_conv2d

from ..scratch import scratch_buffer

__all__ = [
    "DEFORM_CONV_IMPLS",
    "deform_conv2d_sparse",
    "get_deform_conv",
]


def deform_conv2d_sparse(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: int = 1,
    padding: int = 1,
    dilation: int = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Modulated deformable conv (groups 1, one offset group) as a sparse product and a GEMM.

    The bilinear samples of all (position, tap) pairs are one sparse matrix with four entries
    per row (the corners' bilinear weights times the tap's mask; a corner outside the map reads
    a one-pixel zero border, a point outside (-1, H) x (-1, W) has weight 0) times the
    channels-last input, which gives the im2col columns already laid out (position, tap,
    channel); one GEMM with the weight finishes. Autograd gives the gradients of every input.

    Args:
        x: (B, C, H, W) input.
        offset: (B, 2*kh*kw, H_out, W_out) offsets, (dy, dx) per tap in row-major tap order.
        weight: (C_out, C, kh, kw).
        bias: (C_out,) or None.
        stride, padding, dilation (int): as ``torchvision.ops.deform_conv2d`` (square).
        mask: (B, kh*kw, H_out, W_out) modulation, or None (all ones).

    Returns:
        (B, C_out, H_out, W_out), equal to ``torchvision.ops.deform_conv2d`` up to rounding.
    """
    bsz, channels, height, width = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    if in_channels != channels:
        raise ValueError(
            f"deformable conv weight expects {in_channels} input channels, input has {channels}"
        )
    taps = kh * kw
    out_h = (height + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (width + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    if tuple(offset.shape) != (bsz, 2 * taps, out_h, out_w):
        raise ValueError(
            f"offset must have shape {(bsz, 2 * taps, out_h, out_w)}, got {tuple(offset.shape)}"
        )
    if mask is not None and tuple(mask.shape) != (bsz, taps, out_h, out_w):
        raise ValueError(
            f"mask must have shape {(bsz, taps, out_h, out_w)}, got {tuple(mask.shape)}"
        )
    dtype, device = offset.dtype, offset.device
    positions = out_h * out_w

    # Sample coordinates, laid out (B, position, tap).
    off = offset.reshape(bsz, taps, 2, positions).permute(0, 3, 1, 2)  # (B, P, K, 2)
    base_y = torch.arange(out_h, dtype=dtype, device=device) * stride - padding
    base_x = torch.arange(out_w, dtype=dtype, device=device) * stride - padding
    tap_y = torch.arange(kh, dtype=dtype, device=device).repeat_interleave(kw) * dilation
    tap_x = torch.arange(kw, dtype=dtype, device=device).repeat(kh) * dilation
    py = base_y[:, None].expand(out_h, out_w).reshape(positions, 1) + tap_y + off[..., 0]
    px = base_x[None, :].expand(out_h, out_w).reshape(positions, 1) + tap_x + off[..., 1]

    inside = (py > -1) & (py < height) & (px > -1) & (px < width)
    y0 = torch.floor(py)
    x0 = torch.floor(px)
    ly = py - y0
    lx = px - x0
    hy = 1 - ly
    hx = 1 - lx
    scale = inside.to(dtype)
    if mask is not None:
        scale = scale * mask.reshape(bsz, taps, positions).transpose(1, 2)
    # Inside points have y0 in [-1, H-1] and x0 in [-1, W-1]; with the one-pixel zero border
    # every corner index is in range and a corner off the map reads a zero, as in DCNv2.
    zero = torch.zeros((), dtype=dtype, device=device)
    padded_h, padded_w = height + 2, width + 2
    y0i = torch.where(inside, y0, zero).long() + 1
    x0i = torch.where(inside, x0, zero).long() + 1
    batch_base = torch.arange(bsz, device=device).view(bsz, 1, 1) * (padded_h * padded_w)
    top_left = batch_base + y0i * padded_w + x0i  # (B, P, K)
    # Column indices of each row are increasing and distinct, as CSR (and its backward) wants.
    cols = torch.stack(
        [top_left, top_left + 1, top_left + padded_w, top_left + padded_w + 1], dim=-1
    )
    vals = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], dim=-1) * scale.unsqueeze(-1)

    n_rows = bsz * positions * taps
    rows = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(bsz * padded_h * padded_w, channels)
    crow = torch.arange(0, 4 * n_rows + 1, 4, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        sampler = torch.sparse_csr_tensor(
            crow,
            cols.reshape(-1),
            vals.reshape(-1),
            size=(n_rows, rows.shape[0]),
            check_invariants=False,
        )
        # (B*P*K, C), row (b, p, k); in a scratch buffer inside a scratch scope (inference).
        buf = scratch_buffer("deform_conv.columns", (n_rows, channels), x.dtype, x.device)
        columns = sampler @ rows if buf is None else torch.mm(sampler, rows, out=buf)

    # The weight as (C_out, K*C) with column index k*C + c, to match the columns' layout.
    w2d = weight.permute(0, 2, 3, 1).reshape(out_channels, taps * channels)
    columns = columns.reshape(bsz * positions, taps * channels)
    if bias is not None:
        out = torch.addmm(bias, columns, w2d.t())
    else:
        out = columns @ w2d.t()
    return out.reshape(bsz, out_h, out_w, out_channels).permute(0, 3, 1, 2)


def _torchvision(x, offset, weight, bias, stride, padding, mask):
    return _tv_deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)


def _sparse(x, offset, weight, bias, stride, padding, mask):
    if torch.is_autocast_enabled(x.device.type) or x.dtype in (torch.float16, torch.bfloat16):
        # As torchvision's autocast rule for deform_conv2d: fp32 inside, the input's dtype out.
        def f32(t):
            return None if t is None else t.float()

        with torch.autocast(device_type=x.device.type, enabled=False):
            out = deform_conv2d_sparse(
                f32(x), f32(offset), f32(weight), f32(bias), stride, padding, mask=f32(mask)
            )
        return out.to(x.dtype)
    return deform_conv2d_sparse(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)


def _auto(x, offset, weight, bias, stride, padding, mask):
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, offset, weight, bias, mask)
    )
    kernel = _torchvision if needs_grad or x.device.type != "cpu" else _sparse
    return kernel(x, offset, weight, bias, stride, padding, mask)


#: name -> kernel ``(x, offset, weight, bias, stride, padding, mask) -> output``.
DEFORM_CONV_IMPLS: Dict[str, Callable] = {
    "auto": _auto,
    "sparse": _sparse,
    "torchvision": _torchvision,
    "reference": _torchvision,
}


def get_deform_conv(name: str) -> Callable:
    """The deformable-conv kernel called ``name`` (``MODEL.DYHEAD.DEFORM_CONV_IMPL``)."""
    try:
        return DEFORM_CONV_IMPLS[name]
    except KeyError:
        raise ValueError(
            f"MODEL.DYHEAD.DEFORM_CONV_IMPL must be one of {sorted(DEFORM_CONV_IMPLS)}, "
            f"got '{name}'"
        ) from None
