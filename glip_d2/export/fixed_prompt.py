"""GLIP with its prompt encoded once, as an image-only module that traces and exports.

:class:`FixedPromptGLIP` runs the language backbone once, at construction, and keeps the
language features as buffers; its ``forward`` is the image path only (backbone + FPN, the
fusion tower with the cached text features, the dense head) and returns the head's **raw
outputs**. Decoding and NMS (GLIP's :class:`~glip_d2.modeling.head.inference.GLIPPostProcessor`)
stay in Python: :meth:`FixedPromptGLIP.detections` turns raw outputs (from PyTorch,
TorchScript or onnxruntime) into the model's own ``Instances``.

The export input has a fixed size (H, W) divisible by ``SIZE_DIVISIBILITY``: the Swin window
partition, the FPN and the anchor grid are traced for that size.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.structures import Instances
from torch import nn

from ..modeling.head.atss import grid_anchors

__all__ = [
    "EXPORT_ISSUES",
    "FixedPromptGLIP",
    "NotExportableError",
    "check_exportable",
    "export_onnx",
    "export_torchscript",
    "register_deform_conv_onnx",
    "tracing_mode",
    "DEFORM_CONV_OPSET",
]


class NotExportableError(RuntimeError):
    """A model setting whose operators do not export (or do not run in the target runtime)."""


#: (format, issue) -> the message of :func:`check_exportable`; filled below.
EXPORT_ISSUES: Dict[Tuple[str, str], str] = {}


class FixedPromptGLIP(nn.Module):
    """The image path of a GLIP model for one fixed prompt, returning raw head outputs.

    ``forward(image)`` takes ``image``: (1, 3, H, W) float32, **already normalised and padded**,
    i.e. what ``GLIP.preprocess_image([x]).tensor`` gives (``INPUT.FORMAT`` channel order,
    ``(pixel - PIXEL_MEAN) / PIXEL_STD``, zero padding after normalisation), with H and W the
    fixed export size. :meth:`preprocess` builds it from a model input dict.

    It returns a flat tuple of ``3 * num_levels`` tensors, levels P3 first:
    ``logits_0..logits_{n-1}`` each (1, H_l*W_l, L) (L = the prompt's real tokens, padding
    dropped as ``GLIP.inference`` does), then ``deltas_0..`` each (1, 4, H_l, W_l) (after the
    level's ``Scale``), then ``centerness_0..`` each (1, 1, H_l, W_l) logits. These equal
    ``GLIP.dense_head``'s ``logits``, ``deltas`` and ``centerness`` for the same features and
    prompt. Masks (``MODEL.MASK_ON``) are not exported.

    The language features are buffers (``lang_hidden``, ``lang_embedded``: (1, L, D),
    ``lang_masks``: (1, L)); the language backbone itself is not part of this module.
    """

    def __init__(self, model: nn.Module, prompt: Dict):
        """
        Args:
            model (GLIP): an fp32 GLIP (any device); put in eval mode here.
            prompt (dict): one encoded prompt: ``input_ids``, ``attention_mask`` (L,) int64
                and ``positive_map`` (K, L) bool (what ``GLIPPredictor.encode_categories``
                gives; a vocabulary must fit in one chunk), optionally ``prompt_class_ids``
                and ``phrases``.
        """
        super().__init__()
        if getattr(model, "mask_head", None) is not None:
            raise NotExportableError(
                "FixedPromptGLIP exports boxes only: the mask head (MODEL.MASK_ON) is not part "
                "of the exported raw outputs"
            )
        model.eval()
        self.backbone = model.backbone
        self.head = model.head
        self.in_features = list(model.in_features)
        self.size_divisibility = int(model.size_divisibility)
        self.anchor_strides = list(model.anchor_strides)
        self.anchor_sizes = list(model.anchor_sizes)
        # Plain attributes (not submodules): the post-processor and the model's own conversion
        # to Instances, so that the exported module holds no language-backbone weights.
        self._model_detect = model.detect
        self._model_to_instances = model.to_instances
        self._model_preprocess = model.preprocess_image
        device = model.device
        input_ids = torch.as_tensor(prompt["input_ids"]).reshape(1, -1).to(device)
        attention_mask = torch.as_tensor(prompt["attention_mask"]).reshape(1, -1).to(device)
        # As GLIP.inference: the padding after the last real token never reaches a real token.
        length = int(attention_mask.sum())
        input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        with torch.no_grad():
            lang = model.encode_text(input_ids, attention_mask)
        self.register_buffer("lang_hidden", lang["hidden"].detach().clone())
        self.register_buffer("lang_embedded", lang["embedded"].detach().clone())
        self.register_buffer("lang_masks", lang["masks"].detach().clone())
        self.prompt = dict(prompt)
        self.positive_map = model._trimmed_positive_map(prompt["positive_map"], length)
        self.num_levels = len(self.in_features)
        # Eval mode for the wrapper too: torch.onnx.export restores every submodule to the
        # wrapper's own mode afterwards (a train-mode wrapper would switch dropout on).
        self.eval()

    @property
    def num_tokens(self) -> int:
        """L: the prompt's real tokens (the logits' last dimension)."""
        return int(self.lang_hidden.shape[1])

    def output_names(self) -> List[str]:
        """Names of the raw outputs, in order (also the ONNX output names)."""
        n = range(self.num_levels)
        return [f"{kind}_{i}" for kind in ("logits", "deltas", "centerness") for i in n]

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """
        Args:
            image: (1, 3, H, W) float32, normalised and padded (see the class docstring).

        Returns:
            tuple: raw outputs, per level ``logits`` (1, H_l*W_l, L), then ``deltas``
            (1, 4, H_l, W_l), then ``centerness`` (1, 1, H_l, W_l).
        """
        features = self.backbone(image)
        lang = {
            "hidden": self.lang_hidden,
            "embedded": self.lang_embedded,
            "masks": self.lang_masks,
        }
        out = self.head([features[f] for f in self.in_features], lang)
        return (*out.logits, *out.deltas, *out.centerness)

    def preprocess(self, x: Dict, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The export input of a model input dict (``image`` (3, h, w) resized, as the mapper
        or ``GLIPPredictor.preprocess`` makes it): normalised by the model, zero-padded to the
        divisibility and then to ``size`` (H, W) (default: no extra padding).

        Returns:
            (1, 3, H, W) float32.
        """
        tensor = self._model_preprocess([x]).tensor
        if size is not None:
            height, width = size
            if tensor.shape[-2] > height or tensor.shape[-1] > width:
                raise ValueError(
                    f"image of padded size {tuple(tensor.shape[-2:])} is larger than the export "
                    f"size {(height, width)}; resize it first"
                )
            tensor = nn.functional.pad(
                tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2])
            )
        return tensor

    def split_outputs(
        self, outputs: Sequence
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """``(logits, deltas, centerness)`` per-level lists of the flat raw outputs (tensors or
        numpy arrays, e.g. from onnxruntime)."""
        n = self.num_levels
        if len(outputs) != 3 * n:
            raise ValueError(f"expected {3 * n} raw outputs, got {len(outputs)}")
        tensors = [torch.as_tensor(o) for o in outputs]
        return tensors[:n], tensors[n : 2 * n], tensors[2 * n :]

    def detections(
        self, outputs: Sequence, image_size: Tuple[int, int], x: Optional[Dict] = None
    ) -> Instances:
        """Detections from raw outputs with the model's own post-processing (official decoding,
        per-entry NMS, the ``DETECTIONS_PER_IMG`` cap) and conversion to ``Instances``.

        Args:
            outputs: the flat raw outputs of one image (PyTorch, TorchScript or onnxruntime).
            image_size (tuple): (h, w) of the resized image before padding.
            x (dict): the input dict with the original ``height``/``width`` (default: no
                rescaling, boxes in resized-image pixels).

        Returns:
            Instances: as ``GLIP``'s inference output (``pred_boxes`` continuous XYXY_ABS,
            ``scores``, ``pred_classes``, ``pred_phrases`` when the prompt has phrases).
        """
        logits, deltas, centerness = self.split_outputs(outputs)
        device = self.lang_hidden.device
        logits, deltas, centerness = (
            [t.to(device).float() for t in ts] for ts in (logits, deltas, centerness)
        )
        shapes = [tuple(c.shape[-2:]) for c in centerness]
        anchors = grid_anchors(shapes, self.anchor_strides, self.anchor_sizes, device)
        boxes, scores, labels = self._model_detect(
            logits, deltas, centerness, anchors, 0, self.positive_map, image_size
        )
        return self._model_to_instances(
            self.prompt, x if x is not None else {}, image_size, boxes, scores, labels
        )


# ---------------------------------------------------------------------------------------
# What does not export, and the setting that does.

#: ONNX opset with ``DeformConv`` (onnxruntime's CPU provider implements it).
DEFORM_CONV_OPSET = 19

EXPORT_ISSUES.update(
    {
        ("onnx", "sparse"): (
            "the DyHead's modulated deformable conv with MODEL.GLIP_HEAD.DEFORM_CONV_IMPL "
            "'{impl}' runs the 'sparse' kernel on CPU, whose aten::sparse_compressed_tensor "
            "(torch.sparse_csr_tensor) does not export to ONNX: set "
            "MODEL.GLIP_HEAD.DEFORM_CONV_IMPL 'torchvision' (torchvision::deform_conv2d, "
            "exported as ONNX DeformConv, opset >= 19) or MODEL.GLIP_HEAD.USE_DFCONV False "
            "(plain 3x3 convs, as configs/quickstart/glip_tiny_shapes.yaml; other weights)"
        ),
        ("torchscript", "sparse"): (
            "the DyHead's modulated deformable conv with MODEL.GLIP_HEAD.DEFORM_CONV_IMPL "
            "'{impl}' runs the 'sparse' kernel on CPU: torch.jit.trace records its "
            "torch.sparse_csr_tensor (the sampling matrix, which depends on the image) as a "
            "constant, so the trace would be wrong for any other image: set "
            "MODEL.GLIP_HEAD.DEFORM_CONV_IMPL 'torchvision' (torchvision::deform_conv2d traces) "
            "or MODEL.GLIP_HEAD.USE_DFCONV False"
        ),
        ("onnx", "opset"): (
            "the DyHead's modulated deformable conv (torchvision::deform_conv2d) exports as "
            "ONNX DeformConv, which needs opset >= 19 (asked: {opset}): pass --opset 19, or "
            "MODEL.GLIP_HEAD.USE_DFCONV False"
        ),
    }
)


def _has_deform_conv(model: nn.Module) -> bool:
    from ..modeling.head.dyhead import ModulatedDeformConv

    return any(isinstance(m, ModulatedDeformConv) for m in model.modules())


def check_exportable(model: nn.Module, fmt: str, opset: int = DEFORM_CONV_OPSET) -> None:
    """Raise :class:`NotExportableError` naming the operator and the exportable setting when
    ``model`` uses an operator that does not export to ``fmt`` or does not run in
    onnxruntime; nothing falls back silently to another kernel.

    The modulated deformable conv needs ``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL 'torchvision'``
    in both formats (the ``sparse`` kernel, also what ``auto`` runs on CPU, traces its sampling
    matrix as a constant and has no ONNX export), and opset >= 19 for ONNX.

    Args:
        model (GLIP or FixedPromptGLIP).
        fmt (str): ``"torchscript"`` or ``"onnx"``.
        opset (int): the ONNX opset asked for.
    """
    from ..modeling.head.dyhead import ModulatedDeformConv

    if fmt not in ("torchscript", "onnx"):
        raise ValueError(f"format must be 'torchscript' or 'onnx', got '{fmt}'")
    deform = [m for m in model.modules() if isinstance(m, ModulatedDeformConv)]
    if not deform:
        return
    impl = deform[0].impl
    device = next(model.parameters()).device
    # "auto" picks 'sparse' for CPU inference without gradients, which is what tracing records.
    if impl == "sparse" or (impl == "auto" and device.type == "cpu"):
        raise NotExportableError(EXPORT_ISSUES[(fmt, "sparse")].format(impl=impl))
    if fmt == "torchscript":
        return
    if opset < DEFORM_CONV_OPSET:
        raise NotExportableError(EXPORT_ISSUES[("onnx", "opset")].format(opset=opset))


@contextlib.contextmanager
def tracing_mode(module: nn.Module) -> Iterator[None]:
    """Autograd on with every parameter frozen: the inference scratch buffers
    (:mod:`glip_d2.modeling.scratch`) open only without autograd, so none is written with
    ``out=`` during tracing (a traced ``out=`` into a reused buffer would alias results);
    nothing records a gradient because nothing requires one."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def export_torchscript(
    module: FixedPromptGLIP, example: torch.Tensor, path
) -> torch.jit.ScriptModule:
    """Trace ``module`` on ``example`` (``torch.jit.trace``; scripting does not support this
    code) and save it to ``path``.

    Returns:
        the traced module (inputs of ``example``'s size only).
    """
    check_exportable(module, "torchscript")
    with tracing_mode(module):
        traced = torch.jit.trace(module, (example,), check_trace=False, strict=False)
    traced.save(str(path))
    return traced


def export_onnx(
    module: FixedPromptGLIP, example: torch.Tensor, path, opset: Optional[int] = None
) -> Path:
    """Export ``module`` on ``example`` to ONNX at ``path`` (fixed input size, input
    ``image``, outputs :meth:`FixedPromptGLIP.output_names`).

    Uses the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): the
    default dynamo exporter of this torch needs the ``onnxscript`` package and has no
    translation of ``torchvision::deform_conv2d`` either.

    Args:
        opset (int): default 17, or 19 (``DeformConv``) when the model has deformable convs.

    Returns:
        Path: ``path``.
    """
    has_deform = _has_deform_conv(module)
    if opset is None:
        opset = DEFORM_CONV_OPSET if has_deform else 17
    check_exportable(module, "onnx", opset)
    if has_deform:
        register_deform_conv_onnx()
    with tracing_mode(module):
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["image"],
            output_names=module.output_names(),
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def register_deform_conv_onnx() -> None:
    """Export ``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (opset 19), which
    onnxruntime's CPU provider runs; torchvision registers no ONNX symbolic for it."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def symbolic(
        g, x, weight, offset, mask, bias, sh, sw, ph, pw, dh, dw, groups, ogroups, use_mask
    ):  # noqa: E501
        kernel = weight.type().sizes()[-2:]
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op(
            "DeformConv",
            *inputs,
            kernel_shape_i=list(kernel),
            strides_i=[sh, sw],
            pads_i=[ph, pw, ph, pw],
            dilations_i=[dh, dw],
            group_i=groups,
            offset_group_i=ogroups,
        )

    register_custom_op_symbolic("torchvision::deform_conv2d", symbolic, DEFORM_CONV_OPSET)
