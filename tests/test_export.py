"""Fixed-prompt export (glip_d2.export, tools/export.py): TorchScript and onnxruntime raw
outputs against PyTorch, detections from exported outputs, and the clear errors.

The tiny config is made ONNX-exportable with ``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL torchvision``
(its deformable convs become ONNX ``DeformConv``, opset 19; the default ``auto`` runs the
``sparse`` kernel on CPU, which neither format can export).
"""

import importlib.util

import pytest
import torch
from synthetic_inputs import random_prompt_input, tiny_model

from glip_d2.export import (
    FixedPromptGLIP,
    NotExportableError,
    export_onnx,
    export_torchscript,
)

H, W = 128, 160
needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx / onnxruntime not installed (pip install onnx onnxruntime)",
)
# Random weights score every anchor near the prior: no threshold, so there are detections.
EXPORTABLE = {"MODEL.GLIP_HEAD.DEFORM_CONV_IMPL": "torchvision", "MODEL.ATSS.INFERENCE_TH": 0.0}


def _setup(**opts):
    model = tiny_model(**opts)
    prompt = random_prompt_input(3, seed=0, h=H, w=W)
    other = random_prompt_input(3, seed=1, h=H, w=W)
    other.update({k: prompt[k] for k in ("input_ids", "attention_mask", "positive_map")})
    return model, FixedPromptGLIP(model, prompt), prompt, other


@pytest.fixture(scope="module")
def exportable():
    return _setup(**EXPORTABLE)


def _max_diff(a, b):
    return max(float((torch.as_tensor(x) - y).abs().max()) for x, y in zip(a, b))


def test_wrapper_equals_dense_head(exportable):
    model, module, prompt, _ = exportable
    length = int(prompt["attention_mask"].sum())
    with torch.no_grad():
        features = model.extract_features(model.preprocess_image([prompt]))
        out = model.dense_head(
            features,
            prompt["input_ids"][None, :length],
            prompt["attention_mask"][None, :length],
        )
        raw = module(module.preprocess(prompt))
    expected = (*out.logits, *out.deltas, *out.centerness)
    assert len(raw) == 15 and raw[0].shape == (1, (H // 8) * (W // 8), length)
    assert all(torch.equal(a, b) for a, b in zip(raw, expected))


def test_torchscript_matches_pytorch(tmp_path, exportable):
    _, module, prompt, other = exportable
    traced = export_torchscript(module, module.preprocess(prompt), tmp_path / "m.ts")
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    image = module.preprocess(other)  # not the tracing input
    with torch.no_grad():
        ref = module(image)
        assert _max_diff(traced(image), ref) <= 1e-4
        assert _max_diff(loaded(image), ref) <= 1e-4


@needs_ort
def test_onnxruntime_matches_pytorch_and_detections(tmp_path, exportable):
    import onnxruntime

    model, module, prompt, other = exportable
    path = export_onnx(module, module.preprocess(prompt), tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    image = module.preprocess(other)
    raw = session.run(None, {"image": image.numpy()})
    with torch.no_grad():
        ref = module(image)
        expected = model([other])[0]["instances"]
    assert [o.shape for o in raw] == [tuple(t.shape) for t in ref]
    assert _max_diff(raw, ref) <= 1e-4
    found = module.detections(raw, (H, W), other)
    assert len(found) == len(expected) > 0
    assert torch.equal(found.pred_classes, expected.pred_classes)
    torch.testing.assert_close(found.scores, expected.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        found.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-3, rtol=0
    )


def test_detections_from_traced_outputs_equal_model(tmp_path, exportable):
    model, module, prompt, other = exportable
    traced = export_torchscript(module, module.preprocess(prompt), tmp_path / "m.ts")
    with torch.no_grad():
        found = module.detections(traced(module.preprocess(other)), (H, W), other)
        expected = model([other])[0]["instances"]
    assert len(found) == len(expected) > 0
    assert torch.equal(found.pred_classes, expected.pred_classes)
    assert torch.equal(found.scores, expected.scores)
    assert torch.equal(found.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_clear_errors_for_non_exportable_settings(tmp_path):
    _, module, prompt, _ = _setup()  # the tiny config's default "auto": "sparse" on CPU
    with pytest.raises(NotExportableError, match="sparse_compressed_tensor.*USE_DFCONV False"):
        export_onnx(module, module.preprocess(prompt), tmp_path / "m.onnx")
    with pytest.raises(NotExportableError, match="as a constant.*'torchvision'"):
        export_torchscript(module, module.preprocess(prompt), tmp_path / "m.ts")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.ts").exists()
    _, module, prompt, _ = _setup(**{"MODEL.GLIP_HEAD.DEFORM_CONV_IMPL": "torchvision"})
    with pytest.raises(NotExportableError, match="DeformConv, which needs opset >= 19"):
        export_onnx(module, module.preprocess(prompt), tmp_path / "m.onnx", opset=17)
