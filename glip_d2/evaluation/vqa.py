"""VQAv2 accuracy (``evaluator_type`` ``"vqa"``).

The metric is the official one (GT-Vision-Lab/VQA, ``vqaEval.py``): per question, the mean over
the 10 leave-one-out subsets of the human answers of ``min(1, #matches / 3)``, after the
official answer normalisation (:func:`normalize_answer`). Overall and per-``answer_type``
("yes/no", "number", "other") accuracies are means over questions, in percent. The
predictions are also written in the official submission format, so test-dev / test results
can be uploaded to the evaluation server.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils.logger import create_small_table

from ..data.vqa_answers import ANSWER_MATCHING, normalize_answer, vqa_accuracy
from .grounding_utils import check_known_ids, gather_predictions, write_predictions

__all__ = ["VQAEvaluator", "normalize_answer", "vqa_accuracy"]

logger = logging.getLogger(__name__)


class VQAEvaluator(DatasetEvaluator):
    """VQA accuracy of predicted answers (``evaluator_type`` ``"vqa"``).

    Ground truth comes from ``DatasetCatalog.get(dataset_name)``: per record ``question_id``,
    ``answers`` (the raw human answers) and ``answer_type`` (records of
    :func:`glip_d2.data.datasets.vqa.load_vqa_json`). Inputs carry ``question_id``; each output
    is a dict with the predicted ``"answer"`` string.

    ``evaluate`` writes ``<output_dir>/vqa_predictions.json`` (``[{"question_id", "answer"}]``,
    the official submission format) and returns ``{"vqa": {"accuracy", "accuracy/<answer_type>"
    for each answer type present, "question_type/<question_type>" for each question type
    present, "num_questions"}}``, accuracies in percent. Only the
    predicted questions are scored: questions of the dataset without a prediction are counted
    in a WARNING and left out of the means. A split without answers (test-dev) only gets the
    predictions file and an empty result.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        matching: str = "official",
    ):
        """
        Args:
            dataset_name (str): a registered VQA split.
            distributed (bool): gather the predictions of all ranks and evaluate on rank 0.
            output_dir (str, optional): where to write ``vqa_predictions.json``.
            matching (str): how answers are compared, see
                :func:`glip_d2.data.vqa_answers.vqa_accuracy`: ``"official"`` (default, the
                evaluation server's rule) or ``"normalized"`` (always normalise both sides:
                the rule of the soft training targets).
        """
        if matching not in ANSWER_MATCHING:
            raise ValueError(f"matching must be one of {ANSWER_MATCHING}, got {matching!r}")
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._matching = matching
        self._predictions: List[Dict[str, Any]] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """
        Args:
            inputs (list[dict]): model inputs, each with ``question_id``.
            outputs (list[dict]): model outputs, each with the predicted ``"answer"`` (str).

        Raises:
            KeyError: an output has no ``"answer"`` (names the question id).
        """
        for input, output in zip(inputs, outputs):
            if "answer" not in output:
                raise KeyError(
                    f"VQAEvaluator ('{self._dataset_name}'): the output for question_id "
                    f"{input.get('question_id')} has no 'answer' (keys: {sorted(output)})"
                )
            self._predictions.append(
                {"question_id": int(input["question_id"]), "answer": str(output["answer"])}
            )

    def evaluate(self):
        """
        Returns:
            dict: ``{"vqa": {...}}`` on the main process (see the class docstring); ``{}`` on
            the other ranks and for a split without answers.

        Raises:
            ValueError: no question was processed, or a predicted question_id is not in the
                dataset (names the dataset and the ids).
        """
        predictions = gather_predictions(self._predictions, self._distributed)
        if predictions is None:
            return {}
        if not predictions:
            raise ValueError(
                f"VQA accuracy of dataset '{self._dataset_name}': no question was processed; "
                "accuracy over zero questions is undefined"
            )

        by_question: Dict[int, str] = {}
        for pred in predictions:
            by_question.setdefault(pred["question_id"], pred["answer"])
        if len(by_question) < len(predictions):
            logger.warning(
                f"{len(predictions) - len(by_question)} repeated predictions of "
                f"'{self._dataset_name}' questions; the first of each is kept"
            )
        records = {int(r["question_id"]): r for r in DatasetCatalog.get(self._dataset_name)}
        check_known_ids(by_question, records, "question_ids", self._dataset_name)
        write_predictions(
            self._output_dir,
            "vqa_predictions.json",
            [{"question_id": q, "answer": a} for q, a in sorted(by_question.items())],
        )

        missing = len(records) - len(by_question)
        if missing:
            logger.warning(
                f"{missing} of {len(records)} questions of '{self._dataset_name}' have no "
                "prediction; only the predicted ones are scored"
            )
        scored = {q: a for q, a in by_question.items() if records[q].get("answers")}
        if not scored:
            logger.info(
                f"Dataset '{self._dataset_name}' has no answers for the predicted questions "
                "(a test split): predictions written, nothing to score"
            )
            return {}
        if len(scored) < len(by_question):
            logger.warning(
                f"{len(by_question) - len(scored)} predicted questions of "
                f"'{self._dataset_name}' have no answers and are not scored"
            )

        per_type: Dict[str, List[float]] = defaultdict(list)
        per_question_type: Dict[str, List[float]] = defaultdict(list)
        total = 0.0
        for question_id, answer in scored.items():
            record = records[question_id]
            acc = vqa_accuracy(answer, record["answers"], matching=self._matching)
            total += acc
            if "answer_type" in record:
                per_type[record["answer_type"]].append(acc)
            if "question_type" in record:
                per_question_type[record["question_type"]].append(acc)
        metrics: Dict[str, float] = {"accuracy": 100.0 * total / len(scored)}
        for answer_type in sorted(per_type):
            accs = per_type[answer_type]
            metrics[f"accuracy/{answer_type}"] = 100.0 * sum(accs) / len(accs)
        # The official evaluation's per-question-type numbers (VQAv2 has 65 such types).
        for question_type in sorted(per_question_type):
            accs = per_question_type[question_type]
            metrics[f"question_type/{question_type}"] = 100.0 * sum(accs) / len(accs)
        logger.info(
            f"VQA accuracy of '{self._dataset_name}' ({len(scored)} questions, "
            f"{self._matching} matching):\n" + create_small_table(metrics)
        )
        metrics["num_questions"] = len(scored)
        return OrderedDict(vqa=metrics)
