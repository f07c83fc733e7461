#!/usr/bin/env python
"""Self-training at quick-start scale: a teacher trained on a little gold data labels noisy
captions; students trained on gold + pseudo-labels are compared with it on glip_shapes_val.

    make self-training            # or: .venv/bin/python tools/self_training.py

Stages (each skipped when its output exists, so a rerun resumes; --fresh starts over):

1. split ``glip_shapes_train``: the first ``--num-gold`` images keep their boxes (detection
   and grounding annotations); the others keep only a rewritten, noisy caption (see
   ``glip_d2/autolabel/shapes_experiment.py``);
2. train the teacher on the gold part (``train_net.py``, the quick-start model);
3. pseudo-label the caption-only part (``tools/pseudo_label.py`` in captions mode: spaCy noun
   phrases, the teacher's boxes above ``--score-threshold``);
4. train one student per entry of ``--pseudo-images`` on gold + that many pseudo-labelled
   images, starting from the teacher's weights (``--init scratch``: from scratch);
5. write ``results.json``, ``results.md`` (teacher vs students: AP, AP50, grounding R@1, and
   the pseudo-labels' precision and recall against the hidden boxes) and ``student_ap.png``.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

# First: glip_d2 hides fvcore's torch.jit.script deprecation warnings, which detectron2 triggers.
import glip_d2  # noqa: F401

# isort: split
from glip_d2.autolabel.shapes_experiment import (
    pseudo_label_quality,
    split_shapes_for_self_training,
    subset_grounding_json,
)
from glip_d2.data.datasets.shapes import ensure_glip_shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEST_SETS = ("glip_shapes_val", "glip_shapes_val_grounding")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="output/self_training", help="output folder")
    p.add_argument("--config-file", default="configs/quickstart/glip_tiny_shapes.yaml")
    p.add_argument("--num-gold", type=int, default=64, help="gold images (of 256)")
    p.add_argument("--omit-prob", type=float, default=0.2, help="caption omits an object group")
    p.add_argument("--absent-prob", type=float, default=0.3, help="caption names an absent object")
    p.add_argument("--teacher-iters", type=int, default=2400)
    p.add_argument("--student-iters", type=int, default=1200)
    p.add_argument(
        "--pseudo-images",
        default="0,96,192",
        help="comma-separated numbers of pseudo-labelled images, one student each",
    )
    p.add_argument("--score-threshold", type=float, default=0.3, help="AUTOLABEL.SCORE_THRESHOLD")
    p.add_argument("--min-score", type=float, default=0.0, help="INPUT.PSEUDO_LABELS.MIN_SCORE")
    p.add_argument(
        "--score-weighting",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="INPUT.PSEUDO_LABELS.SCORE_WEIGHTING: weight each pseudo box's losses by its score",
    )
    p.add_argument("--init", choices=("teacher", "scratch"), default="teacher")
    p.add_argument(
        "--detection-share",
        choices=("keep", "dilute"),
        default="keep",
        help="keep: repeat the gold detection set so that detection-style prompts stay half of\n"
        "the student's samples, as for the teacher; dilute: every set once",
    )
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every stage")
    return p.parse_args(argv)


def _run(cmd, log_path):
    """Run a stage's command, its output appended to ``log_path``; fail loudly."""
    print("+ " + " ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"Stage failed (exit {proc.returncode}); end of {log_path}:\n{tail}")


def _register(name, fmt, json_file, image_root):
    return {"NAME": name, "FORMAT": fmt, "JSON_FILE": json_file, "IMAGE_ROOT": image_root}


def _train(args, out_dir, iters, train_sets, register, weights, log, repeats=None):
    final = os.path.join(out_dir, "eval_results.json")
    if os.path.isfile(final) and os.path.isfile(os.path.join(out_dir, "model_final.pth")):
        print(f"= {out_dir} done", flush=True)
        return _metrics(final)
    cmd = [
        sys.executable,
        "train_net.py",
        "--config-file",
        args.config_file,
        "OUTPUT_DIR",
        out_dir,
        "SOLVER.MAX_ITER",
        str(iters),
        "DATASETS.REGISTER",
        repr(register),
        "DATASETS.TRAIN",
        repr(tuple(train_sets)),
        "DATASETS.TEST",
        repr(TEST_SETS),
        "TEST.VISUALIZE.NUM_IMAGES",
        "0",
        "INPUT.PSEUDO_LABELS.MIN_SCORE",
        str(args.min_score),
        "INPUT.PSEUDO_LABELS.SCORE_WEIGHTING",
        str(args.score_weighting),
        "MODEL.WEIGHTS",
        weights,
        *(["DATASETS.TRAIN_REPEAT", repr(list(repeats))] if repeats else []),
        *args.opts,
    ]
    _run(cmd, log)
    return _metrics(final)


def _metrics(path):
    with open(path) as f:
        res = json.load(f)
    bbox = res[TEST_SETS[0]]["bbox"]
    # "separate" (any-box) recall, the protocol GLIP and MDETR report.
    r1 = res[TEST_SETS[1]]["grounding_separate"]["R@1"]
    # COCO AP is None (NaN) when a model has no detection at all.
    return {"AP": bbox["AP"], "AP50": bbox["AP50"], "R@1": r1}


def _fmt(v):
    return "n/a" if v is None else f"{v:.1f}"


def _plot(path, teacher, students):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(students)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ap = [float("nan") if students[n]["AP"] is None else students[n]["AP"] for n in xs]
    ax.plot(xs, ap, "o-", label="student: gold + pseudo (0: gold only)")
    if teacher["AP"] is not None:
        ax.axhline(teacher["AP"], color="gray", ls="--", label="teacher (gold only)")
    ax.set_xlabel("pseudo-labelled images used")
    ax.set_ylabel("AP on glip_shapes_val")
    ax.set_title("Self-training on glip_shapes")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    out = os.path.abspath(args.out)
    if args.fresh and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, "stages.log")
    shapes_root = ensure_glip_shapes(
        os.path.join(
            os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "glip_shapes"
        )
    )
    train_images = os.path.join(os.path.abspath(shapes_root), "train")

    # 1. split
    data_dir = os.path.join(out, "data")
    split_path = os.path.join(data_dir, "split.json")
    if os.path.isfile(split_path):
        with open(split_path) as f:
            split = json.load(f)
    else:
        split = split_shapes_for_self_training(
            shapes_root,
            data_dir,
            num_gold=args.num_gold,
            omit_prob=args.omit_prob,
            absent_prob=args.absent_prob,
        )
    files = split["files"]
    gold = [
        _register("st_gold", "coco", files["gold_instances"], train_images),
        _register("st_gold_grounding", "mdetr", files["gold_grounding"], train_images),
    ]
    gold_sets = [g["NAME"] for g in gold]

    # 2. teacher
    teacher_dir = os.path.join(out, "teacher")
    teacher = _train(args, teacher_dir, args.teacher_iters, gold_sets, gold, "", log)
    teacher_weights = os.path.join(teacher_dir, "model_final.pth")
    print(f"teacher: {teacher}", flush=True)

    # 3. pseudo-labels
    pseudo_dir = os.path.join(out, "pseudo")
    pseudo_json = os.path.join(pseudo_dir, "pseudo_labels.json")
    if not os.path.isfile(pseudo_json):
        cmd = [
            sys.executable,
            "tools/pseudo_label.py",
            "--config-file",
            args.config_file,
            "--captions",
            files["captions"],
            "--image-root",
            train_images,
            "--output-dir",
            pseudo_dir,
            "MODEL.WEIGHTS",
            teacher_weights,
            "AUTOLABEL.SCORE_THRESHOLD",
            str(args.score_threshold),
            *args.opts,
        ]
        _run(cmd, log)
    quality = pseudo_label_quality(pseudo_json, files["hidden_instances"])
    print(f"pseudo-labels: {quality}", flush=True)

    # 4. students
    students = {}
    for n in sorted(int(v) for v in args.pseudo_images.split(",")):
        register, sets, repeats = list(gold), list(gold_sets), None
        if n > 0:
            subset = subset_grounding_json(
                pseudo_json, n, os.path.join(pseudo_dir, f"pseudo_{n}.json")
            )
            register.append(_register(f"st_pseudo_{n}", "mdetr", subset, train_images))
            sets.append(f"st_pseudo_{n}")
            if args.detection_share == "keep":
                # Evaluation prompts are category lists: the gold detection set is repeated so
                # that it stays half of the samples (gold grounding + pseudo the other half).
                repeats = [(split["num_gold"] + n) / split["num_gold"], 1.0, 1.0]
        weights = teacher_weights if args.init == "teacher" else ""
        student_dir = os.path.join(out, f"student_{n}")
        students[n] = _train(
            args, student_dir, args.student_iters, sets, register, weights, log, repeats
        )
        print(f"student ({n} pseudo-labelled images): {students[n]}", flush=True)

    # 5. report
    elapsed = time.perf_counter() - start
    results = {
        "split": split,
        "pseudo_label_quality": quality,
        "teacher": teacher,
        "students": {str(n): m for n, m in students.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("fresh",)},
        "wall_seconds_this_run": round(elapsed, 1),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    rows = [
        "| model | training data | AP | AP50 | grounding R@1 |",
        "|---|---|---:|---:|---:|",
        f"| teacher | {args.num_gold} gold images, {args.teacher_iters} it "
        f"| {_fmt(teacher['AP'])} | {_fmt(teacher['AP50'])} | {_fmt(teacher['R@1'])} |",
    ]
    for n, m in students.items():
        rows.append(
            f"| student | {args.num_gold} gold + {n} pseudo-labelled, +{args.student_iters} it "
            f"| {_fmt(m['AP'])} | {_fmt(m['AP50'])} | {_fmt(m['R@1'])} |"
        )
    noise = split["noise"]
    notes = [
        "",
        f"Captions: {noise['omitted_object_rate']:.0%} of the objects unmentioned "
        f"({noise['captions_with_omission_rate']:.0%} of captions omit one), "
        f"{noise['captions_with_absent_rate']:.0%} of captions name an absent object.",
        f"Pseudo-labels (score >= {args.score_threshold}): {quality['boxes']} boxes, precision "
        f"{quality['precision']:.1%}, recall {quality['recall']:.1%} of the "
        f"{quality['true_objects']} hidden objects (IoU >= 0.5, right category).",
        f"Wall time of this run: {elapsed / 60:.1f} min.",
    ]
    table = "\n".join(rows + notes) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    _plot(os.path.join(out, "student_ap.png"), teacher, students)
    print(table)
    print(f"Wrote {out}/results.md, results.json and student_ap.png")


if __name__ == "__main__":
    main()
