"""A small VQ autoencoder for the offline demo: trained by the pipeline in minutes on a CPU.

The demo has no ImageNet and no pretrained weights, so RAR needs a tokenizer it can train
itself on small class-folder images (32x32 or 64x64 RGB). `VQDemo` is a VQ-VAE (van den Oord
et al. 2017, arXiv 1711.00937) with two choices that make a short run reliable:

- l2-normalised codes and latents (ViT-VQGAN, arXiv 2110.04627 §3.2; LlamaGen): the lookup is a
  cosine match, so the codebook cannot collapse by scale and the loss terms stay bounded;
- data-dependent codebook init and dead-code restarts (Dhariwal et al. 2020 "Jukebox" §2.3;
  Zeghidour et al. 2021 "SoundStream"): unused codes are re-seeded from the current batch's
  encoder outputs, so nearly the whole codebook ends up in use.

- a spectral term beside the pixel MSE (the L1 distance of the two images' 2-D Fourier
  transforms, after the focal frequency loss of Jiang et al. 2021, arXiv 2012.12821, without
  its weighting): MSE alone leaves faint high frequencies unlearnt, a blur the FID's
  features see at once. Measured at 600 steps on a 3,200-image build of the demo set:
  reconstruction FID 1496 -> 1311 and PSNR 23.5 -> 24.7 dB with weight 1 (EfficientNet-Lite0
  features, 160 test images). config/demo.yaml has what the demo's tokenizer measures now.

It implements `rar.model.tokenizer.Tokenizer`, so the rest of the pipeline treats it like
MaskGIT-VQGAN, and `save_tokenizer` / `rar.model.tokenizer.load_tokenizer` round-trip it (kind
"vq_demo").
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from rar.model.tokenizer import Tokenizer, save_tokenizer, to_uint8
from rar.runtime import deterministic_algorithms
from rar.settings.stages import TokenizerTraining

__all__ = [
    "VQDemo",
    "VQDemoConfig",
    "evaluate_reconstruction",
    "save_tokenizer",
    "spectral_loss",
    "train_vq_demo",
]

# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VQDemoConfig:
    image_size: int = 32  # demo images are 32x32 (or 64x64) RGB
    in_channels: int = 3
    base_channels: int = 16  # width of the full-resolution level; kept thin: CPU cost lives there
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one level each, len - 1 halvings: 32 px -> 8x8
    num_res_blocks: int = 1  # per level and in the middle
    codebook_size: int = 256  # "a few hundred codes": enough for 32 px images, all used
    code_dim: int = 32
    beta: float = 0.25  # commitment weight, VQ-VAE paper eq. 3
    l2_norm_codes: bool = True  # cosine lookup (ViT-VQGAN); False = plain L2 VQ-VAE codes
    norm_groups: int = 8  # GroupNorm groups; must divide every level width

    def __post_init__(self):
        # Lists arrive from JSON/YAML and `asdict` round trips; store a hashable tuple.
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} not divisible by {self.downsample}")
        for m in self.channel_mult:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(f"width {self.base_channels * m} not divisible by norm_groups")

    @classmethod
    def with_downsample(cls, downsample: int, **fields) -> VQDemoConfig:
        """The config of `downsample` pixels per token (4 or 8): one level per halving."""
        if downsample not in (4, 8):
            raise ValueError(f"downsample {downsample}: the demo tokenizer has 4 or 8")
        return cls(channel_mult=(1, 2, 4) if downsample == 4 else (1, 2, 4, 4), **fields)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample


class _ResBlock(nn.Module):
    """Pre-activation residual block. x: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(groups, c_in),
            nn.SiLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(groups, c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


def _encoder(cfg: VQDemoConfig) -> nn.Sequential:
    """(B, 3, H, W) in [-1, 1] -> (B, code_dim, H / f, W / f) unnormalised latents."""
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
    c = widths[0]
    for i, w in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            layers.append(_ResBlock(c, w, cfg.norm_groups))
            c = w
        if i < len(widths) - 1:
            layers.append(nn.Conv2d(c, c, 4, stride=2, padding=1))  # learned 2x down
    layers += [_ResBlock(c, c, cfg.norm_groups), nn.GroupNorm(cfg.norm_groups, c), nn.SiLU()]
    layers.append(nn.Conv2d(c, cfg.code_dim, 1))
    return nn.Sequential(*layers)


def _decoder(cfg: VQDemoConfig) -> nn.Sequential:
    """(B, code_dim, h, w) code vectors -> (B, 3, h * f, w * f) images, unclamped."""
    widths = [cfg.base_channels * m for m in cfg.channel_mult]
    c = widths[-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, c, 3, padding=1)]
    layers.append(_ResBlock(c, c, cfg.norm_groups))
    for i in reversed(range(len(widths))):
        for _ in range(cfg.num_res_blocks):
            layers.append(_ResBlock(c, widths[i], cfg.norm_groups))
            c = widths[i]
        if i > 0:
            # Narrow while upsampling: the conv after the 2x upsample already has the finer
            # level's width, which keeps the costly full-resolution convs thin on a CPU.
            c_next = widths[i - 1]
            layers += [
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(c, c_next, 3, padding=1),
            ]
            c = c_next
    layers += [nn.GroupNorm(cfg.norm_groups, c), nn.SiLU()]
    layers.append(nn.Conv2d(c, cfg.in_channels, 3, padding=1))
    return nn.Sequential(*layers)


def spectral_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the orthonormal 2-D FFTs of two image batches (B, C, H, W).

    Pixel MSE weighs each frequency's error by its square, so the faint high frequencies that
    carry a natural image's edges and texture cost almost nothing to lose, and their gradient
    fades with them: the blur MSE-trained autoencoders are known for. The L1 distance of the
    transforms gives every frequency's error a gradient of the same size however small it is.
    Orthonormal: a pixel offset of c on an H x W image moves only the constant term, by
    c * sqrt(H * W)."""
    diff = torch.fft.rfft2(a, norm="ortho") - torch.fft.rfft2(b, norm="ortho")
    return diff.abs().mean()


class VQDemo(Tokenizer):
    """Small convolutional VQ autoencoder behind the `Tokenizer` interface.

    `forward(images)` is the training path (straight-through estimator, VQ losses);
    `encode` / `decode` are the frozen inference path every tokenizer shares.
    """

    kind: ClassVar[str] = "vq_demo"

    def __init__(self, config: VQDemoConfig | None = None):
        super().__init__()
        cfg = config or VQDemoConfig()
        self.config = cfg
        self.codebook_size = cfg.codebook_size
        self.image_size = cfg.image_size
        self.grid = cfg.grid
        self.encoder = _encoder(cfg)
        self.decoder = _decoder(cfg)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.normal_(self.codebook.weight)  # replaced by batch encodings when training

    # -- quantisation -----------------------------------------------------------------------

    def _norm(self, v: torch.Tensor, dim: int) -> torch.Tensor:
        return F.normalize(v, dim=dim) if self.config.l2_norm_codes else v

    def codes(self) -> torch.Tensor:
        """(K, D) code vectors as the quantiser uses them (unit length when l2_norm_codes)."""
        return self._norm(self.codebook.weight, dim=1)

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> (B, h, w, D) latents, normalised like the codes."""
        z = self.encoder(images * 2.0 - 1.0)  # (B, D, h, w); zero-centred input trains faster
        return self._norm(z.permute(0, 2, 3, 1), dim=-1)  # (B, h, w, D)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z: (..., D) latents -> (...) int64 ids of the nearest code in L2."""
        codes = self.codes()  # (K, D)
        flat = z.reshape(-1, z.shape[-1])  # (N, D)
        # ||z - e||^2 = ||z||^2 + ||e||^2 - 2 z.e; ||z||^2 is constant per row and dropped.
        dist = codes.pow(2).sum(1)[None, :] - 2.0 * flat @ codes.t()  # (N, K)
        return dist.argmin(dim=1).view(z.shape[:-1])

    def forward(
        self, images: torch.Tensor, spectral_weight: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training pass. images: (B, 3, H, W) in [0, 1].

        Returns recon (B, 3, H, W) unclamped, ids (B, h*w), and a dict of scalar losses:
        `loss` (the total to minimise), `recon` (MSE), `vq` (codebook + beta * commitment),
        `spectral` (`spectral_loss`, in the total with `spectral_weight`).
        """
        z = self.latents(images)  # (B, h, w, D)
        ids = self.nearest(z.detach())  # (B, h, w)
        z_q = self.codes()[ids]  # (B, h, w, D)
        # VQ-VAE eq. 3: pull codes to the (frozen) latents, and latents (weighted by beta) to
        # the (frozen) codes.
        vq = F.mse_loss(z_q, z.detach()) + self.config.beta * F.mse_loss(z, z_q.detach())
        # Straight-through estimator: the decoder sees z_q, the encoder gets its gradient.
        z_st = z + (z_q - z).detach()
        recon = self.decoder(z_st.permute(0, 3, 1, 2))  # (B, 3, H, W)
        rec = F.mse_loss(recon, images)
        spectral = spectral_loss(recon, images)
        losses = {"loss": rec + vq + spectral_weight * spectral, "recon": rec, "vq": vq}
        losses["spectral"] = spectral
        return recon, ids.view(images.shape[0], -1), losses

    # -- Tokenizer interface ----------------------------------------------------------------

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        B = images.shape[0]
        return self.nearest(self.latents(images)).view(B, -1)  # (B, h*w)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        B, n = ids.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} tokens do not form a square grid")
        z_q = self.codes()[ids].view(B, side, side, -1).permute(0, 3, 1, 2)  # (B, D, h, w)
        return self.decoder(z_q)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) pixels or float (N, 3, H, W) in [0, 1] -> float32 (N, 3, H, W)."""
    if images.dtype == torch.uint8:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
        return images.permute(0, 3, 1, 2).float() / 255.0
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"float images must be (N, 3, H, W), got {tuple(images.shape)}")
    return images.float()


@torch.no_grad()
def _reseed_codes(
    model: VQDemo, which: torch.Tensor, z: torch.Tensor, opt: torch.optim.Optimizer, gen
) -> None:
    """Overwrite codes `which` (int64 ids) with random rows of z (N, D) and forget their Adam
    moments, so a re-seeded code starts where the data is instead of drifting back."""
    if which.numel() == 0:
        return
    rows = torch.randint(0, z.shape[0], (which.numel(),), generator=gen, device=z.device)
    model.codebook.weight[which] = z[rows].to(model.codebook.weight.dtype)
    state = opt.state.get(model.codebook.weight, {})
    for name in ("exp_avg", "exp_avg_sq"):
        if name in state:
            state[name][which] = 0.0


def _log_step(step: int, steps: int, losses: dict, ids: torch.Tensor, codes: int, secs: float):
    psnr = -10.0 * math.log10(max(losses["recon"].item(), 1e-10))
    print(
        f"vq_demo step {step + 1}/{steps} loss {losses['loss'].item():.4f} "
        f"recon {losses['recon'].item():.4f} ({psnr:.1f} dB) vq {losses['vq'].item():.4f} "
        f"codes in use {ids.unique().numel()}/{codes} {secs:.0f}s",
        flush=True,
    )


def train_vq_demo(
    images: torch.Tensor,
    config: VQDemoConfig | None = None,
    training: TokenizerTraining | None = None,
    *,
    log_every: int = 100,
    progress: bool = True,
    restart_every: int = 10,
    device: str | torch.device = "cpu",
) -> VQDemo:
    """Train a `VQDemo` on `images` and return it frozen (eval mode, no gradients).

    images: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1], H = W = config.image_size.
    Adam with a 5% linear warm-up and cosine decay. Every `restart_every` steps, codes unused
    since the last check are re-seeded from the batch's latents; restarts stop at 80% of the
    steps so the decoder learns the final codebook. Deterministic on CPU for a given seed, at
    any thread count
    (the caller's global RNG state is left untouched). Prints a progress line every
    `log_every` steps when `progress`. The loss is MSE + VQ + spectral_weight x `spectral_loss`.
    training: steps, batch size, learning rate, spectral weight and seed (default: its
    defaults).

    Measured on synthetic 32 px shape images (1,024 of them), default config, one busy CPU
    core: about 0.3-0.45 s a step. Training reaches 25.4 dB PSNR after 1000 steps (7.5 min),
    with all 256 codes in use (perplexity 234). lr 5e-3 did worse, hence 2e-3.
    """
    cfg, training = config or VQDemoConfig(), training or TokenizerTraining()
    steps, lr, seed = training.steps, training.lr, training.seed
    data = as_float_images(images)
    if data.shape[-2:] != (cfg.image_size, cfg.image_size):
        raise ValueError(f"images are {tuple(data.shape[-2:])}, config wants {cfg.image_size}")
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)  # batches and re-seeding
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQDemo(cfg)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    used = torch.zeros(cfg.codebook_size, dtype=torch.bool, device=device)
    t0 = time.perf_counter()
    # The codebook's gradient is an index_put with accumulate (rar.runtime explains): with more
    # than one thread its summation order, and so the tokenizer, varied from run to run.
    # Serial in deterministic mode: 100 steps on 2 threads took 19.2-20.9 s either way.
    with deterministic_algorithms(True, device):
        for step in range(steps):
            idx = torch.randint(0, data.shape[0], (training.batch_size,), generator=gen)
            x = data[idx].to(device)  # (B, 3, H, W)
            if step == 0:  # data-dependent init: codes start on real latents, not empty space
                with torch.no_grad():
                    z0 = model.latents(x).reshape(-1, cfg.code_dim)  # (B*h*w, D)
                _reseed_codes(model, torch.arange(cfg.codebook_size, device=device), z0, opt, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            _, ids, losses = model(x, training.spectral_weight)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            used[ids.flatten()] = True
            if restart_every and (step + 1) % restart_every == 0 and step < 0.8 * steps:
                with torch.no_grad():
                    z = model.latents(x).reshape(-1, cfg.code_dim)
                _reseed_codes(model, (~used).nonzero().flatten(), z, opt, gen)
                used.zero_()
            if progress and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
                _log_step(step, steps, losses, ids, cfg.codebook_size, time.perf_counter() - t0)
    return model.freeze()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_reconstruction(tok: Tokenizer, images: torch.Tensor, batch_size: int = 256) -> dict:
    """Reconstruction quality and codebook use of any tokenizer on `images`.

    images: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1]. Both originals and
    reconstructions are compared as uint8 pixels (floats through `to_uint8`, like saved
    samples), so the numbers describe what the pipeline actually stores.

    Returns a JSON-ready dict: `psnr` (dB, mean over images of 10 log10(255^2 / MSE), per-image
    MSE floored at 1e-10), `mse` (uint8 units, all pixels), `codebook_usage` (fraction of codes
    used at least once), `perplexity` (exp of the entropy of the code histogram; codebook_size
    when uniform), `codebook_size`, `tokens_per_image`, `num_images`.
    """
    data = as_float_images(images)
    originals = images if images.dtype == torch.uint8 else to_uint8(data)  # (N, H, W, 3)
    device = next(itertools.chain(tok.parameters(), [torch.empty(0)])).device
    counts = torch.zeros(tok.codebook_size, dtype=torch.float64)
    psnrs, sq_err, tokens = [], 0.0, 0
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size].to(device)
        ids = tok.encode(x)  # (b, h*w)
        tokens = ids.shape[1]
        counts += torch.bincount(ids.flatten().cpu(), minlength=tok.codebook_size).double()
        rec = to_uint8(tok.decode(ids)).cpu().double()  # (b, H, W, 3)
        err = (rec - originals[start : start + batch_size].double()).pow(2)
        sq_err += err.sum().item()
        mse = err.flatten(1).mean(1).clamp_min(1e-10)  # (b,)
        psnrs.append(10.0 * torch.log10(255.0**2 / mse))
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {
        "psnr": torch.cat(psnrs).mean().item(),
        "mse": sq_err / originals.numel(),
        "codebook_usage": (counts > 0).double().mean().item(),
        "perplexity": math.exp(entropy),
        "codebook_size": tok.codebook_size,
        "tokens_per_image": tokens,
        "num_images": int(data.shape[0]),
    }


# ----------------------------------------------------------------------------------------------
# From an image folder (`rar train-tokenizer`)
# ----------------------------------------------------------------------------------------------


def load_image_folder(folder: str | os.PathLike, *, image_size: int) -> torch.Tensor:
    """Every image of a class-folder tree (`<class>/<file>`), as uint8 (N, H, W, 3), in sorted
    path order. Images must already be `image_size` square (the demo set is)."""
    import numpy as np

    from rar.data.images import list_images, load_rgb

    _, sources = list_images(folder)
    arrays = []
    for src in sources:
        path = Path(folder) / src.relpath
        img = load_rgb(path)
        if img.size != (image_size, image_size):
            raise ValueError(f"{path}: {img.size[0]}x{img.size[1]}, expected {image_size}")
        arrays.append(np.asarray(img, dtype=np.uint8))
    if not arrays:
        raise ValueError(f"{folder}: no images found")
    return torch.from_numpy(np.stack(arrays))


def train_tokenizer_from_folder(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    quality: str | os.PathLike | None = None,
    val_images: str | os.PathLike | None = None,
    config: VQDemoConfig | None = None,
    training: TokenizerTraining | None = None,
) -> VQDemo:
    """Train the demo tokenizer on a class-folder image set, save it to `out` and, with
    `quality`, write its reconstruction quality (PSNR, codebook usage) on `val_images` (or
    the training images) as JSON."""
    from rar.files import atomic_write_json

    cfg = config or VQDemoConfig()
    train_set = load_image_folder(images, image_size=cfg.image_size)
    training = training or TokenizerTraining()
    tok = train_vq_demo(train_set, cfg, training)
    save_tokenizer(tok, out)
    if quality is not None:
        held_out = val_images is not None and Path(val_images).is_dir()
        eval_set = (
            load_image_folder(val_images, image_size=cfg.image_size) if held_out else train_set
        )
        report = evaluate_reconstruction(tok, eval_set)
        report.update(
            evaluated_on=str(val_images if held_out else images),
            steps=training.steps,
            spectral_weight=training.spectral_weight,
            identity=tok.identity(),
        )
        atomic_write_json(quality, report)
        print(
            f"tokenizer {out}: PSNR {report['psnr']:.2f} dB, codebook usage "
            f"{report['codebook_usage']:.0%} (perplexity {report['perplexity']:.1f})",
            flush=True,
        )
    return tok
