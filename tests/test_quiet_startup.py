"""`import glip_d2` and building the quick-start model print nothing a user cannot act on."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import glip_d2
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from glip_d2.data.prompts import build_tokenizer

    cfg = get_cfg()
    glip_d2.add_glip_config(cfg)
    cfg.merge_from_file("configs/quickstart/glip_tiny_shapes.yaml")
    cfg.MODEL.DEVICE = "cpu"
    build_model(cfg)  # loads the pretrained MiniLM BERT (LOAD_PRETRAINED True)
    build_tokenizer(cfg.INPUT.PROMPT.TOKENIZER)
    print("built")
    """
)


def test_import_and_quickstart_model_build_are_quiet():
    """No fvcore `torch.jit.script is deprecated` FutureWarnings at import, no transformers
    "weights not used: ['pooler...']" at model build: GLIP has no pooler by design."""
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "built"
    assert res.stderr == "", res.stderr
