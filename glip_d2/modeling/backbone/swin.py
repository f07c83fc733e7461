"""Swin Transformer v1 backbone as used by GLIP (reference §2).

Written for glip_d2 after the architecture of the official ``microsoft/GLIP``
``modeling/backbone/swint.py`` (MIT licence), itself derived from
``SwinTransformer/Swin-Transformer-Object-Detection`` (Apache-2.0). Module attribute names
follow the official ones so that ``backbone.body.*`` checkpoint keys load unchanged.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from torch import nn

__all__ = ["GLIPSwinTransformer"]

# Value added to attention logits between tokens from different regions of a shifted window.
# The official code uses -100 rather than -inf, so a fully masked row still has a finite softmax.
_SHIFT_MASK_VALUE = -100.0


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole residual branches per sample.

    Args:
        x (Tensor): residual branch output, ``(B, ...)``.
        drop_prob (float): probability of dropping the branch of one sample.
        training (bool): identity when False.

    Returns:
        Tensor: same shape as ``x``; kept samples are scaled by ``1 / (1 - drop_prob)``.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = x.new_empty(shape).bernoulli_(keep_prob)
    return x * keep / keep_prob


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; follows its own ``training`` flag (frozen stages stay
    in eval mode, so their blocks never drop)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a padded map into non-overlapping square windows.

    Args:
        x (Tensor): ``(B, H, W, C)`` with H and W multiples of ``window_size``.
        window_size (int): window side.

    Returns:
        Tensor: ``(B * nW, window_size, window_size, C)``, windows in row-major order per image.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)


def window_reverse(windows: torch.Tensor, window_size: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        windows (Tensor): ``(B * nW, window_size, window_size, C)``.
        window_size (int): window side.
        h, w (int): padded map size.

    Returns:
        Tensor: ``(B, h, w, C)``.
    """
    nh, nw = h // window_size, w // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the relative-position-bias table for every pair of tokens of a window.

    Args:
        window_size (int): window side ``w``.

    Returns:
        Tensor: int64 ``(w*w, w*w)`` with values in ``[0, (2w-1)^2)``; entry ``(i, j)`` encodes
        ``(dy, dx) = pos_i - pos_j`` as ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # (2, w*w)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def shifted_window_mask(
    hp: int, wp: int, window_size: int, shift_size: int, device: torch.device
) -> torch.Tensor:
    """Additive attention mask of the shifted-window blocks for a padded map.

    After the cyclic shift, windows on the bottom/right border mix tokens from up to three
    regions that are not neighbours in the image; pairs from different regions get -100.

    Args:
        hp, wp (int): padded map size (multiples of ``window_size``).
        window_size (int): window side.
        shift_size (int): cyclic shift (``window_size // 2``).
        device: where to build it.

    Returns:
        Tensor: float32 ``(nW, w*w, w*w)`` with values 0 or -100.
    """
    img_mask = torch.zeros((1, hp, wp, 1), device=device)
    bounds = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
    region = 0
    for hs in bounds:
        for ws in bounds:
            img_mask[:, hs, ws, :] = region
            region += 1
    mask_windows = window_partition(img_mask, window_size).reshape(-1, window_size * window_size)
    diff = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, _SHIFT_MASK_VALUE)


class Mlp(nn.Module):
    """Transformer feed-forward: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias.

    Args:
        dim (int): token channels.
        window_size (int): window side ``w``.
        num_heads (int): attention heads.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: official checkpoints contain it, and strict loading expects the key.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(B * nW, N, C)`` tokens of each window, ``N = w*w``.
            mask (Tensor or None): additive ``(nW, N, N)`` mask of shifted windows.

        Returns:
            Tensor: ``(B * nW, N, C)``.
        """
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B*nW, heads, N, head_dim)
        # Scale q before the product, as the official code does.
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(x)


class SwinBlock(nn.Module):
    """One Swin block: (shifted) window attention and MLP, both pre-norm with residuals.

    Args:
        dim (int): token channels.
        num_heads (int): attention heads.
        window_size (int): window side.
        shift_size (int): cyclic shift, 0 for regular windows.
        mlp_ratio (float): MLP hidden width / ``dim``.
        drop_path (float): stochastic depth probability of both residual branches.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float,
        drop_path: float,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size)")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int, attn_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(B, h*w, C)`` tokens in row-major order.
            h, w (int): map size.
            attn_mask (Tensor): ``(nW, N, N)`` mask for the padded map (used if shifted).

        Returns:
            Tensor: ``(B, h*w, C)``.
        """
        b, length, c = x.shape
        ws = self.window_size
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        # Zero-pad after the norm, so padded tokens are exact zeros (official order).
        pad_b = (ws - h % ws) % ws
        pad_r = (ws - w % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r

        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = attn_mask
        else:
            mask = None
        windows = window_partition(x, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, ws, ws, c), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, length, c)

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 patch merging: halves the resolution (ceil) and doubles the channels.

    Args:
        dim (int): input channels ``C``; output has ``2C``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(B, h*w, C)``.
            h, w (int): map size.

        Returns:
            Tensor: ``(B, ceil(h/2) * ceil(w/2), 2C)``.
        """
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        if h % 2 == 1 or w % 2 == 1:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Channel order (even row, even col), (odd, even), (even, odd), (odd, odd) must match the
        # pretrained `reduction` weights.
        x = torch.cat(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
        )
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """Blocks of one resolution (alternately regular and shifted windows) and an optional
    patch merging at the end.

    Args:
        dim (int): token channels.
        depth (int): number of blocks.
        num_heads (int): attention heads.
        window_size (int): window side.
        mlp_ratio (float): MLP hidden width / ``dim``.
        drop_path (Sequence[float]): stochastic depth probability per block.
        downsample (bool): end with :class:`PatchMerging`.
        use_checkpoint (bool): activation checkpointing of each block when training.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    window_size,
                    0 if i % 2 == 0 else self.shift_size,
                    mlp_ratio,
                    drop_path[i],
                )
                for i in range(depth)
            ]
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(
        self, x: torch.Tensor, h: int, w: int
    ) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
        """
        Args:
            x (Tensor): ``(B, h*w, C)``.
            h, w (int): map size.

        Returns:
            tuple: ``(out, x_next, h_next, w_next)``: this stage's output ``(B, h*w, C)`` and the
            next stage's input (``(B, ceil(h/2)*ceil(w/2), 2C)`` after merging, else ``out``).
        """
        ws = self.window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        # One mask per stage, built from the padded size (all blocks of a stage share it).
        attn_mask = shifted_window_mask(hp, wp, ws, self.shift_size, x.device).to(x.dtype)
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, h, w, attn_mask, use_reentrant=False)
            else:
                x = blk(x, h, w, attn_mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv (kernel = stride = patch) and LayerNorm.

    Args:
        patch_size (int): patch side.
        in_chans (int): image channels.
        embed_dim (int): output channels.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): ``(B, 3, H, W)``.

        Returns:
            Tensor: ``(B, embed_dim, ceil(H/p), ceil(W/p))``.
        """
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        hh, ww = x.shape[-2:]
        x = self.norm(x.flatten(2).transpose(1, 2))
        return x.transpose(1, 2).reshape(-1, x.shape[-1], hh, ww)


class GLIPSwinTransformer(Backbone):
    """Swin Transformer v1 (reference §2) as a Detectron2 backbone.

    Stage ``i`` (0-based) is named ``stage{i+2}``, has ``embed_dim * 2**i`` channels and stride
    ``4 * 2**i``. Each requested output goes through its own LayerNorm ``norm{i}``, except
    ``stage2`` whose norm is the identity (the official ``*-RETINANET`` arrangement, so no
    ``norm0`` key). State-dict keys equal the official ``backbone.body.*`` keys.
    """

    @configurable
    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        out_features: Sequence[str] = ("stage3", "stage4", "stage5"),
        freeze_at: int = -1,
        use_checkpoint: bool = False,
        patch_size: int = 4,
        in_chans: int = 3,
    ):
        """
        Args:
            embed_dim (int): channels of the first stage.
            depths (Sequence[int]): blocks per stage.
            num_heads (Sequence[int]): attention heads per stage.
            window_size (int): attention window side.
            mlp_ratio (float): MLP hidden width / channels.
            drop_path_rate (float): stochastic depth of the last block; rates rise linearly
                from 0 over all blocks.
            out_features (Sequence[str]): subset of ``stage2`` .. ``stage{len(depths)+1}``.
            freeze_at (int): the official ``FREEZE_CONV_BODY_AT``: -1 freezes nothing; k >= 0
                freezes the patch embedding; k >= 2 also stages ``0 .. k-2``. Frozen modules have
                ``requires_grad=False`` and stay in eval mode.
            use_checkpoint (bool): activation checkpointing in the non-frozen stages when
                training (same values, less memory).
            patch_size (int): patch embedding stride.
            in_chans (int): image channels.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        num_stages = len(depths)
        names = [f"stage{i + 2}" for i in range(num_stages)]
        unknown = set(out_features) - set(names)
        if unknown:
            raise ValueError(f"Unknown Swin out_features {sorted(unknown)}; choose from {names}")
        self._out_features = [n for n in names if n in out_features]
        self.freeze_at = freeze_at
        self.num_features = [int(embed_dim * 2**i) for i in range(num_stages)]

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self._out_feature_channels: Dict[str, int] = {}
        self._out_feature_strides: Dict[str, int] = {}
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=self.num_features[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    drop_path=rates[start : start + depths[i]],
                    downsample=i < num_stages - 1,
                    # Frozen stages need no activations for backward.
                    use_checkpoint=use_checkpoint and i > freeze_at - 2,
                )
            )
            self._out_feature_channels[names[i]] = self.num_features[i]
            self._out_feature_strides[names[i]] = patch_size * 2**i
        for i, name in enumerate(names):
            if name in self._out_features:
                norm = nn.Identity() if i == 0 else nn.LayerNorm(self.num_features[i])
                self.add_module(f"norm{i}", norm)
        self._freeze()

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec | None = None):
        s = cfg.MODEL.SWIN
        return {
            "embed_dim": s.EMBED_DIM,
            "depths": list(s.DEPTHS),
            "num_heads": list(s.NUM_HEADS),
            "window_size": s.WINDOW_SIZE,
            "mlp_ratio": s.MLP_RATIO,
            "drop_path_rate": s.DROP_PATH_RATE,
            "out_features": list(s.OUT_FEATURES),
            "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
            "use_checkpoint": s.USE_CHECKPOINT,
            "in_chans": input_shape.channels if input_shape is not None else 3,
        }

    def _frozen_modules(self) -> List[nn.Module]:
        if self.freeze_at < 0:
            return []
        return [self.patch_embed] + [self.layers[i] for i in range(self.freeze_at - 1)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> GLIPSwinTransformer:
        """Set the mode; frozen modules stay in eval mode (no stochastic depth)."""
        super().train(mode)
        self._freeze()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x (Tensor): ``(B, 3, H, W)`` normalised images; any H, W (padded internally).

        Returns:
            dict[str, Tensor]: for each name in ``out_features``, ``(B, C_i, h_i, w_i)`` NCHW with
            ``C_i = embed_dim * 2**i`` and ``h_i = ceil(H / (4 * 2**i))`` (ceil at every step).
        """
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        outputs: Dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            out, x, h_next, w_next = layer(x, h, w)
            name = f"stage{i + 2}"
            if name in self._out_features:
                out = getattr(self, f"norm{i}")(out)
                out = out.reshape(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
                outputs[name] = out
            h, w = h_next, w_next
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
