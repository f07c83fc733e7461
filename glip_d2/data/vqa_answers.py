"""VQA answer normalisation and the VQA accuracy of one answer.

The processing and the accuracy follow the official VQA evaluation script
(GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, master since the
2021 commit "Fixed processing answers bug"; BSD licence), rewritten here: its contraction
table, number words, articles, punctuation list and the ``periodStrip`` / ``commaStrip``
rules. The data side (answer vocabulary, soft training targets) and the evaluator
(:mod:`glip_d2.evaluation.vqa`) both use this module, so that the targets a model is trained
on are the scores the metric gives.
"""

from __future__ import annotations

import functools
import re
from typing import Dict, List, Sequence

__all__ = ["ANSWER_MATCHING", "normalize_answer", "vqa_accuracy"]

#: ``matching`` choices of :func:`vqa_accuracy`.
ANSWER_MATCHING = ("normalized", "official")

# Spelled-out contractions -> their apostrophe form (the official ``contractions`` table; keys
# with capitals, such as "Im", never match since words are lower-cased first, as officially).
_CONTRACTIONS: Dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_NUMBER_WORDS: Dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe and colon are kept (VQA paper, evaluation section); so is the period, handled by
# _PERIOD_STRIP.
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip
# The official periodStrip, "(?!<=\d)(\.)(?!\d)", starts with a lookahead (not a lookbehind)
# that never fails before a ".", so it removes every period not followed by a digit ("3.5"
# keeps its period). It is called with re.UNICODE as the positional ``count`` argument, which
# caps the removals at 32 per answer; kept, so that parity is exact.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_PERIOD_STRIP_COUNT = int(re.UNICODE)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    # Removed where it touches a space (or anywhere once the text has a digit-comma-digit, as
    # "1,000" -> "1000"), else replaced by a space ("yes/no" -> "yes no"); the tests look at
    # the input text, the edits accumulate in the output, as officially.
    out = text
    has_number_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCTUATION:
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def _clean_whitespace(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 18)
def normalize_answer(answer: str) -> str:
    """The official VQA processing of an answer string.

    In order: newlines and tabs become spaces, outer whitespace is stripped, punctuation is
    removed or replaced by a space (see the module source for the context rule), periods not
    followed by a digit are removed, then the text is lower-cased, number words ``none``,
    ``zero`` ... ``ten`` become digits, the articles ``a``/``an``/``the`` are dropped,
    contractions written without apostrophe get it (``dont`` -> ``don't``) and whitespace is
    collapsed to single spaces. Examples: ``"Yes."`` -> ``"yes"``, ``"a dog"`` -> ``"dog"``,
    ``"two"`` -> ``"2"``, ``"3.5"`` -> ``"3.5"``, ``"1,000"`` -> ``"1000"``.

    Args:
        answer (str): a predicted or human answer.

    Returns:
        str: the normalised answer (possibly empty).
    """
    return _process_digit_article(_process_punctuation(_clean_whitespace(answer)))


def _leave_one_out_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    # For each human answer, min(1, matches among the other N - 1 answers / 3); the mean.
    # With m matches in all, a matching answer leaves m - 1 and a non-matching one m.
    m = sum(1 for a in gt_answers if a == prediction)
    n = len(gt_answers)
    return (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n


def _check_answers(gt_answers: Sequence[str]) -> List[str]:
    if isinstance(gt_answers, str):
        raise TypeError(f"gt_answers must be a sequence of answers, got the string {gt_answers!r}")
    answers = list(gt_answers)
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer, got none")
    return answers


def vqa_accuracy(
    prediction: str, gt_answers: Sequence[str], *, matching: str = "normalized"
) -> float:
    """VQA accuracy of one predicted answer against the human answers of a question.

    For each of the N human answers (10 in VQAv2), the accuracy against the other N - 1 is
    ``min(1, #matches / 3)``; the result is the mean over the N leave-one-out subsets (the
    "10 choose 9" average of the official script). With 10 answers, an answer given by 0, 1,
    2, 3, >= 4 humans scores 0, 0.3, 0.6, 0.9, 1. With fewer than 4 human answers no
    prediction reaches 1, and with a single one every prediction scores 0 (nothing is left
    once it is held out), as in the official script.

    Args:
        prediction (str): the predicted answer, raw.
        gt_answers (Sequence[str]): the human answers, raw.
        matching (str): ``"normalized"`` (default): both sides always go through
            :func:`normalize_answer`, so equivalent spellings ("Two", "2") always match.
            ``"official"``: exactly the official script: whitespace-cleaned strings are
            compared as they are (case-sensitive) when all human answers agree, and both sides
            are normalised only when they disagree; this reproduces the evaluation server
            (on VQAv2, whose unanimous answers are already in normal form, the two differ
            only for predictions not in normal form).

    Returns:
        float: the accuracy, in [0, 1].

    Raises:
        ValueError: ``gt_answers`` is empty, or ``matching`` is not a known choice.
        TypeError: ``gt_answers`` is a single string.
    """
    answers = _check_answers(gt_answers)
    if matching == "normalized":
        return _leave_one_out_accuracy(
            normalize_answer(prediction), [normalize_answer(a) for a in answers]
        )
    if matching == "official":
        answers = [_clean_whitespace(a) for a in answers]
        prediction = _clean_whitespace(prediction)
        if len(set(answers)) > 1:
            answers = [normalize_answer(a) for a in answers]
            prediction = normalize_answer(prediction)
        return _leave_one_out_accuracy(prediction, answers)
    raise ValueError(f"matching must be one of {ANSWER_MATCHING}, got {matching!r}")
