# Adapted from: bytedance/1d-tokenizer modeling/modules/maskgit_vqgan.py (itself from
# huggingface/open-muse), commit 942a96f.
"""MaskGIT-VQGAN's network: the encoder, the decoder and the vector quantizer of the f16 model
RAR uses, laid out key for key as the release's `maskgit-vqgan-imagenet-f16-256.bin` (its quirks
included), so that the file loads with `strict=True`. rar.model.tokenizer wraps them as the
`MaskGITVQGAN` tokenizer and loads the weights.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    # MaskGIT-VQGAN (a TF/Flax model ported to PyTorch) uses 32 groups and eps 1e-6.
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at every call.

    The model was trained in TF, where SAME puts the odd padding pixel on the right/bottom;
    PyTorch's symmetric `padding=` cannot express that, so an asymmetric padding is an
    explicit `F.pad` (a copy of the input). A symmetric one, which is every convolution here
    (stride 1, odd kernels), is the convolution's own zero padding: no copy, the same values
    (on the CPU bit for bit; tests/test_tokenizer.py).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad's order: the last dimension first, (left, right, top, bottom)
        for size, k, s, d in reversed(
            list(zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True))
        ):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        left, right, top, bottom = pads
        if left == right and top == bottom:
            return F.conv2d(
                x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups
            )
        return super().forward(F.pad(x, pads))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a residual, at a fixed resolution.

    x: (B, C_in, H, W) -> (B, C_out, H, W).

    QUIRK reproduced from the release: when C_in != C_out, the 1x1 `nin_shortcut` is applied to
    the block's OUTPUT, not its input, so the block returns `h + nin_shortcut(h)` and the input
    does not reach the output through the skip at all. The released weights were trained this
    way, so "fixing" it would change every token id.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = SameConv2d(c_in, c_out, kernel_size=3, bias=False)
        self.norm2 = _group_norm(c_out)
        self.conv2 = SameConv2d(c_out, c_out, kernel_size=3, bias=False)
        # Only channel-changing blocks have the shortcut; its (C_out, C_out) shape follows
        # from the quirk above.
        self.nin_shortcut = (
            SameConv2d(c_out, c_out, kernel_size=1, bias=False) if c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout is 0 in the release: omitted
        skip = x if self.nin_shortcut is None else self.nin_shortcut(h)
        return h + skip


class Stage(nn.Module):
    """One resolution level: `num_res_blocks` ResBlocks, then an optional resampling.

    resample: "down" = 2x2 average pooling (encoder), "up" = nearest 2x upsampling followed by a
    3x3 conv with bias (decoder), None = stay at this resolution. The attribute names (`block`,
    `upsample_conv`) are the release's state-dict keys.
    """

    def __init__(self, c_in: int, c_out: int, num_res_blocks: int, resample: str | None):
        super().__init__()
        chans = [c_in] + [c_out] * num_res_blocks
        self.block = nn.ModuleList(ResBlock(a, b) for a, b in itertools.pairwise(chans))
        self.resample = resample
        if resample == "up":
            self.upsample_conv = SameConv2d(c_out, c_out, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        if self.resample == "down":
            x = F.avg_pool2d(x, kernel_size=2, stride=2)  # (B, C, H/2, W/2)
        elif self.resample == "up":
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


@dataclass(frozen=True)
class MaskGITVQGANConfig:
    hidden_channels: int = 128  # base width; level i has hidden_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels, 4 halvings: f16, 256 px -> 16x16
    num_res_blocks: int = 2  # per level, and in each middle section
    z_channels: int = 256  # latent = code dimension
    codebook_size: int = 1024  # RAR §4.1: MaskGIT-VQGAN codebook of 1024 entries
    image_size: int = 256  # ImageNet 256x256 (the network is convolutional; this sets `grid`)
    in_channels: int = 3

    def __post_init__(self):
        # Accept lists (from JSON/YAML/asdict round trips) but store a hashable tuple.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class Encoder(nn.Module):
    """x: (B, in_channels, H, W) -> z: (B, z_channels, H / f, W / f), f = 2^(levels - 1)."""

    def __init__(self, cfg: MaskGITVQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        levels = len(widths)
        self.conv_in = SameConv2d(cfg.in_channels, cfg.hidden_channels, kernel_size=3, bias=False)
        # Level i maps the previous level's width to its own and halves the resolution,
        # except at the last (coarsest) level.
        c_ins = [cfg.hidden_channels, *widths[:-1]]
        self.down = nn.ModuleList(
            Stage(c_ins[i], widths[i], cfg.num_res_blocks, "down" if i < levels - 1 else None)
            for i in range(levels)
        )
        self.mid = nn.ModuleList(
            ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks)
        )
        self.norm_out = _group_norm(widths[-1])
        self.conv_out = SameConv2d(widths[-1], cfg.z_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
        for blk in self.mid:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z: (B, z_channels, h, w) -> x: (B, in_channels, h * f, w * f), unclamped."""

    def __init__(self, cfg: MaskGITVQGANConfig):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        levels = len(widths)
        self.conv_in = SameConv2d(cfg.z_channels, widths[-1], kernel_size=3)
        self.mid = nn.ModuleList(
            ResBlock(widths[-1], widths[-1]) for _ in range(cfg.num_res_blocks)
        )
        # `up[i]` is level i (same indexing as the encoder) but runs coarse to fine: it takes
        # the width of level i + 1 (the coarsest level takes its own) and upsamples unless i = 0.
        c_ins = [*widths[1:], widths[-1]]
        self.up = nn.ModuleList(
            Stage(c_ins[i], widths[i], cfg.num_res_blocks, "up" if i > 0 else None)
            for i in range(levels)
        )
        self.norm_out = _group_norm(widths[0])
        self.conv_out = SameConv2d(widths[0], cfg.in_channels, kernel_size=3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for blk in self.mid:
            h = blk(h)
        for stage in reversed(self.up):
            h = stage(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour (L2) codebook lookup; `embedding.weight` is (codebook_size, dim)."""

    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, D, h, w) latents -> (B, h*w) int64 ids of the nearest codes, raster order."""
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(B * h * w, D)  # (B*h*w, D), raster order
        codes = self.embedding.weight  # (K, D)
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e, summed in this order as in the release so
        # that near-ties resolve to the same argmin.
        dist = torch.addmm(
            flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1)[None, :],
            flat,
            codes.t(),
            alpha=-2.0,
        )  # (B*h*w, K)
        return dist.argmin(dim=1).view(B, h * w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, h*w) raster-order ids of a square grid -> (B, D, h, w) code vectors."""
        B, n = ids.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid")
        return self.embedding(ids).view(B, side, side, -1).permute(0, 3, 1, 2)  # (B, D, h, w)


# ----------------------------------------------------------------------------------------------
# MaskGIT-VQGAN tokenizer
# ----------------------------------------------------------------------------------------------
