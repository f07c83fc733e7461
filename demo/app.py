"""Web demo of GLIP in the browser (Gradio): detect categories or ground a caption's phrases in
an uploaded image; with a GLIPv2 model also answer questions (VQA) or caption it.

    .venv/bin/python demo/app.py --config-file configs/quickstart/glip_tiny_shapes.yaml \
        [--port 7860] [--host 127.0.0.1] [--confidence-threshold 0.5] \
        [--opts MODEL.WEIGHTS output/quickstart/model_final.pth]

then open http://127.0.0.1:7860. ``make web`` runs the first command with the quick start's
weights (``make demo`` trains them).

The official GLIP-T (C) (README "Using official GLIP checkpoints"):

    .venv/bin/python demo/app.py --config-file configs/glip_swin_t.yaml \
        --opts MODEL.WEIGHTS /path/to/glip_tiny_model_o365_goldg.pth

The page takes an image (upload, or one of the glip_shapes examples), a task and its text:

* detection: categories, comma-separated, any number (large vocabularies run in chunks);
* grounding: a caption; its phrases are the optional comma-separated phrases (parts of the
  caption) or, by default, its noun phrases found by spaCy (``INPUT.PROMPT.SPACY_MODEL``);
* VQA (a ``MODEL.VQA_ON`` model): a question; captioning (a ``MODEL.CAPTION_ON`` model): none.
  Both can also ground their answer or caption.

It shows the picture drawn by Detectron2's ``Visualizer`` (one label per object; masks for a
``MODEL.MASK_ON`` model), a table of the detections above the score threshold (phrase, score,
XYXY box in image pixels) and offers them as a COCO json (``demo/demo.py``'s format).

The model is loaded once. The app runs offline: Gradio analytics off, no share link, system
fonts; it listens on the loopback address unless ``--host`` says otherwise.
"""

import argparse
import logging
import os
import sys
import tempfile
from typing import List, Optional, Tuple

# Before Gradio is imported: it reads the variable at import time.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.structures import Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import glip_d2  # noqa: E402, F401  (registers the glip_shapes examples)
from demo import (  # noqa: E402  (demo/demo.py, next to this file)
    DetectionWriter,
    phrase_spans,
    setup_cfg,
)
from glip_d2.engine import GLIPPredictor  # noqa: E402
from glip_d2.engine.visualize import draw_instances  # noqa: E402

logger = logging.getLogger("glip_d2.web")

DETECTION, GROUNDING, VQA, CAPTIONING = "detection", "grounding", "VQA", "captioning"
TABLE_HEADERS = ["phrase", "score", "box (x1, y1, x2, y2)"]
QUICKSTART_CONFIG = "configs/quickstart/glip_tiny_shapes.yaml"
QUICKSTART_WEIGHTS = "output/quickstart/model_final.pth"
EXAMPLES_DATASET = "glip_shapes_val"
OFFICIAL_HINT = (
    "Official GLIP-T (C): `--config-file configs/glip_swin_t.yaml --opts MODEL.WEIGHTS "
    '/path/to/glip_tiny_model_o365_goldg.pth` (README "Using official GLIP checkpoints")'
)


class UserError(ValueError):
    """An input the page reports as a message (no image, empty prompt, ...)."""


def missing_weights_message(weights: str) -> Optional[str]:
    """Why ``MODEL.WEIGHTS`` cannot be loaded (a local file that is not there), else None."""
    if not weights or "://" in weights or os.path.isfile(weights):
        return None
    if os.path.normpath(weights) == os.path.normpath(QUICKSTART_WEIGHTS):
        how = "train it with `make demo` (the GLIP quick start, which writes it)"
    else:
        how = "check the path"
    return (
        f"MODEL.WEIGHTS {weights} does not exist: {how}, or point --opts MODEL.WEIGHTS at "
        f"another checkpoint. {OFFICIAL_HINT}."
    )


def split_list(text: str) -> List[str]:
    """Comma-separated names -> stripped, non-empty names."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def load_image(path: Optional[str]) -> np.ndarray:
    """The uploaded file as an HxWx3 uint8 BGR array (EXIF orientation applied)."""
    if not path:
        raise UserError("Upload an image (or pick an example) first.")
    try:
        return read_image(path, format="BGR")
    except (OSError, ValueError) as e:
        name = os.path.basename(path)
        raise UserError(f"{name} is not an image that can be read (PNG, JPEG, ...): {e}") from e


def detection_table(instances: Instances, names: List[str]) -> List[list]:
    """One row per detection: phrase, score, XYXY box in image pixels."""
    phrases = (
        list(instances.pred_phrases)
        if instances.has("pred_phrases")
        else [names[c] for c in instances.pred_classes.tolist()]
    )
    return [
        [phrase, round(score, 3), ", ".join(f"{v:.1f}" for v in box)]
        for phrase, score, box in zip(
            phrases, instances.scores.tolist(), instances.pred_boxes.tensor.tolist()
        )
    ]


class WebDemo:
    """The page's callbacks around one loaded :class:`GLIPPredictor`."""

    def __init__(self, predictor: GLIPPredictor, output_dir: str):
        self.predictor = predictor
        self.output_dir = output_dir
        model = predictor.model
        self.tasks = [DETECTION, GROUNDING]
        if getattr(model, "vqa_head", None) is not None:
            self.tasks.append(VQA)
        if getattr(model, "caption_head", None) is not None:
            self.tasks.append(CAPTIONING)
        self._runs = 0

    def predict(
        self,
        image_path: Optional[str],
        task: str,
        categories: str,
        caption: str,
        phrases: str,
        question: str,
        ground: bool,
        threshold: float,
    ) -> Tuple[Optional[np.ndarray], List[list], Optional[str], str]:
        """(picture RGB, table rows, COCO json path, status message) of one run.

        Raises:
            UserError: a missing or unreadable image, an empty prompt, phrases that are not
                part of the caption, or what the predictor rejects (e.g. a caption longer than
                ``MAX_QUERY_LEN`` tokens).
        """
        image = load_image(image_path)
        text = ""
        try:
            if task == DETECTION:
                names = split_list(categories)
                if not names:
                    raise UserError("Type at least one category, e.g. `person, bicycle`.")
                out = self.predictor(image, names)
            elif task == GROUNDING:
                caption = (caption or "").strip()
                if not caption:
                    raise UserError("Type a caption, e.g. `a man riding a bike`.")
                marked = split_list(phrases)
                for phrase in marked:
                    if phrase not in caption:
                        raise UserError(f"The phrase {phrase!r} is not a part of the caption.")
                spans = phrase_spans(caption, marked) if marked else None
                out = self.predictor(image, caption, spans)
                names = []
            elif task == VQA:
                if not (question or "").strip():
                    raise UserError("Type a question, e.g. `what color is the circle?`.")
                out = self.predictor.answer(image, question, ground=ground)
                names = [out["answer"]]
                top = ", ".join(f"{a} {s:.2f}" for a, s in out["top_answers"])
                text = f"Answer: {out['answer']} ({out['score']:.2f}); top answers: {top}. "
            elif task == CAPTIONING:
                out = self.predictor.caption(image, ground=ground)
                names = []
                text = f"Caption: {out['caption']}. "
            else:
                raise UserError(f"Unknown task {task!r}; this model does {', '.join(self.tasks)}.")
        except (ValueError, TypeError, ImportError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(str(e)) from e

        rgb = np.ascontiguousarray(image[:, :, ::-1])
        if "instances" not in out:
            return rgb, [], None, text.strip()
        inst = out["instances"].to("cpu")
        inst = inst[inst.scores >= threshold]
        inst = inst[inst.scores.argsort(descending=True)]
        if not names:
            names = list(dict.fromkeys(inst.pred_phrases)) if inst.has("pred_phrases") else []
        picture = draw_instances(rgb, inst)
        rows = detection_table(inst, names)
        json_path = self._write_json(image_path, image, inst, names)
        text += f"{len(inst)} detection(s) with score >= {threshold:g}."
        return picture, rows, json_path, text

    def _write_json(self, image_path: str, image: np.ndarray, inst: Instances, names) -> str:
        writer = DetectionWriter(names)
        if inst.has("pred_phrases"):
            # pred_classes index the prompt's phrases; the json's categories are ``names``.
            inst = inst[:]
            index = {n: i for i, n in enumerate(names)}
            inst.pred_classes = torch.as_tensor(
                [index[p] for p in inst.pred_phrases], dtype=torch.int64
            )
        height, width = image.shape[:2]
        info = {"file_name": os.path.basename(image_path), "height": height, "width": width}
        writer.add(info, inst)
        self._runs += 1
        folder = os.path.join(self.output_dir, f"run{self._runs:05d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "detections.json")
        writer.write(path)
        return path


def example_rows(n: int = 3) -> List[list]:
    """``[image path, categories]`` of the first ``n`` glip_shapes validation images (the set
    is generated on first use)."""
    records = DatasetCatalog.get(EXAMPLES_DATASET)[:n]
    categories = ", ".join(MetadataCatalog.get(EXAMPLES_DATASET).thing_classes)
    return [[r["file_name"], categories] for r in records]


def build_app(web: WebDemo, cfg: CfgNode, args: argparse.Namespace):
    """The Gradio Blocks page."""
    import gradio as gr

    weights = cfg.MODEL.WEIGHTS or "none: random weights, the detections mean nothing"
    intro = (
        "# GLIP web demo\n"
        "Upload an image (or pick an example), choose a task, type categories "
        "(comma-separated, any number) or a caption, and press **Run**.\n\n"
        f"Model: `{args.config_file}`, weights: `{weights}`; tasks: {', '.join(web.tasks)}.\n\n"
        f"Other weights: restart with `--config-file ... --opts MODEL.WEIGHTS ...`. "
        f"{OFFICIAL_HINT}."
    )

    def run(image_path, task, categories, caption, phrases, question, ground, threshold):
        try:
            return web.predict(
                image_path, task, categories, caption, phrases, question, ground, threshold
            )
        except UserError as e:
            gr.Warning(str(e))
            return None, [], None, f"Error: {e}"

    def show_preview(image_path):
        if not image_path:
            return None
        try:
            return np.ascontiguousarray(load_image(image_path)[:, :, ::-1])
        except UserError as e:
            gr.Warning(str(e))
            return None

    def show_inputs(task):
        return (
            gr.update(visible=task == DETECTION),
            gr.update(visible=task == GROUNDING),
            gr.update(visible=task == GROUNDING),
            gr.update(visible=task == VQA),
            gr.update(visible=task in (VQA, CAPTIONING)),
        )

    # System fonts: the default theme would fetch its fonts from Google Fonts.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    with gr.Blocks(title="GLIP web demo", theme=theme, analytics_enabled=False) as app:
        gr.Markdown(intro)
        with gr.Row():
            with gr.Column():
                # A file, not gr.Image: gr.Image decodes the upload before our callback runs,
                # and a file that is not an image would only show a bare "Error".
                image = gr.File(
                    label="Image", file_types=["image"], type="filepath", elem_id="image"
                )
                preview = gr.Image(label="Input", interactive=False, height=240, elem_id="preview")
                task = gr.Radio(web.tasks, value=DETECTION, label="Task", elem_id="task")
                categories = gr.Textbox(
                    label="Categories (comma-separated)",
                    placeholder="person, bicycle, stop sign",
                    elem_id="categories",
                )
                caption = gr.Textbox(
                    label="Caption",
                    placeholder="a man riding a bike next to a red car",
                    visible=False,
                    elem_id="caption",
                )
                phrases = gr.Textbox(
                    label="Phrases to ground (comma-separated parts of the caption; empty: its "
                    "noun phrases)",
                    placeholder="a man, a bike, a red car",
                    visible=False,
                    elem_id="phrases",
                )
                question = gr.Textbox(label="Question", visible=False, elem_id="question")
                ground = gr.Checkbox(
                    label="Also ground the answer / the caption's noun phrases", visible=False
                )
                threshold = gr.Slider(
                    0.0,
                    1.0,
                    value=args.confidence_threshold,
                    step=0.01,
                    label="Score threshold",
                    elem_id="threshold",
                )
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                picture = gr.Image(label="Detections", interactive=False, elem_id="picture")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status")
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    value=[],
                    interactive=False,
                    label="Detections",
                    elem_id="detections",
                )
                download = gr.File(label="COCO json", interactive=False, elem_id="json")
        if args.examples > 0:
            gr.Examples(example_rows(args.examples), inputs=[image, categories])
        image.change(show_preview, image, preview)
        task.change(show_inputs, task, [categories, caption, phrases, question, ground])
        button.click(
            run,
            [image, task, categories, caption, phrases, question, ground, threshold],
            [picture, table, download, status],
        )
    return app


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1],
        epilog=OFFICIAL_HINT.replace("`", "") + ". Default: the quick start model "
        f"({QUICKSTART_CONFIG}, MODEL.WEIGHTS {QUICKSTART_WEIGHTS}, made by `make demo`); "
        "`make web` starts it.",
    )
    parser.add_argument("--config-file", default=QUICKSTART_CONFIG)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="initial score threshold"
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="glip_shapes validation images offered (0: none)"
    )
    parser.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="config overrides, e.g. MODEL.WEIGHTS path/to/model.pth",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="glip_d2")
    cfg = setup_cfg(args.config_file, args.opts)
    problem = missing_weights_message(cfg.MODEL.WEIGHTS)
    if problem:
        logger.error(problem)
        return 2
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights")
    predictor = GLIPPredictor(cfg)
    web = WebDemo(predictor, tempfile.mkdtemp(prefix="glip_web_"))
    app = build_app(web, cfg, args)
    logger.info("Serving the GLIP web demo on http://%s:%d", args.host, args.port)
    app.queue().launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
