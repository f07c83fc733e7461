"""GLIPv2's inter-image region-word contrastive loss L_inter (loss key ``loss_region_word``).

Regions are ATSS-positive anchors, words are prompt tokens; every region of the (global) batch
is contrasted with every token of the batch, so a region sees the words of other images'
prompts as negatives, and as positives when they name the same concept. Reference:
``glipv2_reference.md`` §3.2 (the paper's formulation and the dormant official code, the
"shallow contrastive loss" of microsoft/GLIP ``modeling/rpn/loss.py``, MIT licence, whose
behaviour ``mode="code"`` reproduces; no code is copied).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from glip_d2.utils.distributed import all_gather_no_grad, all_gather_with_grad, global_max_ints

__all__ = ["RegionWordContrastiveLoss", "RegionWordState"]

MODES = ("paper", "code")
PAD_CONCEPT = -100  # label of padding rows and padding entries; never matches (official value)
MASKED_LOGIT = -1e6  # official fill value of masked logits


@dataclass
class RegionWordState:
    """What one ``RegionWordContrastiveLoss`` call computed (for tests and debugging).

    Rows are this rank's region slots, image-major (``B * M``); columns are all ranks' token
    slots, rank-major then image-major (``world_size * B * L``). ``M`` and ``L`` are the global
    maxima of the kept regions per image and of the token length.

    Attributes:
        anchor_indices (Tensor): ``(B, M)`` int64, the anchor of each slot (kept positives
            first, ascending, then padding; -1 for the zero padding of paper mode).
        region_valid (Tensor): ``(B, M)`` bool, slot holds a kept ATSS positive.
        region_concepts (Tensor): ``(B, M)`` int64, concept of the slot's GT box; -100 for
            padding.
        token_labels (Tensor): ``(B, L)`` int64, concept of the entry covering each token (the
            largest one where entries overlap), -1 where none.
        target (Tensor): ``(B * M, world_size * B * L)`` bool, region-token positives.
        logits (Tensor): ``(B * M, world_size * B * L)`` float32, cosine / temperature with
            the columns of padded tokens set to -1e6.
        loss_region_to_token (Tensor): scalar, the region->token cross-entropy sum.
        loss_token_to_region (Tensor): scalar, the token->region cross-entropy sum.
    """

    anchor_indices: Tensor
    region_valid: Tensor
    region_concepts: Tensor
    token_labels: Tensor
    target: Tensor
    logits: Tensor
    loss_region_to_token: Tensor
    loss_token_to_region: Tensor


class RegionWordContrastiveLoss(nn.Module):
    """Symmetric multi-positive region-word contrastive loss over the global batch.

    Both sides are projected to ``embed_dim`` and L2-normalised; logits are cosines divided by
    ``exp(log_scale)``. The loss is ``(sum_r CE(r -> tokens) + sum_t CE(t -> regions)) / 2``
    divided by the ATSS positive count (averaged over ranks), with soft targets: each row's
    positives share a total weight of 1; rows without positives contribute nothing.

    Modes (config ``MODEL.GLIPV2.REGION_WORD.MODE``):

    * ``"paper"``: regions are all ATSS positives (at most ``max_regions_per_image`` per image,
      drawn at random and sorted); padding rows are masked out of both directions. A region
      and a token are positive when the region's GT concept equals the concept of a prompt
      entry covering the token (any image), or, in the region's own image, when the token lies
      in the GT box's own span (its ``gt_token_maps`` row).
    * ``"code"``: the official code as written: regions are the positives matched to a GT index
      >= 1 (the first GT box's anchors are lost, an official bug); padding rows are random
      non-candidate anchors with concept -100 that stay in the token->region softmax as
      negatives; the own-image block of the target is *replaced* by the GT spans.

    Negative concepts never match (sentinels: -100 padding, -10 grounding boxes in code mode,
    -1 tokens or entries without a concept). Computed in float32 (autocast off).

    Distributed: the rows of the region->token term are this rank's regions, its columns all
    ranks' tokens; the rows of the token->region term are this rank's tokens, its columns all
    ranks' regions. Embeddings are gathered with :func:`all_gather_with_grad`, the rest without
    gradient; every rank runs the same collectives every call, with or without positives.
    """

    def __init__(
        self,
        *,
        visual_dim: int,
        text_dim: int,
        embed_dim: int = 64,
        log_scale_init: float = 0.0,
        mode: str = "paper",
        max_regions_per_image: int = 100,
    ):
        """
        Args:
            visual_dim (int): channels of the visual features (FPN width).
            text_dim (int): width of the token features.
            embed_dim (int): width of both projections (official 64).
            log_scale_init (float): initial log temperature (official 0.0, i.e. tau = 1).
            mode (str): "paper" or "code", see the class docstring.
            max_regions_per_image (int): cap on the regions per image (official 100).
        """
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MODEL.GLIPV2.REGION_WORD.MODE must be one of {MODES}, got {mode!r}")
        if max_regions_per_image < 1:
            raise ValueError(
                "MODEL.GLIPV2.REGION_WORD.MAX_REGIONS_PER_IMAGE must be >= 1, got "
                f"{max_regions_per_image}"
            )
        self.mode = mode
        self.max_regions_per_image = int(max_regions_per_image)
        self.projection_image = nn.Linear(visual_dim, embed_dim)
        self.projection_text = nn.Linear(text_dim, embed_dim)
        self.log_scale = nn.Parameter(torch.tensor([float(log_scale_init)]))
        # Official init (ATSSLossComputation.__init__): xavier-uniform weights, zero biases.
        for layer in (self.projection_image, self.projection_text):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, max_regions_per_image={self.max_regions_per_image}"

    def forward(
        self,
        *,
        visual: Tensor,
        text: Tensor,
        text_mask: Tensor,
        matched: Tensor,
        is_pos: Tensor,
        gt_concepts: Sequence[Tensor],
        gt_token_maps: Sequence[Tensor],
        entry_maps: Sequence[Tensor],
        entry_concepts: Sequence[Tensor],
        num_pos_avg: float,
        selection: Optional[Sequence[Tuple[Tensor, Tensor]]] = None,
        generator: Optional[torch.Generator] = None,
        return_state: bool = False,
    ):
        """
        Args:
            visual (Tensor): ``(B, A, C)`` pre-fusion FPN features at every anchor (levels
                concatenated P3 first, row-major inside a level; one anchor per location).
            text (Tensor): ``(B, L, D)`` token features (paper: pre-fusion; code: the
                L2-normalised fused features of the dot-product head).
            text_mask (Tensor): ``(B, L)`` 0/1 attention mask; tokens with 0 are never
                columns of the softmax.
            matched (Tensor): ``(B, A)`` int64, index of the matched GT box in its image; any
                value where ``is_pos`` is False.
            is_pos (Tensor): ``(B, A)`` bool, ATSS positives.
            gt_concepts (list[Tensor]): B tensors ``(G_i,)`` int64, concept of each GT box.
            gt_token_maps (list[Tensor]): B tensors ``(G_i, L)`` bool, the tokens of each GT
                box's own phrase span (token indices, not characters).
            entry_maps (list[Tensor]): B tensors ``(K_i, L)`` bool, the tokens of each prompt
                entry (category name or phrase).
            entry_concepts (list[Tensor]): B tensors ``(K_i,)`` int64, concept of each entry.
            num_pos_avg (float): ATSS positive count of the global batch divided by the world
                size, ``>= 1``.
            selection (list of (Tensor, Tensor), optional): per image, the kept positive
                anchors (ascending) and, in code mode, the padding anchors (``M - m_i`` of
                them; ignored in paper mode). Default: drawn as the official code does.
            generator (torch.Generator, optional): CPU generator for the draws (default:
                torch's global RNG).
            return_state (bool): also return a :class:`RegionWordState`.

        Returns:
            Tensor: scalar float32 loss (or ``(loss, RegionWordState)``).
        """
        B, A, _ = visual.shape
        L = text.shape[1]
        device = visual.device
        self._check_inputs(
            visual, text, text_mask, matched, is_pos, gt_concepts, gt_token_maps, entry_maps,
            entry_concepts, num_pos_avg, selection,
        )  # fmt: skip
        code = self.mode == "code"
        with torch.no_grad():
            candidates = is_pos & (matched >= 1) if code else is_pos.clone()
            kept, pads = self._select(candidates, matched, gt_concepts, selection, generator)
            k_local = max([len(c) for c in entry_concepts] + [1])
            m_local = max([len(k) for k in kept] + [0])
            M, K, Lg, b_max, neg_b_min = global_max_ints([m_local, k_local, L, B, -B], device)
            if code and pads is None:
                pads = self._draw_pads(candidates, kept, M, generator)
        if b_max != -neg_b_min:
            raise ValueError(
                f"RegionWordContrastiveLoss: every rank must pass the same batch size, got "
                f"{-neg_b_min}..{b_max} (this rank {B})"
            )
        world = _world_size()
        rank = _rank()

        with torch.autocast(device_type=device.type, enabled=False):
            with torch.no_grad():
                anchor_idx = torch.full((B, M), -1, dtype=torch.long)
                valid = torch.zeros((B, M), dtype=torch.bool)
                for i in range(B):
                    m = len(kept[i])
                    anchor_idx[i, :m] = kept[i]
                    valid[i, :m] = True
                    if code:
                        if len(pads[i]) != M - m:
                            raise ValueError(
                                f"selection[{i}] has {len(pads[i])} padding anchors; code mode "
                                f"needs M - m_i = {M} - {m} = {M - m}"
                            )
                        anchor_idx[i, m:] = pads[i]
                anchor_idx, valid = anchor_idx.to(device), valid.to(device)
                gather_idx = anchor_idx.clamp(min=0)
                concepts = torch.full((B, M), PAD_CONCEPT, dtype=torch.long, device=device)
                own = torch.zeros((B, M, Lg), dtype=torch.bool, device=device)
                for i in range(B):
                    m = len(kept[i])
                    if m:
                        gt = matched[i, anchor_idx[i, :m]]
                        concepts[i, :m] = gt_concepts[i].to(device).long()[gt]
                        own[i, :m, :L] = gt_token_maps[i].to(device).bool()[gt]
                ent_c = torch.full((B, K), PAD_CONCEPT, dtype=torch.long, device=device)
                ent_m = torch.zeros((B, K, Lg), dtype=torch.bool, device=device)
                for i in range(B):
                    k = len(entry_concepts[i])
                    ent_c[i, :k] = entry_concepts[i].to(device).long()
                    ent_m[i, :k, :L] = entry_maps[i].to(device).bool()
                mask = torch.zeros((B, Lg), dtype=torch.bool, device=device)
                mask[:, :L] = text_mask.to(device) > 0
                token_labels = torch.where(ent_m, ent_c[:, :, None], -1).amax(dim=1)

                concepts_all = all_gather_no_grad(concepts)
                valid_all = all_gather_no_grad(valid)
                ent_c_all = all_gather_no_grad(ent_c)
                ent_m_all = all_gather_no_grad(ent_m)
                mask_all = all_gather_no_grad(mask)

                # Local regions x global tokens, and global regions x local tokens.
                t_r2t = _concept_targets(concepts.view(-1), ent_c_all, ent_m_all)
                t_t2r = _concept_targets(concepts_all.view(-1), ent_c, ent_m)
                for i in range(B):
                    rows = slice(i * M, (i + 1) * M)
                    cols = slice((rank * B + i) * Lg, (rank * B + i + 1) * Lg)
                    g_rows = slice((rank * B + i) * M, (rank * B + i + 1) * M)
                    l_cols = slice(i * Lg, (i + 1) * Lg)
                    if code:  # official: the own-image block is overwritten by the GT spans
                        t_r2t[rows, cols] = own[i]
                        t_t2r[g_rows, l_cols] = own[i]
                    else:
                        t_r2t[rows, cols] |= own[i]
                        t_t2r[g_rows, l_cols] |= own[i]

            feats = torch.gather(
                visual.float(), 1, gather_idx[:, :, None].expand(B, M, visual.shape[2])
            )
            img = F.normalize(self.projection_image(feats), p=2, dim=-1)
            if not code:
                img = img * valid[:, :, None].to(img.dtype)  # zero padding (masked below)
            txt = F.normalize(self.projection_text(text.float()), p=2, dim=-1)
            if Lg > L:
                txt = F.pad(txt, (0, 0, 0, Lg - L))
            img_all = all_gather_with_grad(img)
            txt_all = all_gather_with_grad(txt)
            E = img.shape[-1]
            scale = self.log_scale.float().exp()

            logits = img.reshape(B * M, E) @ txt_all.reshape(world * B * Lg, E).t() / scale
            logits = logits.masked_fill(~mask_all.view(1, -1), MASKED_LOGIT)
            logits_t = txt.reshape(B * Lg, E) @ img_all.reshape(world * B * M, E).t() / scale
            logits_t = logits_t.masked_fill(~mask.view(-1, 1), MASKED_LOGIT)
            if not code:
                logits_t = logits_t.masked_fill(~valid_all.view(1, -1), MASKED_LOGIT)

            loss_r2t = _soft_cross_entropy(logits, t_r2t)
            loss_t2r = _soft_cross_entropy(logits_t, t_t2r.t())
            # The zero term keeps every parameter and input in the graph when nothing is
            # positive, so that DistributedDataParallel sees them used on every rank.
            zero = 0.0 * (img.sum() + txt.sum() + self.log_scale.sum())
            loss = (loss_r2t + loss_t2r) / 2.0 / float(num_pos_avg) + zero

        if not return_state:
            return loss
        state = RegionWordState(
            anchor_indices=anchor_idx,
            region_valid=valid,
            region_concepts=concepts,
            token_labels=token_labels[:, :L],
            target=t_r2t,
            logits=logits.detach(),
            loss_region_to_token=loss_r2t.detach(),
            loss_token_to_region=loss_t2r.detach(),
        )
        return loss, state

    def _select(self, candidates, matched, gt_concepts, selection, generator):
        """Kept positives and (code mode) padding anchors per image, as CPU int64 tensors."""
        B, A = candidates.shape
        cand_cpu = candidates.cpu()
        rule = "is_pos & (matched >= 1)" if self.mode == "code" else "is_pos"
        if selection is not None:
            kept = [torch.as_tensor(s[0], dtype=torch.long).cpu().view(-1) for s in selection]
            pads = [torch.as_tensor(s[1], dtype=torch.long).cpu().view(-1) for s in selection]
            for i, k in enumerate(kept):
                if len(k) and not bool(cand_cpu[i, k].all()):
                    raise ValueError(
                        f"selection[{i}] keeps anchors that are not region candidates "
                        f"(mode {self.mode!r}: {rule})"
                    )
                if len(k) > self.max_regions_per_image:
                    raise ValueError(
                        f"selection[{i}] keeps {len(k)} anchors, more than "
                        f"max_regions_per_image = {self.max_regions_per_image}"
                    )
        else:
            kept = []
            for i in range(B):
                pos = torch.nonzero(cand_cpu[i]).view(-1)
                cap = self.max_regions_per_image
                if len(pos) >= cap:  # official: ">=", random subset, sorted
                    pick = torch.randperm(len(pos), generator=generator)[:cap]
                    pos = pos[pick].sort().values
                kept.append(pos)
            pads = None  # drawn once M is known
        for i, k in enumerate(kept):
            if len(k):
                g = matched[i, k.to(matched.device)]
                if int(g.min()) < 0 or int(g.max()) >= len(gt_concepts[i]):
                    raise ValueError(
                        f"matched[{i}] holds GT indices outside [0, {len(gt_concepts[i])}) at "
                        "positive anchors"
                    )
        return kept, pads

    @staticmethod
    def _draw_pads(candidates: Tensor, kept: List[Tensor], M: int, generator) -> List[Tensor]:
        """Code-mode padding: per image ``M - m_i`` anchors drawn without replacement from the
        anchors that are not (pre-cap) candidates, sorted (official ``random.sample``)."""
        cand_cpu = candidates.cpu()
        pads = []
        for i, k in enumerate(kept):
            population = torch.nonzero(~cand_cpu[i]).view(-1)
            need = M - len(k)
            if need > len(population):
                raise ValueError(
                    f"image {i}: {need} padding anchors needed but only {len(population)} "
                    "anchors are not positive"
                )
            pick = torch.randperm(len(population), generator=generator)[:need]
            pads.append(population[pick].sort().values)
        return pads

    def _check_inputs(
        self, visual, text, text_mask, matched, is_pos, gt_concepts, gt_token_maps, entry_maps,
        entry_concepts, num_pos_avg, selection,
    ):  # fmt: skip
        if visual.dim() != 3:
            raise ValueError(f"visual must be (B, A, C), got shape {tuple(visual.shape)}")
        B, A, _ = visual.shape
        if text.dim() != 3 or text.shape[0] != B:
            raise ValueError(f"text must be (B={B}, L, D), got shape {tuple(text.shape)}")
        L = text.shape[1]
        if tuple(text_mask.shape) != (B, L):
            raise ValueError(f"text_mask must be (B, L) = ({B}, {L}), got {tuple(text_mask.shape)}")
        for name, t in (("matched", matched), ("is_pos", is_pos)):
            if tuple(t.shape) != (B, A):
                raise ValueError(f"{name} must be (B, A) = ({B}, {A}), got {tuple(t.shape)}")
        if is_pos.dtype != torch.bool:
            raise ValueError(f"is_pos must be a bool tensor, got {is_pos.dtype}")
        if matched.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"matched must be an integer tensor, got {matched.dtype}")
        for name, seq in (
            ("gt_concepts", gt_concepts),
            ("gt_token_maps", gt_token_maps),
            ("entry_maps", entry_maps),
            ("entry_concepts", entry_concepts),
        ):
            if len(seq) != B:
                raise ValueError(f"{name} must have one tensor per image ({B}), got {len(seq)}")
        if selection is not None and len(selection) != B:
            raise ValueError(f"selection must have one pair per image ({B}), got {len(selection)}")
        pad_tokens = text_mask <= 0
        for i in range(B):
            g, k = len(gt_concepts[i]), len(entry_concepts[i])
            if tuple(gt_token_maps[i].shape) != (g, L):
                raise ValueError(
                    f"gt_token_maps[{i}] must be (G_i, L) = ({g}, {L}), got "
                    f"{tuple(gt_token_maps[i].shape)}"
                )
            if tuple(entry_maps[i].shape) != (k, L):
                raise ValueError(
                    f"entry_maps[{i}] must be (K_i, L) = ({k}, {L}), got "
                    f"{tuple(entry_maps[i].shape)}"
                )
            for name, maps in (("gt_token_maps", gt_token_maps[i]), ("entry_maps", entry_maps[i])):
                if len(maps) and bool((maps.bool() & pad_tokens[i].to(maps.device)).any()):
                    raise ValueError(f"{name}[{i}] marks tokens whose text_mask is 0")
        if not float(num_pos_avg) >= 1.0:
            raise ValueError(
                f"num_pos_avg must be >= 1 (max(positives / world, 1)), got {num_pos_avg}"
            )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _concept_targets(region_concepts: Tensor, ent_c: Tensor, ent_m: Tensor) -> Tensor:
    """Region-token positives by concept: token t of image j is positive for region r iff an
    entry of image j covering t has the region's (non-negative) concept.

    Args:
        region_concepts (Tensor): ``(R,)`` int64.
        ent_c (Tensor): ``(J, K)`` int64 entry concepts per image.
        ent_m (Tensor): ``(J, K, L)`` bool entry token maps.

    Returns:
        Tensor: ``(R, J * L)`` bool, columns image-major.
    """
    R = region_concepts.shape[0]
    J, _, L = ent_m.shape
    hit = (region_concepts[None, :, None] == ent_c[:, None, :]) & (region_concepts >= 0)[
        None, :, None
    ]  # (J, R, K)
    # Counts of 0/1 products are exact in float32 (also under TF32: no rounding of 0/1).
    cover = torch.bmm(hit.float(), ent_m.float()) > 0.5  # (J, R, L)
    return cover.permute(1, 0, 2).reshape(R, J * L)


def _soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """``sum(-T * log_softmax(logits, 1))`` with T the row-normalised ``target`` (rows without
    positives stay 0)."""
    t = target.to(logits.dtype)
    t = t / t.sum(dim=1, keepdim=True).clamp(min=1.0)
    if logits.numel() == 0:
        return logits.sum()
    return -(t * logits.log_softmax(dim=1)).sum()
