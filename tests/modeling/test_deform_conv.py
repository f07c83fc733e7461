"""The deformable-conv kernels (``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL``) against
``torchvision.ops.deform_conv2d``: same outputs and gradients, points off the map included."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip_d2.modeling.head import DEFORM_CONV_IMPLS, ModulatedDeformConv, deform_conv2d_sparse


def _inputs(bsz, c_in, c_out, h, w, stride, spread, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
    x = torch.randn(bsz, c_in, h, w, generator=g, dtype=dtype)
    # spread ~ map size: many sample points fall off the map or across its border.
    offset = torch.randn(bsz, 18, out_h, out_w, generator=g, dtype=dtype) * spread
    mask = torch.rand(bsz, 9, out_h, out_w, generator=g, dtype=dtype)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=dtype) * 0.2
    bias = torch.randn(c_out, generator=g, dtype=dtype)
    return x, offset, weight, bias, mask


@pytest.mark.parametrize(
    "bsz,h,w,stride,spread",
    [(1, 9, 13, 1, 2.0), (2, 8, 7, 2, 3.0), (1, 1, 1, 1, 1.0), (3, 5, 4, 1, 8.0)],
)
@pytest.mark.parametrize("with_mask,with_bias", [(True, True), (False, False)])
def test_sparse_equals_torchvision(bsz, h, w, stride, spread, with_mask, with_bias):
    x, offset, weight, bias, mask = _inputs(bsz, 6, 5, h, w, stride, spread, seed=h * w)
    bias = bias if with_bias else None
    mask = mask if with_mask else None
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    got = deform_conv2d_sparse(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_integer_offsets_and_border_points():
    """Offsets that land exactly on pixels, on the -1 / H borders and just inside them."""
    x, _, weight, bias, mask = _inputs(1, 4, 3, 6, 6, 1, 0.0, seed=3)
    values = torch.tensor([0.0, 1.0, -1.0, -2.0, 2.0, 6.0, -6.5, 5.999, -1.999, 0.5])
    g = torch.Generator().manual_seed(4)
    offset = values[torch.randint(0, len(values), (1, 18, 6, 6), generator=g)]
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    got = deform_conv2d_sparse(x, offset, weight, bias, padding=1, mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_sparse_gradients_equal_torchvision(stride):
    """float64 gradients of the input, offsets, mask, weight and bias."""
    tensors = [t.requires_grad_() for t in _inputs(2, 4, 3, 7, 6, stride, 3.0, 5, torch.float64)]
    x, offset, weight, bias, mask = tensors
    grads = []
    for fn in (deform_conv2d, deform_conv2d_sparse):
        out = fn(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
        probe = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)
        grads.append(torch.autograd.grad((out * probe).sum(), tensors))
    for name, a, b in zip(["x", "offset", "weight", "bias", "mask"], *grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, msg=f"gradient of {name}")


def test_reinterpreted_offsets_same_on_every_kernel():
    """The official reuse of a larger level's offsets for a coarser input (reference §5.2)."""
    x, _, _, _, _ = _inputs(2, 4, 3, 3, 5, 1, 0.0, seed=6)
    big = _inputs(2, 4, 3, 6, 9, 1, 2.0, seed=7)
    outputs = {}
    for impl in ("sparse", "torchvision", "auto"):
        conv = ModulatedDeformConv(4, 3, impl=impl)
        conv.weight.data, conv.bias.data = big[2], big[3]
        with torch.no_grad():
            outputs[impl] = conv(x, big[1], big[4])
    assert outputs["torchvision"].shape == (2, 3, 3, 5)
    for impl in ("sparse", "auto"):
        torch.testing.assert_close(outputs[impl], outputs["torchvision"], atol=1e-5, rtol=1e-5)


def test_auto_picks_sparse_for_inference_and_torchvision_for_training(monkeypatch):
    calls = []
    import glip_d2.modeling.head.deform_conv as dc

    monkeypatch.setattr(dc, "_sparse", lambda *a: calls.append("sparse") or dc._torchvision(*a))
    monkeypatch.setattr(dc, "_tv_deform_conv2d", _recording(calls, deform_conv2d))
    x, offset, weight, bias, mask = _inputs(1, 4, 3, 5, 5, 1, 1.0, seed=8)
    with torch.no_grad():
        DEFORM_CONV_IMPLS["auto"](x, offset, weight, bias, 1, 1, mask)
    assert calls == ["sparse", "torchvision"]  # the stand-in for "sparse" forwards to torchvision
    calls.clear()
    DEFORM_CONV_IMPLS["auto"](x, offset.requires_grad_(), weight, bias, 1, 1, mask)
    assert calls == ["torchvision"]


def _recording(calls, fn):
    def wrapped(*args, **kwargs):
        calls.append("torchvision")
        return fn(*args, **kwargs)

    return wrapped


def test_unknown_kernel_name_is_a_clear_error():
    with pytest.raises(ValueError, match="DEFORM_CONV_IMPL.*'cuda_fast'"):
        ModulatedDeformConv(4, 4, impl="cuda_fast")
