"""Image captioning (GLIPv2's COCO Karpathy test): BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE.

The numbers come from ``pycocoevalcap`` (the COCO caption evaluation code the field reports),
with its own pipeline: every caption, predicted and reference, goes through its Stanford
``PTBTokenizer`` (lower case, punctuation removed) and then through its scorers. Its ``Cider``
is CIDEr-D (clipped n-gram counts, Gaussian length penalty, x10), computed with the document
frequencies of the evaluated set's references, so a subset scores differently from the whole.
Results are percentages (x100), as papers report them.

Java: the tokenizer, METEOR and SPICE run Java programs (``tools/install.sh`` installs Debian's
``default-jre-headless``). Without ``java`` nothing is scored (BLEU or CIDEr-D on untokenised
text would differ silently); METEOR and SPICE are skipped, with a WARNING naming the reason,
when they cannot run (:func:`unavailable_caption_metrics`). SPICE also needs the Stanford
CoreNLP 3.6.0 jars in pycocoevalcap's ``spice/lib``; pycocoevalcap would download them on first
use, which this module never does: without them SPICE is skipped. (SPICE 1.0 is known to need
Java 8 for its LMDB cache; on newer Java it may fail.)
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.logger import create_small_table

from .grounding_utils import check_known_ids, gather_predictions, write_predictions

__all__ = [
    "CAPTION_METRICS",
    "CaptionEvaluator",
    "caption_scores",
    "unavailable_caption_metrics",
]

logger = logging.getLogger(__name__)

#: The metrics :func:`caption_scores` can compute, and the result keys of each.
CAPTION_METRICS: Dict[str, tuple] = {
    "BLEU": ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE-L",),
    "CIDEr": ("CIDEr-D",),
    "SPICE": ("SPICE",),
}
_NEED_JAVA = ("METEOR", "SPICE")
# The jars pycocoevalcap's spice/get_stanford_models.py would download into spice/lib.
_SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_JRE_HINT = "install a Java runtime (Debian/Ubuntu: apt-get install default-jre-headless)"


def _spice_lib() -> str:
    import pycocoevalcap.spice

    return os.path.join(os.path.dirname(os.path.abspath(pycocoevalcap.spice.__file__)), "lib")


def unavailable_caption_metrics(
    metrics: Sequence[str] = tuple(CAPTION_METRICS),
) -> Dict[str, str]:
    """The metrics among ``metrics`` that cannot run here, each with the reason.

    METEOR needs ``java`` on the ``PATH``; SPICE needs ``java`` and the Stanford CoreNLP 3.6.0
    jars (``stanford-corenlp-3.6.0.jar`` and ``-models.jar``) in pycocoevalcap's ``spice/lib``
    (this module never downloads them). BLEU, ROUGE-L and CIDEr-D are pure Python (but the
    tokenizer that :func:`caption_scores` runs first needs ``java`` too).

    Args:
        metrics (Sequence[str]): names as in :data:`CAPTION_METRICS`.

    Returns:
        dict[str, str]: metric name -> why it is unavailable; empty if all can run.
    """
    missing: Dict[str, str] = {}
    java = shutil.which("java") is not None
    for metric in metrics:
        if metric in _NEED_JAVA and not java:
            missing[metric] = f"no 'java' on the PATH; {_JRE_HINT}"
        elif metric == "SPICE":
            lib = _spice_lib()
            absent = [j for j in _SPICE_JARS if not os.path.isfile(os.path.join(lib, j))]
            if absent:
                missing[metric] = (
                    f"the Stanford CoreNLP models are not in {lib} (missing {', '.join(absent)}); "
                    "run pycocoevalcap's spice/get_stanford_models.py once with network access"
                )
    return missing


def _check_inputs(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]):
    if not predictions:
        raise ValueError("No predictions to score")
    unknown = [i for i in predictions if i not in references]
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted image ids have no references (first: {unknown[:5]})"
        )
    for image_id, caption in predictions.items():
        if not isinstance(caption, str):
            raise TypeError(
                f"The prediction of image {image_id!r} is a {type(caption).__name__}, not a str"
            )
        refs = references[image_id]
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(
                f"Image {image_id!r} needs a non-empty list of reference captions, got {refs!r}"
            )


def caption_scores(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    metrics: Sequence[str] = tuple(CAPTION_METRICS),
) -> Dict[str, float]:
    """Score one predicted caption per image against its references with pycocoevalcap.

    Captions are tokenised by pycocoevalcap's ``PTBTokenizer`` (Java), then scored corpus-level
    over the images of ``predictions`` (only their references are used; CIDEr-D's document
    frequencies come from them).

    Args:
        predictions (Mapping[image_id, str]): one raw caption per image.
        references (Mapping[image_id, Sequence[str]]): raw reference captions, at least one
            per predicted image; extra images are ignored.
        metrics (Sequence[str]): any of ``"BLEU"``, ``"METEOR"``, ``"ROUGE_L"``, ``"CIDEr"``
            (CIDEr-D), ``"SPICE"``. METEOR and SPICE are skipped with a WARNING when
            :func:`unavailable_caption_metrics` says they cannot run.

    Returns:
        dict[str, float]: percentages under ``"BLEU-1"`` .. ``"BLEU-4"``, ``"METEOR"``,
        ``"ROUGE-L"``, ``"CIDEr-D"``, ``"SPICE"`` (those computed).

    Raises:
        RuntimeError: no ``java`` (the tokenizer needs it).
        ValueError: unknown metric, no predictions, a predicted image without references.
        TypeError: a prediction that is not a string.
    """
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"Unknown caption metrics {unknown}; known: {list(CAPTION_METRICS)}")
    _check_inputs(predictions, references)
    if shutil.which("java") is None:
        raise RuntimeError(
            "Caption evaluation needs Java for pycocoevalcap's PTBTokenizer (BLEU and CIDEr-D "
            f"of untokenised captions would differ from the published numbers); {_JRE_HINT}"
        )
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    image_ids = list(predictions)
    # One Java run for both sides (the tokenizer works line by line, so this equals
    # pycocoevalcap's two calls); same key order in both, as its scorers zip them.
    tokens = PTBTokenizer().tokenize(
        {
            **{("res", i): [{"caption": predictions[i]}] for i in image_ids},
            **{("gts", i): [{"caption": c} for c in references[i]] for i in image_ids},
        }
    )
    res = {i: tokens[("res", i)] for i in image_ids}
    gts = {i: tokens[("gts", i)] for i in image_ids}

    skipped = unavailable_caption_metrics(metrics)
    for metric, reason in skipped.items():
        logger.warning(f"Skipping the {metric} caption metric: {reason}")
    results: Dict[str, float] = {}
    for metric in metrics:
        if metric in skipped:
            continue
        scores = _score(metric, gts, res)
        results.update(zip(CAPTION_METRICS[metric], (100.0 * float(s) for s in scores)))
    return results


def _score(metric: str, gts: Dict[Any, List[str]], res: Dict[Any, List[str]]) -> List[float]:
    if metric == "BLEU":
        from pycocoevalcap.bleu.bleu import Bleu

        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
        return list(score)
    if metric == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        # Meteor starts a Java process in __init__ and ends it in __del__ (the local goes out
        # of scope here).
        score, _ = Meteor().compute_score(gts, res)
        return [score]
    if metric == "ROUGE_L":
        from pycocoevalcap.rouge.rouge import Rouge

        score, _ = Rouge().compute_score(gts, res)
        return [score]
    if metric == "CIDEr":
        from pycocoevalcap.cider.cider import Cider

        score, _ = Cider().compute_score(gts, res)
        return [score]
    from pycocoevalcap.spice.spice import Spice

    score, _ = Spice().compute_score(gts, res)
    return [score]


class CaptionEvaluator(DatasetEvaluator):
    """COCO caption metrics of generated captions (``evaluator_type`` ``"caption"``).

    References come from ``DatasetCatalog.get(dataset_name)``: each record's ``"captions"``
    (list of raw strings), keyed by its ``"image_id"``. The model's output per image is a dict
    with ``"caption"`` (str). The predictions are written to
    ``<output_dir>/captions_predictions.json`` in COCO's result format
    (``[{"image_id", "caption"}]``).

    Results: ``{"caption": {"BLEU-1" .. "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE",
    "num_images"}}``, scores in percent (see :func:`caption_scores` for what is skipped and
    why). Only the images that received a prediction are scored.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        metrics: Sequence[str] = tuple(CAPTION_METRICS),
    ):
        """
        Args:
            dataset_name (str): a registered caption set (records with ``"captions"``).
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write ``captions_predictions.json``.
            metrics (Sequence[str]): passed to :func:`caption_scores`.

        Raises:
            RuntimeError: no ``java`` on the ``PATH`` (checked here, before inference).
        """
        unknown = [m for m in metrics if m not in CAPTION_METRICS]
        if unknown:
            raise ValueError(f"Unknown caption metrics {unknown}; known: {list(CAPTION_METRICS)}")
        if shutil.which("java") is None:
            raise RuntimeError(
                f"CaptionEvaluator('{dataset_name}') needs Java for pycocoevalcap's tokenizer; "
                f"{_JRE_HINT}"
            )
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._metrics = tuple(metrics)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for input, output in zip(inputs, outputs):
            image_id = input["image_id"]
            if "caption" not in output:
                raise KeyError(
                    f"The model output for image {image_id!r} of '{self._dataset_name}' has no "
                    f"'caption' (keys: {sorted(output)})"
                )
            self._predictions.append({"image_id": image_id, "caption": str(output["caption"])})

    def _references(self) -> Dict[Any, List[str]]:
        references: Dict[Any, List[str]] = {}
        for record in DatasetCatalog.get(self._dataset_name):
            captions = record.get("captions")
            if not captions or isinstance(captions, str):
                raise ValueError(
                    f"Image {record.get('image_id')!r} ({record.get('file_name')}) of dataset "
                    f"'{self._dataset_name}' has no reference captions (its 'captions' is "
                    f"{captions!r}; expected a non-empty list of str)"
                )
            references[record["image_id"]] = list(captions)
        return references

    def evaluate(self):
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return {}
        if not predictions:
            raise ValueError(
                f"CaptionEvaluator received no predictions for dataset '{self._dataset_name}'"
            )
        by_image: Dict[Any, str] = {}
        for pred in predictions:
            # An image seen twice (padding of the last distributed batch) keeps its first.
            by_image.setdefault(pred["image_id"], pred["caption"])
        references = self._references()
        check_known_ids(by_image, references, "image ids", self._dataset_name)
        write_predictions(
            self._output_dir,
            "captions_predictions.json",
            [{"image_id": i, "caption": c} for i, c in by_image.items()],
        )
        missing = len(references) - len(by_image)
        if missing:
            logger.warning(
                f"{missing} of {len(references)} images of '{self._dataset_name}' have no "
                "predicted caption and are not scored"
            )
        scores = caption_scores(by_image, references, self._metrics)
        logger.info(
            f"Caption metrics of '{self._dataset_name}' ({len(by_image)} images):\n"
            + create_small_table(scores)
        )
        return OrderedDict(caption={**scores, "num_images": len(by_image)})
