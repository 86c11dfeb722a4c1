"""Named model sizes, architectures and the paper's sampling settings. Torch-free (the workflow
reads them while parsing the Snakefile); `rar.model.transformer` and `rar.model.generate` build on
these tables."""

from __future__ import annotations

from dataclasses import dataclass

# RAR Table 1 / the official release. Trailing comments: parameters at codebook 1024, 1000
# classes and 256 tokens, with adaLN (as released; the exact counts are in docs/reproducing.md and
# tests/test_model.py) | as the plain ViT of the ablations (`architecture="plain"`, RAR §4.1).
# The tiny sizes train on a CPU (demo and tests).
RAR_CONFIGS: dict[str, dict] = {
    "rar_b": dict(hidden_size=768, num_layers=24, num_heads=16, mlp_size=3072),  # 260.9M | 174.4M
    "rar_l": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_size=4096),  # 461.7M | 308.1M
    "rar_xl": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_size=5120),  # 955.4M | 636.9M
    "rar_xxl": dict(hidden_size=1408, num_layers=40, num_heads=16, mlp_size=6144),  # 1.50B | 1.02B
    "rar_tiny": dict(hidden_size=64, num_layers=2, num_heads=4, mlp_size=256),  # 0.54M | 0.46M
    "rar_mini": dict(hidden_size=128, num_layers=4, num_heads=4, mlp_size=512),  # 1.99M | 1.51M
}


# The official positional tables are longer than the sequence: 1024 spare positional rows and
# 100 spare timestep rows. They are dead weight, kept so the released state dicts load with
# strict=True (rar.model.transformer builds them).
POS_EMBED_SPARE = 1024
TIMESTEP_SPARE = 100


@dataclass(frozen=True)
class GeneratorShape:
    """What a generator's size arithmetic needs: a named size of `RAR_CONFIGS`, the
    architecture and the token space (`TrainConfig.shape` gives a run's). Counted without
    building the model; tests/test_model.py holds every figure to the built model's."""

    model: str
    architecture: str = "adaln"
    codebook_size: int = 1024
    num_classes: int = 1000
    num_tokens: int = 256

    @property
    def tables(self) -> int:
        """Parameters in lookup tables, not matrix products: the embedding table (codes, a
        mask id, the classes and the null class), the two positional tables and, with adaLN,
        the timesteps."""
        D, N = RAR_CONFIGS[self.model]["hidden_size"], self.num_tokens
        rows = self.codebook_size + 1 + self.num_classes + 1 + 2 * (N + POS_EMBED_SPARE)
        if self.architecture == "adaln":
            rows += N + TIMESTEP_SPARE
        return rows * D

    @property
    def parameters(self) -> int:
        """Every parameter of `rar.model.transformer.RAR`: per block the norms, qkv and its
        QK-norms, the projection, the MLP and with adaLN its modulation (D -> 6 D); the
        tables, the cls token, the final norm (or adaLN's modulation, D -> 2 D), the head."""
        c = RAR_CONFIGS[self.model]
        D, M = c["hidden_size"], c["mlp_size"]
        linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731 (weight and bias)
        adaln = self.architecture == "adaln"
        block = 2 * D + linear(D, 3 * D) + 2 * 2 * (D // c["num_heads"]) + linear(D, D)
        block += 2 * D + linear(D, M) + linear(M, D) + adaln * linear(D, 6 * D)
        final = linear(D, 2 * D) if adaln else 2 * D
        return c["num_layers"] * block + self.tables + D + final + linear(D, self.codebook_size)

    @property
    def train_flops_per_token(self) -> float:
        """Training FLOPs per token as MFU counts them (PaLM, appendix B): 6 x the parameters
        outside the tables plus 12 x layers x width x sequence length (the class token and
        the image tokens) for attention. `rar bench-train`'s MFU; `forward_flops` counts the
        matrix products instead, for `rar plan`'s ratios."""
        c = RAR_CONFIGS[self.model]
        attention = 12 * c["num_layers"] * c["hidden_size"] * (self.num_tokens + 1)
        return float(6 * (self.parameters - self.tables) + attention)

    @property
    def forward_flops(self) -> float:
        """Forward FLOPs of one image in the matrix products (2 a multiply-add): per token and
        layer the projections and MLP, 2 (4 D^2 + 2 D M), attention's scores and values,
        4 N D, and with adaLN the modulation, 2 x 6 D^2 (its condition differs per position);
        per token the head, 2 D V, after adaLN's final modulation, 2 x 2 D^2. Training costs
        three times as much (`train_flops_per_token` within 0.2% at the paper's sizes); the
        ratio at two token counts or codebooks scales a throughput measured at one (`rar
        plan`)."""
        c = RAR_CONFIGS[self.model]
        D, M, N = c["hidden_size"], c["mlp_size"], self.num_tokens
        adaln = self.architecture == "adaln"
        per_layer = 2 * (4 * D * D + 2 * D * M) + 4 * N * D + adaln * 2 * 6 * D * D
        per_token = c["num_layers"] * per_layer + 2 * D * self.codebook_size
        return float(N * (per_token + adaln * 2 * 2 * D * D))


def kv_cache_bytes(
    model: str, num_tokens: int, *, value_bytes: int = 2, guided: bool = True
) -> int:
    """The sampling KV cache of one image (`rar.model.generate.DecodeEngine`): keys and values
    of every layer over the class token and `num_tokens` tokens, `value_bytes` a value (2:
    bf16, 4: fp32); twice with guidance (a conditional and an unconditional row)."""
    c = RAR_CONFIGS[model]
    rows = 2 if guided else 1
    return rows * c["num_layers"] * 2 * (num_tokens + 1) * c["hidden_size"] * value_bytes


# The share of a GPU's memory the sampling plan keeps free of KV caches, weights and decoding:
# the CUDA context, a step's activations and logits, the allocator's fragmentation.
SAMPLING_MEMORY_MARGIN = 0.10

# The tokenizer decodes a chunk in slices of at most this many pixels (8 images at 512 px, 32
# at 256 px, a whole demo chunk; `decode_slice`), so that its activations do not grow with the
# chunk; the sampling plan reserves DECODE_BYTES_PER_PIXEL for each. MaskGIT-VQGAN's decoder in
# fp32 peaked at 0.87 GiB for one 512 px image and 1.55 GiB for two (resident memory on the
# CPU; not yet measured on a GPU): 4 KiB a pixel, rounded up.
DECODE_PIXELS = 8 * 512 * 512
DECODE_BYTES_PER_PIXEL = 4096
DECODE_BYTES = DECODE_PIXELS * DECODE_BYTES_PER_PIXEL  # a decoding slice's activations


def decode_slice(image_pixels: int) -> int:
    """Images the tokenizer decodes at once when each has `image_pixels` pixels."""
    return max(1, DECODE_PIXELS // image_pixels)


def chunk_memory_bytes(
    model: str, num_tokens: int, chunk_size: int, *, weight_bytes: int, value_bytes: int = 4
) -> int:
    """What sampling a chunk of `chunk_size` images holds on its GPU (one batch,
    `rar.sampling.sampler`): the weights, a KV cache an image (`kv_cache_bytes`, guided) and
    a decoding slice's activations (DECODE_BYTES)."""
    per_image = kv_cache_bytes(model, num_tokens, value_bytes=value_bytes)
    return weight_bytes + chunk_size * per_image + DECODE_BYTES


def largest_chunk(
    model: str,
    num_tokens: int,
    device_bytes: int,
    *,
    weight_bytes: int,
    value_bytes: int = 4,
    margin: float = SAMPLING_MEMORY_MARGIN,
) -> int:
    """The most images a sampling chunk of `model` may hold on a GPU of `device_bytes`: its
    KV caches, the weights and a decoding slice within all but `margin` of the memory (0: none
    fits)."""
    usable = int(device_bytes * (1 - margin)) - chunk_memory_bytes(
        model, num_tokens, 0, weight_bytes=weight_bytes, value_bytes=value_bytes
    )
    return max(0, usable // kv_cache_bytes(model, num_tokens, value_bytes=value_bytes))


# The paper's sampling settings per model size (official README_RAR.md and configs):
# temperature, classifier-free guidance scale and the pow-cosine schedule's exponent. The
# values only: rar.settings.stages.SAMPLING_PRESETS makes them whole SamplingConfigs, and
# rar.settings.stages.sampling_values is the one resolution of a preset.
SAMPLING_PRESET_VALUES: dict[str, dict] = {
    "rar_b": dict(guidance_scale=16.0, guidance_power=2.75, temperature=1.0),
    "rar_l": dict(guidance_scale=15.5, guidance_power=2.5, temperature=1.02),
    "rar_xl": dict(guidance_scale=6.9, guidance_power=1.5, temperature=1.02),
    "rar_xxl": dict(guidance_scale=8.0, guidance_power=1.2, temperature=1.02),
}

# Generator architectures (rar.model.transformer.RARConfig.architecture). RAR §4.1: the ablations
# (Tables 2 and 3) use a plain ViT, the final models (Table 4) add adaLN conditioning.
ARCHITECTURES: tuple[str, ...] = ("adaln", "plain")

# Classifier-free guidance schedules (rar.model.generate.guidance_scale_at): "pow-cosine" (MDT, Gao
# et al. 2023), RAR's final models; "linear" (MUSE, Chang et al. 2023), RAR's ablations;
# "constant" for reference. The SAMPLING_PRESET_VALUES above are all pow-cosine.
GUIDANCE_SCHEDULES: tuple[str, ...] = ("constant", "linear", "pow-cosine")

# The six scan orders of RAR Table 3, as drawn in the paper's supplementary Fig. 6
# (rar.model.orders builds them).
SCAN_ORDERS: tuple[str, ...] = (
    "row-major",
    "spiral-in",
    "spiral-out",
    "z-curve",
    "subsample",
    "alternate",
)

# Images per sampling chunk. With the seed it decides which images are drawn (one generator per
# chunk), so it is part of a sample set's identity: the one default of
# rar.sampling.sampler.sample(), `rar sample`, `rar sweep-guidance` and the study schema's
# `sampling.chunk_size`.
DEFAULT_CHUNK_SIZE = 250


# The feature extractors of the metrics (rar.evaluation.extractors loads them): which torch-fidelity
# layers each reads, and how its metrics are named, so that a demo number can never pass
# for the paper's Inception one.
INCEPTION = "inception-v3-compat"  # the paper's (torch-fidelity, as ADM)
EFFICIENTNET_LITE0 = "efficientnet-lite0"


# The crop modes of the data stage, declared here only (rar.data.images: what each does and
# how many crops of an image it stores); the study schema's `crop` enum is held equal to this
# by tests/test_formats.py.
CROP_MODES = ("center", "center+flip", "tencrop")

# Our metric column -> its metrics.json key, `{s}` the extractor's suffix (`ExtractorSpec`),
# declared here only (rar.evaluation.scorer writes the keys, rar.report.columns reads them) ...
METRIC_KEYS = {
    "fid": "fid{s}",
    "is": "isc{s}_mean",
    "is_std": "isc{s}_std",
    "precision": "precision{s}",
    "recall": "recall{s}",
}
# ... and the name torch-fidelity (and rar.evaluation.metrics) gives each result.
TORCH_FIDELITY_NAMES = {
    "fid": "frechet_inception_distance",
    "is": "inception_score_mean",
    "is_std": "inception_score_std",
    "precision": "precision",
    "recall": "recall",
}


@dataclass(frozen=True)
class ExtractorSpec:
    """The torch-fidelity feature layers one extractor uses, and how its metrics are named."""

    fid_layer: str  # also precision/recall
    isc_layer: str
    suffix: str  # appended to metric names: "" for Inception, "_efficientnet_lite0" otherwise
    input_size: int | None = None  # side images are resized to; None: the extractor's own

    def features_id(self, weights_sha256: str) -> str:
        """What the features depend on besides the images, for cache keys: the weights and,
        where this project chose it, the input size."""
        return weights_sha256 + (f"-{self.input_size}px" if self.input_size else "")

    def metric_names(self) -> dict[str, str]:
        """Result keys (torch-fidelity's names; rar.evaluation.metrics returns IS and
        precision/recall under the same) -> ours."""
        return {
            TORCH_FIDELITY_NAMES[c]: key.format(s=self.suffix) for c, key in METRIC_KEYS.items()
        }


EXTRACTORS: dict[str, ExtractorSpec] = {
    # ADM / torch-fidelity: pool_3 (2048) for FID and precision/recall, logits without the
    # bias for IS (as the original TF Inception Score code reads them).
    INCEPTION: ExtractorSpec(fid_layer="2048", isc_layer="logits_unbiased", suffix=""),
    # The offline demo's (rar.demo.extractor): global average pool (1280) and the 1000 ImageNet
    # logits, of the 32 px images upsampled to 96 px, not the 224 px the network was trained
    # at: 12x less work per image (11 vs 134 ms on one CPU thread), the class probe still
    # 100% right on held-out images, and the demo's FID floor and ceiling still far apart.
    EFFICIENTNET_LITE0: ExtractorSpec(
        fid_layer="1280", isc_layer="logits", suffix="_efficientnet_lite0", input_size=96
    ),
}
