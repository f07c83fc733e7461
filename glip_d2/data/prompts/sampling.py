"""Training-time prompts for detection data: all positives, sampled negatives, a token budget.

Follows ``check_for_positive_overflow`` and
``convert_object_detection_to_grounding_optimized_for_od`` of microsoft/GLIP (MIT licence,
``maskrcnn_benchmark/data/datasets/od_to_grounding.py``; reference §10):

1. Positive classes are shuffled and admitted while the sum of their WordPiece counts
   (``name + separator``) stays within the budget (254); boxes of the others are dropped.
2. The number of negatives is ``RANDOM_SAMPLE_NEG`` with probability ``FULL_NEG_PROB``
   (official ``CONTROL_PROB[2]``), otherwise uniform in ``1..RANDOM_SAMPLE_NEG``. They are drawn
   without replacement from all classes (positives drawn are discarded), shuffled, and admitted
   while the remaining budget stays positive.
3. Positives and negatives are shuffled together (unless ``shuffle`` is off, then they are in
   class-id order) and joined with the separator.
"""

from __future__ import annotations

import random
from typing import Iterable, List, Optional, Sequence, Tuple

from .positive_map import entry_token_lengths
from .text import Prompt, build_detection_prompt, clean_name

__all__ = ["DetectionPromptSampler", "BACKGROUND_CLASS_ID"]

#: Class id of the official ``__background__`` negative (a prompt entry of no class).
BACKGROUND_CLASS_ID = -1


class DetectionPromptSampler:
    """Draws the prompt of one training image of a detection dataset.

    Example::

        sampler = DetectionPromptSampler(names, tokenizer, random_sample_neg=85)
        prompt, dropped = sampler([3, 17], rng=random.Random(0))
    """

    def __init__(
        self,
        names: Sequence[str],
        tokenizer,
        *,
        separator: str = ". ",
        random_sample_neg: int = 85,
        full_neg_prob: float = 0.5,
        token_budget: int = 254,
        shuffle: bool = True,
        prefixes: Optional[Sequence[str]] = None,
        suffixes: Optional[Sequence[str]] = None,
        background_negative: bool = False,
    ):
        """
        Args:
            names (Sequence[str]): the dataset's K category names (contiguous id order).
            tokenizer: a Hugging Face fast tokenizer, used to count WordPieces.
            separator (str): joins the entries.
            random_sample_neg (int): the full number of negatives (official 85); 0 samples
                none; a negative value puts every category in every prompt (as the official
                COCO/ODinW fine-tuning does), still within the token budget.
            full_neg_prob (float): probability of using ``random_sample_neg`` negatives.
            token_budget (int): WordPieces available to the entries (254 = 256 minus
                ``[CLS]``/``[SEP]``).
            shuffle (bool): shuffle the entries; otherwise they are in class-id order.
            prefixes, suffixes (Sequence[str], optional): per-class caption-prompt text.
            background_negative (bool): add the official ``__background__`` entry (text
                ``"background"``, class id -1) to the negative pool, as in the official
                Objects365 TSV data.
        """
        if len(names) == 0:
            raise ValueError("Empty category list: cannot sample detection prompts")
        n = len(names)
        self.names = [clean_name(x) for x in names]
        self.prefixes = list(prefixes) if prefixes is not None else [""] * n
        self.suffixes = list(suffixes) if suffixes is not None else [""] * n
        if len(self.prefixes) != n or len(self.suffixes) != n:
            raise ValueError("prefixes and suffixes need one entry per category")
        self.separator = separator
        self.random_sample_neg = int(random_sample_neg)
        self.full_neg_prob = float(full_neg_prob)
        self.token_budget = int(token_budget)
        self.shuffle = bool(shuffle)
        self.background_negative = bool(background_negative)
        texts = [p + x + s + separator for p, x, s in zip(self.prefixes, self.names, self.suffixes)]
        self._lengths = dict(enumerate(entry_token_lengths(tokenizer, texts)))
        if self.background_negative:
            self._lengths[BACKGROUND_CLASS_ID] = entry_token_lengths(
                tokenizer, ["background" + separator]
            )[0]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __call__(
        self, positive_class_ids: Iterable[int], rng: Optional[random.Random] = None
    ) -> Tuple[Prompt, List[int]]:
        """Sample a prompt for an image whose boxes have the given classes.

        Args:
            positive_class_ids (Iterable[int]): contiguous class ids of the image's boxes
                (repeats allowed; may be empty).
            rng (random.Random, optional): the random source; default the ``random`` module,
                which Detectron2 seeds per data-loader worker.

        Returns:
            tuple: the :class:`Prompt` (class ids of its entries in ``class_ids``; spans count
            characters), and the sorted positive class ids left out because they did not fit
            in the token budget (their boxes must be dropped).
        """
        rng = rng if rng is not None else random
        positives = sorted(set(int(c) for c in positive_class_ids))
        for c in positives:
            if not 0 <= c < self.num_classes:
                raise ValueError(f"class id {c} is outside 0..{self.num_classes - 1}")
        rng.shuffle(positives)
        kept: List[int] = []
        used = 0
        for c in positives:
            if used + self._lengths[c] > self.token_budget:
                break
            used += self._lengths[c]
            kept.append(c)
        dropped = sorted(set(positives) - set(kept))

        negatives = self._sample_negatives(set(positives), rng)
        remaining = self.token_budget - used
        admitted: List[int] = []
        if self.random_sample_neg < 0 and sum(self._lengths[c] for c in negatives) <= remaining:
            admitted = negatives
        else:
            for c in negatives:
                remaining -= self._lengths[c]
                if remaining <= 0:
                    break
                admitted.append(c)

        entries = admitted + kept
        if self.shuffle:
            rng.shuffle(entries)
        else:
            entries.sort()
        prompt = build_detection_prompt(
            [self._name(c) for c in entries],
            separator=self.separator,
            prefixes=[self._affix(self.prefixes, c) for c in entries],
            suffixes=[self._affix(self.suffixes, c) for c in entries],
            class_ids=entries,
            clean=False,
        )
        return prompt, dropped

    def _name(self, c: int) -> str:
        return "background" if c == BACKGROUND_CLASS_ID else self.names[c]

    @staticmethod
    def _affix(values: List[str], c: int) -> str:
        return "" if c == BACKGROUND_CLASS_ID else values[c]

    def _sample_negatives(self, positives: set, rng) -> List[int]:
        pool = list(range(self.num_classes))
        if self.background_negative:
            pool = [BACKGROUND_CLASS_ID] + pool
        if self.random_sample_neg == 0:
            return []
        if self.random_sample_neg < 0:
            negatives = [c for c in pool if c not in positives]
            if self.shuffle:
                rng.shuffle(negatives)
            return negatives
        full = min(self.random_sample_neg, len(pool))
        if rng.random() < self.full_neg_prob:
            num = full
        else:
            num = rng.randint(1, max(1, full))
        num = min(num, len(pool))
        negatives = [c for c in rng.sample(pool, num) if c not in positives]
        rng.shuffle(negatives)
        return negatives
