# Adapted from: bytedance/1d-tokenizer modeling/titok.py `PretrainedTokenizer` and
# modeling/modules/maskgit_vqgan.py (the network: rar.model.maskgit_vqgan), commit 942a96f;
# the LlamaGen VQ loading after FoundationVision/LlamaGen (rar.model.llamagen_vq), commit ce98ec4.
"""Image tokenizers: the common `Tokenizer` interface, the MaskGIT-VQGAN f16 model RAR uses and
LlamaGen's VQ-16 (the tokenizer of the supplementary material's Table 3).

RAR (arXiv 2411.00776, §4.1) models the 16x16 = 256 token ids of the MaskGIT-VQGAN tokenizer
(codebook 1024) that the RAR release ships as `maskgit-vqgan-imagenet-f16-256.bin`, a plain
state dict. `MaskGITVQGAN` reproduces that network key for key, so the file loads with
`strict=True`, and it reproduces the release's ids and decodings (tests/test_tokenizer.py).
`LlamaGenVQ` does the same for LlamaGen's `vq_ds16_c2i.pt` (`{"model": state dict, ...}`),
mapping [0, 1] to its [-1, 1] range and back (tests/test_llamagen_vq.py).

Every tokenizer in this package (also the offline demo's `rar.demo.vq.VQDemo`) follows one
interface: `encode(images in [0, 1]) -> (B, h*w)` raster-order int64 ids, `decode(ids) ->
images in [0, 1]`, `codebook_size`, `grid`, `image_size` and `identity()`, a hash of the
weights recorded in every manifest and run config.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import math
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from rar.files import atomic_open
from rar.model.llamagen_vq import LlamaGenVQConfig, LlamaGenVQModel
from rar.model.maskgit_vqgan import Decoder, Encoder, MaskGITVQGANConfig, VectorQuantizer
from rar.settings.presets import decode_slice

# ----------------------------------------------------------------------------------------------
# Common interface
# ----------------------------------------------------------------------------------------------


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Convert decoded images to the uint8 pixels that are saved and scored.

    images: (B, 3, H, W) float, nominally in [0, 1]. Returns (B, H, W, 3) uint8 on the same device.

    Values are clamped to [0, 1], scaled by 255 and TRUNCATED, not rounded (0.999 -> 254). This
    is what the official sampler does (bytedance/1d-tokenizer demo_util.py `sample_fn`:
    `(x * 255.0).to(torch.uint8)`), and FID is sensitive to it: rounding shifts every pixel by
    half a level on average, so samples must be converted exactly this way to compare with the
    paper's numbers.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    # float32 first: a bf16 input cannot hold 255 * x exactly, which would move the truncation.
    x = images.float().clamp(0.0, 1.0) * 255.0
    return x.permute(0, 2, 3, 1).to(torch.uint8)  # (B, H, W, 3); the cast truncates toward 0


def decode_to_uint8(tokenizer: Tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """ids (n, N) -> the images (n, H, W, 3) uint8 on the host, as `rar sample` stores them
    and `rar bench-sample` times them: decoded in fp32 whatever the generator's precision
    (bf16 moves pixels across `to_uint8`'s truncation boundary, and decoding is one pass
    against the generator's N steps), in slices of `rar.settings.presets.decode_slice`
    images, so that the decoder's activations stay bounded beside a chunk's KV cache."""
    side = math.isqrt(ids.shape[1]) * (tokenizer.image_size // tokenizer.grid)
    step = decode_slice(side * side)
    with torch.autocast(ids.device.type, enabled=False):
        parts = [
            to_uint8(tokenizer.decode(ids[i : i + step])).cpu() for i in range(0, len(ids), step)
        ]
    return torch.cat(parts)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex digest of a state dict: key names, dtypes, shapes and raw bytes, keys sorted.

    Sorting makes the digest independent of the order in which a module registered its
    parameters, so a file and the module loaded from it hash alike.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        # Raw little-endian bytes via a uint8 view: works for dtypes numpy lacks (bfloat16).
        flat = t.to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Tokenizer(nn.Module):
    """Discrete image tokenizer: images in [0, 1] <-> raster-order code ids.

    Subclasses set `codebook_size`, `grid` (token grid side, h = w) and `image_size` (pixels),
    a class-level `kind` (the tag of our checkpoint format) and `config` (a frozen dataclass),
    and implement `_encode` / `_decode`. The public `encode` / `decode` wrap them in
    `torch.no_grad()` and check shapes. Nothing here picks a device: inputs decide it.
    """

    kind: ClassVar[str] = ""
    codebook_size: int
    grid: int
    image_size: int
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self._identity_cache: tuple[tuple, str] | None = None

    # Subclasses implement these two, without worrying about grad mode.
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) float in [0, 1] -> (B, h*w) int64 code ids in raster order."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        return self._encode(images).long()

    def at_grid(self, grid: int) -> Tokenizer:
        """This tokenizer set to `grid` x `grid` tokens: images of `grid` times its
        downsampling a side (every tokenizer here is convolutional, so any multiple of the
        downsampling encodes; decoding reads the grid from the ids). Returns self."""
        if grid < 1:
            raise ValueError(f"a token grid of {grid} per side")
        self.image_size = grid * (self.image_size // self.grid)
        self.grid = grid
        return self

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, h*w) int64 raster-order code ids -> (B, 3, H, W) float images in [0, 1]."""
        if ids.ndim != 2:
            raise ValueError(f"expected ids of shape (B, h*w), got {tuple(ids.shape)}")
        return self._decode(ids.long()).clamp(0.0, 1.0)

    def identity(self) -> str:
        """sha256 hex digest of the weights (see `state_dict_sha256`), cached.

        The cache is keyed on every tensor's storage pointer and autograd version counter, so
        an optimizer step, `load_state_dict` or an in-place edit under `torch.no_grad()`
        recomputes it. Writes through `.data` bypass the version counter; avoid them.
        """
        sd = self.state_dict(keep_vars=True)
        key = tuple((name, t.data_ptr(), t._version) for name, t in sd.items())
        if self._identity_cache is None or self._identity_cache[0] != key:
            self._identity_cache = (key, state_dict_sha256(sd))
        return self._identity_cache[1]

    def freeze(self) -> Tokenizer:
        """Eval mode and no gradients: how every loaded tokenizer is used. Returns self."""
        self.eval()
        self.requires_grad_(False)
        return self


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Write `{"kind", "config", "model"}` (our tokenizer format) to `path` atomically.

    The temporary file sits in the destination folder so `os.replace` is a same-filesystem
    rename: a crash leaves either the old file or the new one, never half a file, and a
    Snakemake output is never seen truncated.
    """
    if not tok.kind:
        raise ValueError(f"{type(tok).__name__} has no checkpoint kind and cannot be saved")
    payload = {
        "kind": tok.kind,
        "config": dataclasses.asdict(tok.config),
        "model": {k: v.detach().cpu() for k, v in tok.state_dict().items()},
    }
    with atomic_open(path) as f:
        torch.save(payload, f)


# ----------------------------------------------------------------------------------------------
# MaskGIT-VQGAN (its network: rar.model.maskgit_vqgan)
# ----------------------------------------------------------------------------------------------


class MaskGITVQGAN(Tokenizer):
    """The MaskGIT-VQGAN f16 tokenizer RAR generates with (54,515,587 parameters at default size).

    State-dict keys equal the release's `maskgit-vqgan-imagenet-f16-256.bin`. Use
    `load_official_maskgit_vqgan` / `load_tokenizer` to get a loaded, frozen instance.
    """

    kind: ClassVar[str] = "maskgit_vqgan"

    def __init__(self, config: MaskGITVQGANConfig | None = None):
        super().__init__()
        cfg = config or MaskGITVQGANConfig()
        self.config = cfg
        self.codebook_size = cfg.codebook_size
        self.image_size = cfg.image_size
        self.grid = cfg.image_size // cfg.downsample
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # The code dimension is the latent width: no projection sits between them.
        self.quantize = VectorQuantizer(cfg.codebook_size, cfg.z_channels)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, H, W) in [0, 1], fed as is (the release does no [-1, 1] rescaling).
        return self.quantize.nearest(self.encoder(images))  # (B, h*w)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantize.lookup(ids))  # (B, 3, H, W)


# ----------------------------------------------------------------------------------------------
# LlamaGen VQ (its network: rar.model.llamagen_vq)
# ----------------------------------------------------------------------------------------------


class LlamaGenVQ(LlamaGenVQModel, Tokenizer):
    """LlamaGen's VQ tokenizer (VQ-16 at default size) behind the `Tokenizer` interface.

    State-dict keys equal the release's `vq_ds16_c2i.pt` `model` entry, since the network
    (`LlamaGenVQModel`, on [-1, 1] images, its methods available here too) is this module
    itself. `encode` / `decode` take and give [0, 1] images. Use `load_official_llamagen_vq` /
    `load_tokenizer` to get a loaded, frozen instance.
    """

    kind: ClassVar[str] = "llamagen_vq"

    def __init__(self, config: LlamaGenVQConfig | None = None):
        super().__init__(config)
        self.codebook_size = self.config.codebook_size
        self.image_size = self.config.image_size
        self.grid = self.config.image_size // self.config.downsample

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_latents(images * 2.0 - 1.0)[1]  # (B, h*w)

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        return (self.decode_code(ids) + 1.0) / 2.0  # (B, 3, H, W)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_DOWN_KEY = re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
_LLAMAGEN_KEY = re.compile(r"^encoder\.conv_blocks\.(\d+)\.res\.(\d+)\.conv1\.weight$")


def _key_summary(keys: set[str], limit: int = 8) -> str:
    shown = sorted(keys)[:limit]
    more = f" … (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(shown) + more


def _encoder_layout(
    sd: Mapping[str, Any], pattern: re.Pattern, first_conv: str, source: str, name: str
) -> tuple[tuple[int, ...], int]:
    """(channel multipliers, res blocks per level) of an encoder, read from its weight shapes.

    pattern: matches each level's ResBlock `conv1.weight` key, capturing (level, block);
    first_conv: the key format of level i's first such weight. ValueError naming `source` when
    the basic keys are missing.
    """
    needed = {"encoder.conv_in.weight", "quantize.embedding.weight", "encoder.conv_out.weight"}
    missing = needed - set(sd)
    levels: dict[int, set[int]] = {}
    for key in sd:
        m = pattern.match(key)
        if m:
            levels.setdefault(int(m[1]), set()).add(int(m[2]))
    if missing or not levels:
        raise ValueError(
            f"{source}: not a {name} state dict; missing keys: "
            f"{_key_summary(missing or {first_conv.format(0)})}"
        )
    hidden = sd["encoder.conv_in.weight"].shape[0]
    mult = tuple(
        sd[first_conv.format(i)].shape[0] // hidden
        if first_conv.format(i) in sd
        else 0  # a gap in the levels: the key check of `_build_strict` reports it
        for i in range(max(levels) + 1)
    )
    return mult, len(levels[min(levels)])


def _maskgit_config_from_state_dict(
    sd: Mapping[str, Any], source: str, image_size: int
) -> MaskGITVQGANConfig:
    """Infer the architecture from weight shapes; ValueError naming `source` if impossible."""
    first = "encoder.down.{}.block.0.conv1.weight"
    mult, blocks = _encoder_layout(sd, _DOWN_KEY, first, source, "MaskGIT-VQGAN")
    hidden, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    return MaskGITVQGANConfig(
        hidden_channels=int(hidden),
        channel_mult=mult,
        num_res_blocks=blocks,
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]),
        codebook_size=int(sd["quantize.embedding.weight"].shape[0]),
        image_size=image_size,
        in_channels=int(in_channels),
    )


def _build_strict(
    cls: type[Tokenizer], cfg: Any, sd: Mapping[str, torch.Tensor], source: str
) -> Any:
    """`cls(cfg)` with `sd` loaded strictly, frozen. ValueError naming `source` and the missing,
    unexpected or mis-shaped keys when `sd` does not fit."""
    name = {"maskgit_vqgan": "MaskGIT-VQGAN", "llamagen_vq": "LlamaGen VQ"}.get(cls.kind, cls.kind)
    # Build on the meta device first: a malformed file is rejected without allocating 200 MB.
    with torch.device("meta"):
        expected = cls(cfg).state_dict()
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: not a {name} state dict ({cfg}); "
            f"missing keys: [{_key_summary(missing)}]; "
            f"unexpected keys: [{_key_summary(unexpected)}]"
        )
    bad = {k for k in expected if tuple(expected[k].shape) != tuple(sd[k].shape)}
    if bad:
        raise ValueError(f"{source}: {name} weights of the wrong shape: {_key_summary(bad)}")
    model = cls(cfg)
    model.load_state_dict(sd, strict=True)
    return model.freeze()


def maskgit_vqgan_from_state_dict(
    sd: Mapping[str, torch.Tensor], *, source: str = "<state dict>", image_size: int = 256
) -> MaskGITVQGAN:
    """Build a MaskGIT-VQGAN whose size is inferred from `sd`, load it strictly and freeze it.

    Raises ValueError naming `source` and the missing / unexpected / mis-shaped keys when `sd`
    is not a MaskGIT-VQGAN state dict. `image_size` only sets the `grid` / `image_size`
    attributes (the weights do not encode it; the release is 256).
    """
    cfg = _maskgit_config_from_state_dict(sd, source, image_size)
    return _build_strict(MaskGITVQGAN, cfg, sd, source)


def llamagen_vq_from_state_dict(
    sd: Mapping[str, torch.Tensor], *, source: str = "<state dict>", image_size: int = 256
) -> LlamaGenVQ:
    """Build a LlamaGen VQ whose size is inferred from `sd`, load it strictly and freeze it.

    The widths, levels, res blocks, z channels, codebook and the `quantize.codebook_used`
    buffer's length (0 when absent) are read from the weights; the codes are taken as
    l2-normalised (VQ-16's setting, which the weights do not record). `image_size` only sets
    `grid` / `image_size` (the release is 256). ValueError naming `source` when `sd` does not fit.
    """
    first = "encoder.conv_blocks.{}.res.0.conv1.weight"
    mult, blocks = _encoder_layout(sd, _LLAMAGEN_KEY, first, source, "LlamaGen VQ")
    ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
    codebook_size, dim = sd["quantize.embedding.weight"].shape
    usage = sd.get("quantize.codebook_used")
    cfg = LlamaGenVQConfig(
        ch=int(ch),
        ch_mult=mult,
        num_res_blocks=blocks,
        z_channels=int(sd["encoder.conv_out.weight"].shape[0]),
        codebook_size=int(codebook_size),
        codebook_embed_dim=int(dim),
        usage_window=0 if usage is None else int(usage.numel()),
        image_size=image_size,
        in_channels=int(in_channels),
    )
    return _build_strict(LlamaGenVQ, cfg, sd, source)


def _load_file(path: str | os.PathLike) -> Any:
    """The file's object via the safe loader, which also admits `argparse.Namespace`: LlamaGen's
    training script saves its options as one (`args`) next to the weights, and unpickling it
    only sets attributes (whose values must themselves be plain data)."""
    from rar.model.checkpoint import load_file  # CheckpointMissing is also a FileNotFoundError

    with torch.serialization.safe_globals([argparse.Namespace]):
        return load_file(path, what="a tokenizer file (a state dict)", expect=None)


def load_official_maskgit_vqgan(path: str | os.PathLike, *, image_size: int = 256) -> MaskGITVQGAN:
    """Load the release's `maskgit-vqgan-imagenet-f16-256.bin` (or any state dict in its layout).

    The architecture (width, levels, multipliers, res blocks, z channels, codebook) is read
    from the weight shapes, so smaller models in the same layout load too. Returns the model in
    eval mode with gradients off, on CPU. ValueError naming the file when it does not fit.
    """
    sd = _load_file(path)
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a MaskGIT-VQGAN state dict (not a mapping of tensors)")
    return maskgit_vqgan_from_state_dict(sd, source=str(path), image_size=image_size)


def _unwrap_model(obj: Any) -> Any:
    """The `model` entry of a `{"model": state dict, ...}` file (LlamaGen's release), else obj."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    return obj


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The state dict a tokenizer file holds (LlamaGen's `model` entry, or the file itself),
    read safely; ValueError naming the file when it holds no mapping of tensors."""
    sd = _unwrap_model(_load_file(path))
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict (no mapping of tensors)")
    return sd


def load_official_llamagen_vq(path: str | os.PathLike, *, image_size: int = 256) -> LlamaGenVQ:
    """Load LlamaGen's released `vq_ds16_c2i.pt` (`{"model": state dict, ...}`, the other
    entries ignored) or a bare state dict in its layout; sizes are read from the weight shapes
    as in `llamagen_vq_from_state_dict`. Returns the model in eval mode with gradients off, on
    CPU. ValueError naming the file when it does not fit.
    """
    sd = _unwrap_model(_load_file(path))
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a LlamaGen VQ file (no mapping of tensors)")
    return llamagen_vq_from_state_dict(sd, source=str(path), image_size=image_size)


# Kinds of our own tokenizer checkpoints: kind -> (module, model class, config class). Imported
# lazily by name, because rar.demo.vq imports this module.
TOKENIZER_KINDS: dict[str, tuple[str, str, str]] = {
    "maskgit_vqgan": ("rar.model.tokenizer", "MaskGITVQGAN", "MaskGITVQGANConfig"),
    "llamagen_vq": ("rar.model.tokenizer", "LlamaGenVQ", "LlamaGenVQConfig"),
    "vq_demo": ("rar.demo.vq", "VQDemo", "VQDemoConfig"),
}


def load_tokenizer(path: str | os.PathLike, *, grid: int | None = None) -> Tokenizer:
    """Load any tokenizer file: the official MaskGIT-VQGAN state dict, LlamaGen's VQ release
    (`{"model": state dict, ...}`, or its bare state dict), or our own format
    `{"kind": str, "config": dict, "model": state dict}` written by `save_tokenizer`; with
    `grid`, set to that many tokens a side (`Tokenizer.at_grid`: a study's `tokenizer.grid`).

    Returns a frozen (eval, no-grad) tokenizer on CPU. ValueError naming the file otherwise.
    """
    tok = _load_any(path)
    return tok if grid is None else tok.at_grid(grid)


def _load_any(path: str | os.PathLike) -> Tokenizer:
    obj = _load_file(path)
    if isinstance(obj, Mapping) and "kind" in obj:
        if obj["kind"] not in TOKENIZER_KINDS or not {"config", "model"} <= set(obj):
            raise ValueError(
                f"{path}: unknown tokenizer checkpoint kind {obj['kind']!r} or missing "
                f"'config'/'model' (known kinds: {sorted(TOKENIZER_KINDS)})"
            )
        module, cls_name, cfg_name = TOKENIZER_KINDS[obj["kind"]]
        mod = importlib.import_module(module)
        cls, cfg_cls = getattr(mod, cls_name), getattr(mod, cfg_name)
        try:
            tok = cls(cfg_cls(**obj["config"]))
            tok.load_state_dict(obj["model"], strict=True)
        except (TypeError, RuntimeError) as err:
            raise ValueError(f"{path}: {obj['kind']} checkpoint does not load: {err}") from err
        return tok.freeze()
    inner = _unwrap_model(obj)
    if isinstance(inner, Mapping) and "quant_conv.weight" in inner:
        return llamagen_vq_from_state_dict(inner, source=str(path))
    if isinstance(obj, Mapping) and "quantize.embedding.weight" in obj:
        return maskgit_vqgan_from_state_dict(obj, source=str(path))
    raise ValueError(
        f"{path}: not a tokenizer file (neither an official MaskGIT-VQGAN state dict, nor a "
        "LlamaGen VQ file, nor a {'kind', 'config', 'model'} tokenizer checkpoint)"
    )
