#!/usr/bin/env python
"""Export GLIP for a fixed prompt to TorchScript and/or ONNX, and time them against PyTorch.

    python tools/export.py --config-file configs/quickstart/glip_tiny_shapes.yaml \\
        --categories "red square" "blue circle" --format both --output output/export \\
        --height 224 --width 224 --benchmark 20 [--opts MODEL.WEIGHTS model_final.pth]

The prompt is encoded once (the language backbone runs here, not in the exported model); the
exported graph is the image path (Swin/FPN, fusion with the cached text features, DyHead,
dense predictions) and returns the **raw outputs** (per level logits (1, H_l*W_l, L), box
deltas (1, 4, H_l, W_l), centerness (1, 1, H_l, W_l)); decoding and NMS stay in Python
(``glip_d2.export.FixedPromptGLIP.detections``). The input is (1, 3, H, W) float32,
normalised and zero-padded as ``GLIP.preprocess_image`` gives it, at the fixed export size
``--height`` x ``--width`` (multiples of ``SIZE_DIVISIBILITY``): resize and pad to it.

Writes ``glip_fixed_prompt.ts`` (``torch.jit.trace``) and ``glip_fixed_prompt.onnx``
(``torch.onnx.export(dynamo=False)``, opset 17, or 19 for the ONNX ``DeformConv`` of the
DyHead's deformable convs, which needs ``MODEL.GLIP_HEAD.DEFORM_CONV_IMPL torchvision``),
plus ``prompt.pt`` (the prompt fields, for the post-processing). A setting that does not
export raises an error naming the operator and the setting that does.

``--benchmark N`` times PyTorch eager, TorchScript and onnxruntime (CPU) on the same input, N
runs each after one warm-up, alternating in this process, and prints mean/min latency, the
speed-up over eager and the largest raw-output difference from eager.
"""

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from glip_d2.config import add_glip_config
from glip_d2.engine.predictor import GLIPPredictor
from glip_d2.export import FixedPromptGLIP, check_exportable, export_onnx, export_torchscript

logger = logging.getLogger("glip_d2.export")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--categories", nargs="+", help="category names (one prompt chunk)")
    group.add_argument("--prompt", help="a caption; its noun phrases are grounded (spaCy)")
    p.add_argument("--format", choices=("torchscript", "onnx", "both"), default="both")
    p.add_argument("--output", default="output/export", help="output directory")
    p.add_argument("--height", type=int, default=224, help="fixed export input height")
    p.add_argument("--width", type=int, default=224, help="fixed export input width")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17; 19 w/ DCN)")
    p.add_argument("--benchmark", type=int, default=0, metavar="N", help="timed runs each")
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0: default)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p


def setup(args):
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(args.opts))
    cfg.freeze()
    return cfg


def build(cfg, args):
    """The predictor (model + tokenizer), the fixed-prompt module and an example input."""
    predictor = GLIPPredictor(cfg)
    chunks = predictor.encode_prompt(args.prompt if args.prompt else args.categories)
    if len(chunks) != 1:
        raise ValueError(
            f"the vocabulary needs {len(chunks)} prompt chunks; a fixed-prompt export takes "
            "one (export each chunk separately)"
        )
    module = FixedPromptGLIP(predictor.model, chunks[0])
    div = module.size_divisibility
    if div > 1 and (args.height % div or args.width % div):
        raise ValueError(f"--height/--width must be multiples of SIZE_DIVISIBILITY {div}")
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.height, args.width), generator=gen, dtype=torch.uint8)
    example = module.preprocess({"image": image}, size=(args.height, args.width))
    return module, chunks[0], example


def _timed(fn, example):
    start = time.perf_counter()
    out = fn(example)
    return time.perf_counter() - start, out


def benchmark(runners, example, n):
    """Mean/min seconds per run of each runner, alternating; and outputs of the last run."""
    times = {name: [] for name in runners}
    outputs = {}
    for name, fn in runners.items():  # warm-up
        outputs[name] = fn(example)
    for _ in range(n):
        for name, fn in runners.items():
            t, outputs[name] = _timed(fn, example)
            times[name].append(t)
    return times, outputs


def main(args):
    setup_logger(name="glip_d2")
    cfg = setup(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    module, prompt, example = build(cfg, args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = ("torchscript", "onnx") if args.format == "both" else (args.format,)
    for fmt in formats:  # fail before any file is written
        check_exportable(module, fmt, args.opset or 19)
    torch.save(prompt, out_dir / "prompt.pt")
    runners = {}
    with torch.no_grad():
        eager_out = module(example)
    runners["pytorch eager"] = lambda x: [t.numpy() for t in module(x)]
    if "torchscript" in formats:
        path = out_dir / "glip_fixed_prompt.ts"
        traced = export_torchscript(module, example, path)
        logger.info("TorchScript: %s", path)
        runners["torchscript"] = lambda x: [t.numpy() for t in traced(x)]
    if "onnx" in formats:
        import onnxruntime

        path = out_dir / "glip_fixed_prompt.onnx"
        export_onnx(module, example, path, opset=args.opset)
        logger.info("ONNX: %s", path)
        options = onnxruntime.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        runners["onnxruntime (CPU)"] = lambda x: session.run(None, {"image": x.numpy()})
    if not args.benchmark:
        return
    with torch.no_grad():
        times, outputs = benchmark(runners, example, args.benchmark)
    ref = [t.numpy() for t in eager_out]
    eager_mean = statistics.mean(times["pytorch eager"])
    lines = [
        f"{args.height}x{args.width}, {args.benchmark} runs each, {torch.get_num_threads()} "
        f"torch threads",
        f"| {'runtime':<18} | {'mean ms':>8} | {'min ms':>8} | {'vs eager':>8} | "
        f"{'max |diff|':>10} |",
        f"|{'-' * 20}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 12}|",
    ]
    for name, ts in times.items():
        mean = statistics.mean(ts)
        diff = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(outputs[name], ref))
        lines.append(
            f"| {name:<18} | {mean * 1e3:8.1f} | {min(ts) * 1e3:8.1f} | "
            f"{eager_mean / mean:7.2f}x | {diff:10.2e} |"
        )
    logger.info("Latency of the exported image path:\n%s", "\n".join(lines))


if __name__ == "__main__":
    main(get_parser().parse_args())
