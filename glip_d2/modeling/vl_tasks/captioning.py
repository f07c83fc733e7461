"""GLIPv2 image captioning on the shared trunk: causal text, an LM head, greedy and beam search.

GLIPv2 captions with the same grounded model (reference §5); how the bidirectional image-text
fusion is kept from leaking later words into earlier ones is not published (reference §5
flags it as unknown). Our choices, each switched on by the causal text mode of the trunk
(``GLIP.encode_text(..., causal=True)``):

* the language backbone and the tower's BERT layers use a causal self-attention mask: token
  ``i`` attends to tokens ``0..i``;
* the fusion's text->image direction is off: the image features never read the text (they are
  ``LN_v(v)`` where the fusion would add the text), so they are the same whatever the caption
  is; each token still attends over every image position (image->text), a softmax of its own.
  So an earlier token's output depends on the image and on the tokens before it only; the
  test ``test_caption_causality`` changes later tokens and checks that, through the whole
  trunk;
* training is **teacher forcing**: the fused feature at position ``t`` predicts token
  ``t + 1`` (``[SEP]`` ends the caption), every position of every caption is a target. We chose
  it over UniLM/VinVL's masked-token prediction because it scores every token of each caption
  per step (not 15%), which matters on a CPU budget, and decoding then needs no ``[MASK]``
  placeholder. The LM head is BERT's (``BertLMPredictionHead``), initialised from a GLIPv2
  checkpoint's MLM head when the checkpoint has one;
* decoding: greedy or beam search (``MODEL.CAPTION.BEAM_SIZE``) up to ``MAX_LENGTH`` tokens,
  never emitting ``[PAD]``, ``[CLS]``, ``[UNK]`` or ``[MASK]``; a beam's score is its summed
  log-probability divided by ``length ** LENGTH_PENALTY``.
"""

from __future__ import annotations

import logging
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..criterion.mlm import tie_lm_decoder

__all__ = ["CaptionHead", "greedy_search", "beam_search", "StepFn"]

logger = logging.getLogger(__name__)

#: ``step(ids) -> log_probs``: ``ids`` (N, t) int64 token prefixes (row ``r`` belongs to a fixed
#: image), returns (N, V) float log-probabilities of the next token.
StepFn = Callable[[torch.Tensor], torch.Tensor]

_MLM_HEAD_PREFIX = "criterion.terms.mlm.head."


class CaptionHead(nn.Module):
    """BERT LM head over the fused token features and the teacher-forcing loss.

    State-dict keys: ``lm_head.transform.*``, ``lm_head.decoder.*``, ``lm_head.bias`` (those of
    transformers' ``BertLMPredictionHead``). Loading a checkpoint that has GLIPv2's MLM head
    (``criterion.terms.mlm.head.*``) but no caption head starts the caption head from it
    (:meth:`adopt_mlm_head`, called by the model's load hook).
    """

    def __init__(self, bert_config, *, label_smoothing: float = 0.0):
        """
        Args:
            bert_config (transformers.BertConfig): the language model's config (``hidden_size``
                D, ``vocab_size`` V).
            label_smoothing (float): of the cross-entropy (0: none).
        """
        super().__init__()
        from transformers.models.bert.modeling_bert import BertLMPredictionHead

        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"MODEL.CAPTION.LABEL_SMOOTHING must be in [0, 1), got {label_smoothing}"
            )
        self.lm_head = BertLMPredictionHead(bert_config)
        self.vocab_size = int(bert_config.vocab_size)
        self.label_smoothing = float(label_smoothing)

    def tie_decoder_to(self, word_embeddings: nn.Parameter) -> None:
        """Share the decoder weight with the language model's (V, D) word embeddings."""
        tie_lm_decoder(self.lm_head, word_embeddings, "MODEL.CAPTION.TIE_WORD_EMBEDDINGS")

    @staticmethod
    def adopt_mlm_head(state_dict, prefix: str = "") -> bool:
        """Give a state dict without caption head keys the GLIPv2 MLM head's weights as
        ``caption_head.lm_head.*`` (a load pre-hook of the model calls it).

        Args:
            state_dict (dict): a whole model's state dict, edited in place.
            prefix (str): the model's prefix in it.

        Returns:
            bool: whether keys were added.
        """
        own = prefix + "caption_head.lm_head."
        if any(k.startswith(own) for k in state_dict):
            return False
        source = prefix + _MLM_HEAD_PREFIX
        found = {k[len(source) :]: v for k, v in state_dict.items() if k.startswith(source)}
        for key, value in found.items():
            state_dict[own + key] = value
        if found:
            logger.info("Caption LM head initialised from the checkpoint's GLIPv2 MLM head")
        return bool(found)

    def logits(self, text_features: torch.Tensor) -> torch.Tensor:
        """(..., D) fused token features -> (..., V) next-token logits."""
        return self.lm_head(text_features)

    def loss(
        self, text_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: position ``t`` predicts token ``t + 1`` wherever that is a token.

        Args:
            text_features (Tensor): (B, L, D) fused token features of the causal pass.
            input_ids (Tensor): (B, L) ``[CLS] caption [SEP] [PAD]...``.
            attention_mask (Tensor): (B, L), 1 for real tokens.

        Returns:
            Tensor: scalar, the mean cross-entropy over the predicted tokens (0 when a batch
            has none).
        """
        scored = attention_mask[:, 1:].bool()
        features = text_features[:, :-1][scored]
        targets = input_ids[:, 1:][scored].long()
        if features.shape[0] == 0:
            return text_features.float().sum() * 0.0
        return F.cross_entropy(
            self.logits(features).float(), targets, label_smoothing=self.label_smoothing
        )


def _banned_mask(vocab_size: int, banned: Sequence[int], device) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    ids = [int(b) for b in banned if b is not None and 0 <= int(b) < vocab_size]
    if ids:
        mask[ids] = True
    return mask


@torch.no_grad()
def greedy_search(
    step: StepFn,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    banned: Sequence[int] = (),
    device=None,
) -> List[List[int]]:
    """Greedy decoding: the most likely next token until ``eos_id`` or ``max_length`` tokens.

    Args:
        step (StepFn): next-token log-probabilities of (N, t) prefixes, ``N = batch_size``.
        batch_size (int): number of images.
        bos_id, eos_id (int): the first token of every prefix (``[CLS]``) and the end token
            (``[SEP]``).
        max_length (int): generated tokens at most (``eos_id`` not counted).
        banned (list[int]): token ids never generated.

    Returns:
        list[list[int]]: per image the generated ids, without ``bos_id`` and ``eos_id``.
    """
    ids = torch.full((batch_size, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch_size, dtype=torch.bool, device=device)
    out: List[List[int]] = [[] for _ in range(batch_size)]
    ban = None
    for _ in range(max_length + 1):
        logp = step(ids)
        if ban is None:
            ban = _banned_mask(logp.shape[-1], banned, logp.device)
        logp = logp.masked_fill(ban, float("-inf"))
        nxt = logp.argmax(-1)
        for i in range(batch_size):
            if done[i]:
                continue
            if int(nxt[i]) == eos_id or len(out[i]) == max_length:
                done[i] = True
            else:
                out[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


@torch.no_grad()
def beam_search(
    step: StepFn,
    batch_size: int,
    *,
    bos_id: int,
    eos_id: int,
    max_length: int,
    beam_size: int = 5,
    length_penalty: float = 1.0,
    banned: Sequence[int] = (),
    device=None,
) -> List[List[int]]:
    """Beam search with a length limit.

    Each image keeps ``beam_size`` live prefixes. A prefix that takes ``eos_id``, or reaches
    ``max_length`` tokens, becomes a finished hypothesis scored ``sum log p / n **
    length_penalty`` (n generated tokens, ``eos_id`` counted as one when taken). An image is
    done once it has ``beam_size`` finished hypotheses and its best live prefix, normalised at
    its current length, scores no better than the ``beam_size``-th best of them, or after
    ``max_length`` steps; the best finished hypothesis wins. With ``beam_size`` 1 this is
    :func:`greedy_search` exactly (the one live prefix is always the most likely one).

    Args:
        step (StepFn): next-token log-probabilities of (N, t) prefixes,
            ``N = batch_size * beam_size``; rows ``i * beam_size .. (i + 1) * beam_size - 1``
            belong to image ``i``.
        batch_size (int): number of images.
        bos_id, eos_id (int): first token of every prefix and end token.
        max_length (int): generated tokens at most.
        beam_size (int): live prefixes per image.
        length_penalty (float): exponent of the length normalisation (0: none).
        banned (list[int]): token ids never generated.

    Returns:
        list[list[int]]: per image the best hypothesis' ids, without ``bos_id`` and ``eos_id``.
    """
    if beam_size < 1:
        raise ValueError(f"MODEL.CAPTION.BEAM_SIZE must be >= 1, got {beam_size}")
    k = beam_size
    ids = torch.full((batch_size * k, 1), bos_id, dtype=torch.long, device=device)
    # Only the first beam of each image is live at the start (the others are copies).
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: List[List[Tuple[float, List[int]]]] = [[] for _ in range(batch_size)]
    active = [True] * batch_size
    ban = None

    def normalised(total: float, n: int) -> float:
        return total / (max(n, 1) ** length_penalty) if length_penalty else total

    for t in range(max_length + 1):
        logp = step(ids).float()
        vocab = logp.shape[-1]
        if ban is None:
            ban = _banned_mask(vocab, banned, logp.device)
        logp = logp.masked_fill(ban, float("-inf"))
        total = scores.to(logp.device)[:, :, None] + logp.view(batch_size, k, vocab)
        if t == max_length:
            # Length limit: each live prefix ends here as it is.
            for i in range(batch_size):
                for b in range(k):
                    if active[i] and torch.isfinite(scores[i, b]):
                        hyp = ids[i * k + b, 1:].tolist()
                        finished[i].append((normalised(float(scores[i, b]), len(hyp)), hyp))
            break
        flat = total.view(batch_size, k * vocab)
        top_scores, top_index = flat.topk(2 * k, dim=1)
        new_ids, new_scores = [], torch.full_like(scores, float("-inf"))
        for i in range(batch_size):
            kept = 0
            rows = []
            for s, index in zip(top_scores[i].tolist(), top_index[i].tolist()):
                if kept == k or not active[i]:
                    break
                if s == float("-inf"):
                    break
                beam, token = divmod(index, vocab)
                prefix = ids[i * k + beam]
                if token == eos_id:
                    hyp = prefix[1:].tolist()
                    finished[i].append((normalised(s, len(hyp) + 1), hyp))
                    continue
                rows.append(torch.cat([prefix, prefix.new_tensor([token])]))
                new_scores[i, kept] = s
                kept += 1
            while len(rows) < k:  # dead slots: any prefix, score -inf
                rows.append(torch.cat([ids[i * k], ids.new_tensor([eos_id])]))
            new_ids.extend(rows)
            if active[i] and len(finished[i]) >= k:
                # Done once k hypotheses are finished and the best live prefix, at its current
                # length, scores no better than the k-th best of them (Hugging Face's rule).
                kth = sorted((h[0] for h in finished[i]), reverse=True)[k - 1]
                best_live = float(new_scores[i].max())
                if best_live == float("-inf") or normalised(best_live, t + 1) <= kth:
                    active[i] = False
        ids = torch.stack(new_ids)
        scores = new_scores
        if not any(active):
            break
    out = []
    for i in range(batch_size):
        if not finished[i]:
            out.append([])
            continue
        out.append(max(finished[i], key=lambda h: h[0])[1])
    return out
