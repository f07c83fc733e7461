"""Helpers for the tests that read official recorded fixtures (``../shared/reference``)."""

from __future__ import annotations

from pathlib import Path


def convert_fixture_config(fixture: Path, out_dir: Path):
    """The glip_d2 config of an official recorded fixture folder, converted from its
    ``config.yaml`` and ``bert_config.json`` by ``tools/convert_glip_config.py`` (CPU, not
    frozen)."""
    import subprocess
    import sys

    from detectron2.config import get_cfg

    from glip_d2.config import add_glip_config

    root = Path(__file__).resolve().parents[1]
    out = out_dir / f"{fixture.name}.yaml"
    cmd = [
        sys.executable,
        str(root / "tools" / "convert_glip_config.py"),
        str(fixture / "config.yaml"),
        "-o",
        str(out),
        "--bert-config",
        str(fixture / "bert_config.json"),
        "--quiet",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert res.returncode == 0, res.stderr
    cfg = get_cfg()
    add_glip_config(cfg)
    cfg.merge_from_file(str(out))
    cfg.MODEL.DEVICE = "cpu"
    return cfg
