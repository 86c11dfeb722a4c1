# Adapted from: FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py (itself from
# taming-transformers and maskgit), commit ce98ec4.
"""LlamaGen's VQ tokenizer network: the encoder, the decoder, the vector quantizer with
l2-normalised codes and the 1x1 `quant_conv` / `post_quant_conv` around it.

The RAR supplementary material (Table 3) trains RAR-L on LlamaGen's "VQ-16"
(`vq_ds16_c2i.pt`: 16x16 tokens at 256 px, codebook 16,384 x 8). `LlamaGenVQModel` is laid out
key for key as that release (the `quantize.codebook_used` buffer included), so the file's
`model` state dict loads with `strict=True`; tests/test_llamagen_vq.py holds its ids and
decodings to the official code's. The network works on images in [-1, 1];
rar.model.tokenizer's `LlamaGenVQ` wraps it behind the common `Tokenizer` interface ([0, 1]).

Differences from the official module that do not change any output: dropout (0 in the release)
and the unused options (batch norm, conv-free resampling, entropy loss) are left out, and the
training losses are not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    # LlamaGen (like taming-transformers) uses 32 groups and eps 1e-6.
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


@dataclass(frozen=True)
class LlamaGenVQConfig:
    """The VQ-16 release by default: 71,883,403 parameters and a 65,536-entry usage buffer."""

    ch: int = 128  # base width; level i has ch * ch_mult[i] channels
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels, 4 halvings: f16, 256 px -> 16x16
    num_res_blocks: int = 2  # per encoder level (the decoder has one more per level)
    z_channels: int = 256  # encoder output / decoder input width
    codebook_size: int = 16384
    codebook_embed_dim: int = 8  # code dimension (quant_conv maps z_channels to it)
    codebook_l2_norm: bool = True  # codes and latents compared on the unit sphere
    usage_window: int = 65536  # length of the `quantize.codebook_used` buffer; 0: no buffer
    image_size: int = 256  # the network is convolutional; this sets `grid`
    in_channels: int = 3

    def __post_init__(self):
        # Accept lists (from JSON/YAML/asdict round trips) but store a hashable tuple.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip; a 1x1 `nin_shortcut` on the INPUT when the width
    changes. x: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        self.norm2 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections and a
    residual. x: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).reshape(B, C, H * W)  # (B, C, HW)
        v = self.v(h).reshape(B, C, H * W)  # (B, C, HW)
        attn = torch.softmax(torch.bmm(q, k) * C**-0.5, dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(B, C, H, W)  # (B, C, HW_q) -> image
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after zero padding of one pixel on the right and bottom only."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResnetBlocks (`res`), each followed by an AttnBlock (`attn`) at the
    coarsest level only, then an optional `downsample` or `upsample` (the release's key names).
    """

    def __init__(self, c_in: int, c_out: int, blocks: int, attention: bool, resample: str | None):
        super().__init__()
        chans = [c_in] + [c_out] * blocks
        self.res = nn.ModuleList(ResnetBlock(chans[i], c_out) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(blocks if attention else 0))
        if resample == "down":
            self.downsample = Downsample(c_out)
        elif resample == "up":
            self.upsample = Upsample(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        elif hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _middle(channels: int) -> nn.ModuleList:
    """ResnetBlock, AttnBlock, ResnetBlock at the coarsest width (`mid.0`, `mid.1`, `mid.2`)."""
    return nn.ModuleList(
        [ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)]
    )


class Encoder(nn.Module):
    """x: (B, in_channels, H, W) in [-1, 1] -> (B, z_channels, H / f, W / f), f = 2^(levels-1)."""

    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, padding=1)
        c_ins = [cfg.ch, *widths[:-1]]
        self.conv_blocks = nn.ModuleList(
            Level(c_ins[i], widths[i], cfg.num_res_blocks, i == last, "down" if i < last else None)
            for i in range(len(widths))
        )
        self.mid = _middle(widths[-1])
        self.norm_out = _group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z: (B, z_channels, h, w) -> (B, in_channels, h * f, w * f), nominally in [-1, 1].

    `conv_blocks[j]` runs coarse to fine: it is level `levels - 1 - j` of the encoder's
    indexing, with `num_res_blocks + 1` ResnetBlocks, and upsamples unless it is the finest.
    """

    def __init__(self, cfg: LlamaGenVQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in reversed(cfg.ch_mult)]  # coarse to fine
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[0], kernel_size=3, padding=1)
        self.mid = _middle(widths[0])
        c_ins = [widths[0], *widths[:-1]]
        last = len(widths) - 1
        self.conv_blocks = nn.ModuleList(
            Level(c_ins[j], widths[j], cfg.num_res_blocks + 1, j == 0, "up" if j < last else None)
            for j in range(len(widths))
        )
        self.norm_out = _group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.in_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest-code lookup; `embedding.weight` is (codebook_size, dim).

    With `l2_norm` (VQ-16) both the latents and the codes are l2-normalised before the
    distance, and the normalised code is what is returned. `codebook_used` is the release's
    record of recently used ids (filled only while training LlamaGen's tokenizer); it is kept
    for the state-dict layout and never read here.
    """

    def __init__(self, codebook_size: int, dim: int, l2_norm: bool = True, usage_window: int = 0):
        super().__init__()
        self.l2_norm = l2_norm
        self.embedding = nn.Embedding(codebook_size, dim)
        if usage_window:
            self.register_buffer("codebook_used", torch.zeros(usage_window))

    def codes(self) -> torch.Tensor:
        """(K, D) code vectors as compared and returned (normalised with `l2_norm`)."""
        weight = self.embedding.weight
        return F.normalize(weight, p=2, dim=-1) if self.l2_norm else weight

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, D, h, w) -> (quantized (B, D, h, w), ids (B, h*w) int64 in raster order).

        The quantized latents pass gradients straight through to `z`.
        """
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(B * h * w, D)  # (B*h*w, D), raster order
        codes = self.codes()  # (K, D)
        if self.l2_norm:
            flat = F.normalize(flat, p=2, dim=-1)
        # ||z||^2 + ||e||^2 - 2 z.e, summed in the release's order so near-ties resolve alike.
        dist = flat.pow(2).sum(1, keepdim=True) + codes.pow(2).sum(1) - 2 * (flat @ codes.t())
        ids = dist.argmin(dim=1)  # (B*h*w,)
        quant = flat + (codes[ids] - flat).detach()  # straight-through estimator
        return quant.view(B, h, w, D).permute(0, 3, 1, 2), ids.view(B, h * w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, h*w) raster-order ids of a square grid -> (B, D, h, w) code vectors."""
        B, n = ids.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid")
        return self.codes()[ids].view(B, side, side, -1).permute(0, 3, 1, 2)


class LlamaGenVQModel(nn.Module):
    """LlamaGen's `VQModel` on images in [-1, 1], with the release's state-dict keys.

    Methods (the official names in brackets): `encode_latents` (`encode`) -> (quantized latents,
    ids), `decode_latents` (`decode`), `decode_code` (`decode_code`, square grids only) and
    `forward` -> the reconstruction (the official forward also returns the training losses).
    """

    def __init__(self, config: LlamaGenVQConfig | None = None):
        super().__init__()
        cfg = config or LlamaGenVQConfig()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(
            cfg.codebook_size, cfg.codebook_embed_dim, cfg.codebook_l2_norm, cfg.usage_window
        )
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, kernel_size=1)

    def encode_latents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> (quantized (B, D, h, w), ids (B, h*w))."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode_latents(self, quant: torch.Tensor) -> torch.Tensor:
        """quant: (B, D, h, w) -> (B, 3, H, W), nominally in [-1, 1] (unclamped)."""
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, h*w) raster-order ids -> (B, 3, H, W), nominally in [-1, 1] (unclamped)."""
        return self.decode_latents(self.quantize.lookup(ids))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [-1, 1] -> its reconstruction through the codebook."""
        return self.decode_latents(self.encode_latents(x)[0])
