"""Make the package-index detectron2 v0.6 source release install and import without its C++ ops.

Usage: ``python tools/patch_detectron2.py <unpacked pb1-detectron2-0.6 folder>``

``pb1-detectron2==0.6`` carries detectron2 v0.6's Python files without ``layers/csrc``. Each
edit below replaces one exact snippet; if a snippet is missing (a changed release), the script
stops with an error naming the file and the snippet instead of installing something half-patched.
The edits follow what upstream detectron2 main already does; see ../shared/DETECTRON2.md.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

C_STANDIN = '''"""Pure-Python stand-in for detectron2's compiled ops (written by glip-d2's installer).

This detectron2 was installed without its C++/CUDA extension. Version queries used by
``collect_env_info`` work; any compiled op raises ``MissingCompiledOpError``. A compiled
``_C*.so`` beside this file takes precedence over it.
"""


class MissingCompiledOpError(AttributeError):
    pass


def get_compiler_version():
    return "not compiled (pure-Python install)"


def get_cuda_version():
    return "not compiled (pure-Python install)"


def has_cuda():
    return False


def __getattr__(name):
    raise MissingCompiledOpError(
        f"detectron2._C.{name} is unavailable: detectron2 was installed without compiled ops. "
        "Reinstall it from source (pip install 'git+https://github.com/facebookresearch/"
        "detectron2.git') to use this op."
    )
'''

# (relative path, old snippet, new snippet, count) ; count None = replace every occurrence (>= 1)
EDITS: list[tuple[str, str, str, int | None]] = [
    (
        "setup.py",
        '    main_source = path.join(extensions_dir, "vision.cpp")\n',
        '    main_source = path.join(extensions_dir, "vision.cpp")\n'
        "    if not path.exists(main_source):  # source release without C++ ops\n"
        "        return []\n",
        1,
    ),
    (
        "setup.py",
        '    config_paths = glob.glob("configs/**/*.yaml", recursive=True) + glob.glob(\n'
        '        "configs/**/*.py", recursive=True\n'
        "    )\n",
        '    zoo = path.join(path.dirname(path.realpath(__file__)), "detectron2", "model_zoo")\n'
        '    config_paths = glob.glob(path.join(zoo, "configs/**/*.yaml"), recursive=True) + glob.glob(\n'
        '        path.join(zoo, "configs/**/*.py"), recursive=True\n'
        "    )\n"
        "    config_paths = [path.relpath(p, zoo) for p in config_paths]\n",
        1,
    ),
    ("setup.py", '    name="pb1-detectron2",\n', '    name="detectron2",\n', 1),
    ("setup.py", '        "black==21.4b2",\n', '        "black",\n', 1),
    ("setup.py", '        "future",  # used by caffe2\n', "", 1),
    ("setup.py", '        "pydot",  # used to save caffe2 SVGs\n', "", 1),
    (
        "setup.py",
        '            "panopticapi @ https://github.com/cocodataset/panopticapi/archive/master.zip",\n',
        "",
        1,
    ),
    (
        "detectron2/evaluation/fast_eval_api.py",
        "from detectron2 import _C\n",
        "from detectron2 import _C\n\n"
        "try:\n"
        "    _C.COCOevalAccumulate\n"
        "    HAS_COMPILED_COCOEVAL = True\n"
        "except AttributeError:\n"
        "    HAS_COMPILED_COCOEVAL = False\n",
        1,
    ),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n",
        "from detectron2.evaluation.fast_eval_api import HAS_COMPILED_COCOEVAL, COCOeval_opt\n",
        1,
    ),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "        self._use_fast_impl = use_fast_impl\n",
        "        if use_fast_impl and not HAS_COMPILED_COCOEVAL:\n"
        "            logging.getLogger(__name__).info(\n"
        '                "Fast COCO eval is not built; falling back to pycocotools COCOeval."\n'
        "            )\n"
        "            use_fast_impl = False\n"
        "        self._use_fast_impl = use_fast_impl\n",
        1,
    ),
    (
        "detectron2/evaluation/coco_evaluation.py",
        "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)\n",
        "    use_fast_impl = use_fast_impl and HAS_COMPILED_COCOEVAL\n"
        "    coco_eval = (COCOeval_opt if use_fast_impl else COCOeval)(coco_gt, coco_dt, iou_type)\n",
        1,
    ),
    ("detectron2/data/transforms/transform.py", "Image.LINEAR", "Image.BILINEAR", None),
    ("detectron2/structures/masks.py", "np.bool)", "bool)", None),
    ("detectron2/utils/visualizer.py", "np.bool)", "bool)", None),
    ("detectron2/utils/video_visualizer.py", "dtype=np.bool)", "dtype=bool)", None),
    ("detectron2/evaluation/pascal_voc_evaluation.py", "astype(np.bool)", "astype(bool)", None),
    ("detectron2/evaluation/sem_seg_evaluation.py", "dtype=np.int)", "dtype=np.int64)", None),
    ("detectron2/evaluation/sem_seg_evaluation.py", "np.float)", "np.float64)", None),
    ("detectron2/data/build.py", "dtype=np.int)", "dtype=np.int64)", None),
    ("detectron2/data/build.py", "dtype=np.int\n", "dtype=np.int64\n", None),
    ("detectron2/data/datasets/pascal_voc.py", "dtype=np.str)", "dtype=str)", None),
    (
        "detectron2/engine/launch.py",
        '    assert torch.cuda.is_available(), "cuda is not available. Please check your installation."\n',
        "    has_gpu = torch.cuda.is_available()\n"
        "    if has_gpu:\n"
        "        assert num_gpus_per_machine <= torch.cuda.device_count()\n",
        1,
    ),
    (
        "detectron2/engine/launch.py",
        '            backend="NCCL",\n',
        '            backend="NCCL" if has_gpu else "GLOO",\n',
        1,
    ),
    (
        "detectron2/engine/launch.py",
        "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
        "    torch.cuda.set_device(local_rank)\n",
        "    if has_gpu:\n        torch.cuda.set_device(local_rank)\n",
        1,
    ),
    # random.sample() no longer takes a set (Python >= 3.11): MapDataset's retry crashed.
    (
        "detectron2/data/common.py",
        "            cur_idx = self._rng.sample(self._fallback_candidates, k=1)[0]\n",
        "            cur_idx = self._rng.sample(sorted(self._fallback_candidates), k=1)[0]\n",
        1,
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "import pkg_resources\n",
        "import importlib.resources\n",
        1,
    ),
    (
        "detectron2/model_zoo/model_zoo.py",
        "    cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
        "    )\n",
        '    cfg_file = str(importlib.resources.files("detectron2.model_zoo") / "configs" / config_path)\n',
        1,
    ),
]


def apply(root: Path) -> None:
    for rel, old, new, count in EDITS:
        path = root / rel
        if not path.is_file():
            sys.exit(f"patch_detectron2: {path} not found")
        text = path.read_text()
        found = text.count(old)
        if found == 0 or (count is not None and found != count):
            sys.exit(
                f"patch_detectron2: in {rel}, expected {count or '>= 1'} occurrence(s) of "
                f"{old.strip()!r}, found {found}"
            )
        path.write_text(text.replace(old, new))
    # Python files may still use removed numpy aliases elsewhere: refuse to install if so.
    leftovers = [
        f"{p.relative_to(root)}:{i + 1}"
        for p in (root / "detectron2").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines())
        if re.search(r"np\.(bool|int|float|str)\b(?!_|\d)", line)
        and not line.lstrip().startswith("#")
    ]
    if leftovers:
        sys.exit("patch_detectron2: removed numpy aliases remain at " + ", ".join(leftovers))
    (root / "detectron2" / "_C.py").write_text(C_STANDIN)
    for egg in root.glob("*.egg-info"):
        shutil.rmtree(egg)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    apply(Path(sys.argv[1]))
    print(f"patch_detectron2: patched {sys.argv[1]}")
