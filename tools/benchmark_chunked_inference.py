"""Benchmark: one 1,203-category inference (chunked prompts) against one 80-category inference.

    python tools/benchmark_chunked_inference.py \
        [--config-file configs/quick_schedules/glip_tiny.yaml]
        [--size 512] [--chunk-size 40] [--repeats 3] [--threads 2]

The vocabulary is split into prompts of ``--chunk-size`` categories (the official LVIS recipe,
40 -> 31 chunks); the backbone runs once per image and the language backbone, fusion and head
once per chunk. For reference it also times the official way, the whole model once per chunk.
Category names are synthetic (words from the tokenizer's vocabulary), one or two words each.
Random weights: the timing does not depend on them. Prints a table and the two ratios.
"""

import argparse
import random
import statistics
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from glip_d2.config import add_glip_config
from glip_d2.data.prompts import build_tokenizer, chunk_categories
from glip_d2.utils.paths import resolve_path


def synthetic_vocabulary(tokenizer, n: int, seed: int = 0):
    words = sorted(w for w in tokenizer.vocab if w.isalpha() and w.isascii() and len(w) > 3)
    rng = random.Random(seed)
    names = set()
    while len(names) < n:
        k = rng.choice((1, 1, 2))
        names.add(" ".join(rng.choice(words) for _ in range(k)))
    return sorted(names)


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/quick_schedules/glip_tiny.yaml")
    parser.add_argument("--size", type=int, default=512, help="square input size in pixels")
    parser.add_argument("--chunk-size", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--skip-naive", action="store_true", help="skip the whole-model-per-chunk run"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tokenizer = build_tokenizer(resolve_path(cfg.INPUT.PROMPT.TOKENIZER))
    max_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
    sep = cfg.INPUT.PROMPT.SEPARATOR
    vocab = synthetic_vocabulary(tokenizer, 1203)
    large = [
        p.encode(tokenizer, max_len)
        for p in chunk_categories(vocab, tokenizer, args.chunk_size, max_len=max_len, separator=sep)
    ]
    small = [
        p.encode(tokenizer, max_len)
        for p in chunk_categories(vocab[:80], tokenizer, 0, max_len=max_len, separator=sep)
    ]
    assert len(small) == 1
    image = torch.randint(0, 255, (3, args.size, args.size), dtype=torch.uint8)
    base = {"image": image, "height": args.size, "width": args.size}

    with torch.no_grad():
        t80 = timed(lambda: model([dict(base, **small[0])]), args.repeats)
        t1203 = timed(lambda: model([dict(base, prompt_chunks=large)]), args.repeats)
        naive = None
        if not args.skip_naive:
            naive = timed(lambda: [model([dict(base, **p)]) for p in large], 1)

    print(f"config {args.config_file}, image {args.size}x{args.size}, {args.threads} threads")
    print(f"{'run':<42}{'seconds':>10}{'x 80-cat':>10}")
    print(f"{'80 categories, 1 prompt':<42}{t80:>10.3f}{1.0:>10.2f}")
    print(
        f"{f'1203 categories, {len(large)} chunks, backbone once':<42}{t1203:>10.3f}"
        f"{t1203 / t80:>10.2f}"
    )
    if naive is not None:
        print(f"{'1203 categories, whole model per chunk':<42}{naive:>10.3f}{naive / t80:>10.2f}")


if __name__ == "__main__":
    main()
