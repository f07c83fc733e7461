"""Export of GLIP for a fixed prompt (TorchScript, ONNX): see :mod:`.fixed_prompt`."""

from .fixed_prompt import (
    DEFORM_CONV_OPSET,
    EXPORT_ISSUES,
    FixedPromptGLIP,
    NotExportableError,
    check_exportable,
    export_onnx,
    export_torchscript,
    register_deform_conv_onnx,
    tracing_mode,
)

__all__ = [
    "DEFORM_CONV_OPSET",
    "EXPORT_ISSUES",
    "FixedPromptGLIP",
    "NotExportableError",
    "check_exportable",
    "export_onnx",
    "export_torchscript",
    "register_deform_conv_onnx",
    "tracing_mode",
]
