"""train_net.py on a user's own data: the README's worked examples, run as written there with a
2-iteration schedule, on a small copy of the glip_shapes files in a temporary working directory.

The three routes: the example YAML with DATASETS.REGISTER, the same node on the command line,
and a Python script that registers the sets itself before calling train_net.main.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser

from glip_d2.data.datasets import generate_glip_shapes

ROOT = Path(__file__).resolve().parents[1]
# Appended to each command: 2 iterations of 2 images, no pictures, no loader processes.
SHORT = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "TEST.VISUALIZE.NUM_IMAGES",
    "0",
    "DATALOADER.NUM_WORKERS",
    "0",
]


def _readme_blocks(language: str) -> list:
    """The README's fenced code blocks of one language, as text."""
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _readme_command(script: str) -> list:
    """The arguments after ``<script>`` of the README's one bash command that runs it with
    ``DATASETS.REGISTER`` or (for the Python route) on ``my_py_*`` sets."""
    found = []
    for block in _readme_blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command)
            if (
                len(words) > 1
                and words[1] == script
                and ("DATASETS.REGISTER" in words or "('my_py_train',)" in words)
            ):
                found.append(words[2:])
    assert len(found) == 1, f"README: expected one '{script}' example, found {len(found)}"
    return found[0]


# The README's command-line example (the arguments after `train_net.py`).
COMMAND_LINE = _readme_command("train_net.py")

# The README's Python route: train_my_data.py next to train_net.py.
(PYTHON_ROUTE,) = [b for b in _readme_blocks("python") if "def main(args):" in b]


_LOGGERS = ("detectron2", "d2", "fvcore", "glip_d2")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a small glip_shapes set in datasets/glip_shapes and the repo's
    configs. At teardown the datasets registered by the test are removed and the log handlers
    that train_net's setup added are closed."""
    generate_glip_shapes(str(tmp_path / "datasets" / "glip_shapes"), num_train=2, num_val=1)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    names = set(DatasetCatalog.list())
    handlers = {n: list(logging.getLogger(n).handlers) for n in _LOGGERS}
    yield tmp_path
    for name in set(DatasetCatalog.list()) - names:
        DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
    for n, old in handlers.items():
        for handler in set(logging.getLogger(n).handlers) - set(old):
            logging.getLogger(n).removeHandler(handler)
            handler.close()


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", ROOT / "train_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results(out_dir: Path):
    return json.loads((out_dir / "eval_results.json").read_text())


def test_example_yaml_trains_and_evaluates_on_registered_files(workdir):
    # python train_net.py --config-file configs/own_data/glip_tiny_my_shapes.yaml
    config = ROOT / "configs" / "own_data" / "glip_tiny_my_shapes.yaml"
    (shown,) = [b for b in _readme_blocks("yaml") if "REGISTER:" in b]
    assert yaml.safe_load(shown) == yaml.safe_load(config.read_text()), "README != the config"
    argv = ["--config-file", "configs/own_data/glip_tiny_my_shapes.yaml", *SHORT]
    _train_net().main(default_argument_parser().parse_args(argv))
    results = _results(workdir / "output" / "my_shapes")
    assert set(results) == {"my_shapes_val", "my_shapes_val_grounding"}
    assert "bbox" in results["my_shapes_val"]
    assert "R@1" in results["my_shapes_val_grounding"]["grounding_separate"]
    assert DatasetCatalog.get("my_shapes_train_grounding")[0]["caption"]
    assert (workdir / "output" / "my_shapes" / "model_final.pth").is_file()


def test_command_line_entries_train_and_evaluate(workdir, monkeypatch):
    assert "my_train" not in DatasetCatalog.list()
    monkeypatch.setattr(sys, "argv", ["train_net.py", *COMMAND_LINE, *SHORT])
    _train_net().invoke_main()
    results = _results(workdir / "output" / "my_data")
    assert set(results) == {"my_val"} and "AP" in results["my_val"]["bbox"]
    log = (workdir / "output" / "my_data" / "log.txt").read_text()
    assert "Registered dataset 'my_train' (coco): datasets/glip_shapes/annotations/" in log


def test_python_route_registers_in_main(workdir, monkeypatch):
    (workdir / "train_my_data.py").write_text(PYTHON_ROUTE)
    monkeypatch.syspath_prepend(str(ROOT))  # train_my_data.py sits next to train_net.py
    argv = ["train_my_data.py", *_readme_command("train_my_data.py"), *SHORT]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("train_my_data.py", run_name="__main__")
    assert "AP" in _results(workdir / "output" / "my_py")["my_py_val"]["bbox"]
