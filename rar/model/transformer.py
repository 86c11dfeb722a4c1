"""The RAR transformer: a class-conditional GPT over VQ tokens with target-aware positions.

RAR (Yu et al., "Randomized Autoregressive Visual Generation", ICCV 2025, arXiv 2411.00776)
trains a decoder-only transformer on image tokens whose order is permuted at random with
probability r. Each position carries two positional embeddings: that of the token it holds
(`pos_embed`) and that of the token it must predict next (`target_aware_pos_embed`, RAR §3.2),
so the model knows which token comes next under any permutation.

The architecture and parameter names follow the official release (bytedance/1d-tokenizer,
`modeling/rar.py` at 942a96f), so `rar.model.checkpoint.load_official_rar` loads
`rar_{b,l,xl,xxl}.bin` with `strict=True`. The facts that compatibility rests on:

- one embedding table of `codebook + 1 + classes + 1` rows: codes, an unused mask id, the
  classes at `codebook + 1 + label`, and the null class (classifier-free guidance) last;
- sequence `[cls_token, class token, image tokens in visiting order]`;
- the class embedding plus `timesteps_embeddings[j]` is the adaLN condition of position j;
- adaLN-zero blocks with per-head LayerNorm on q and k; the head's adaLN chunks (scale, shift),
  the blocks' chunks (shift, scale, gate) x 2.

Differences from the official module, none of which changes a number: the forward pass drops
the last image token (its output predicts nothing, and causal attention means no other position
sees it), returns only the N logits that predict tokens, and the KV cache is a static buffer
passed in by `rar.model.generate` instead of a growing `torch.cat` inside each attention layer.

Two architectures (`RARConfig.architecture`). "adaln" is the released model above, the one of
the paper's final results (Table 4). "plain" is the plain ViT of the ablations (Tables 2 and
3): RAR §4.1 says only that they use a plain ViT without adaLN, and no code for it was released.
Our choices, each the smallest change that removes adaLN and nothing else:

- same sizes, embedding table, sequence `[cls_token, class token, image tokens]`, positional
  and target-aware positional tables (spare rows included), QK-norm causal attention, MLP and
  dropout, so the two differ only in how the class conditions the blocks; the class then
  enters through its token in the sequence alone (as in LlamaGen's class-conditional GPT);
- standard pre-norm blocks, `x + attn(norm1(x))` then `x + mlp(norm2(x))`, with affine
  LayerNorms and no gates: exactly `Block` without `adaLN_modulation` (timm's ViT block), so
  every remaining parameter keeps its name;
- no `timesteps_embeddings`: that table only builds the adaLN condition;
- an affine LayerNorm before `lm_head` (`norm_before_head`, timm ViT's final `norm`), since no
  adaLN supplies the scale and shift the released head's non-affine norm relies on;
- the official initialisation without its adaLN-zero part (nothing left to zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rar.settings.presets import (
    ARCHITECTURES,
    POS_EMBED_SPARE,  # spare table rows, kept so that released state dicts load
    RAR_CONFIGS,
    TIMESTEP_SPARE,
)

PREFIX = 2  # [cls_token, class token] before the image tokens


# ##########################################################################################
# Configuration and named sizes
# ##########################################################################################


@dataclass(frozen=True)
class RARConfig:
    """Architecture of one RAR model. Defaults: RAR-L on ImageNet-256 with MaskGIT-VQGAN."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_size: int = 4096
    codebook_size: int = 1024  # MaskGIT-VQGAN f16 tokenizer
    num_classes: int = 1000  # ImageNet-1k
    num_tokens: int = 256  # 16 x 16 token grid (256 x 256 images, f16)
    dropout: float = 0.1  # RAR §4.1: dropout 0.1 on residual branches
    attn_dropout: float = 0.1  # and on attention probabilities
    architecture: str = "adaln"  # RAR §4.1: "adaln" (final models), "plain" ViT (ablations)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; known: {', '.join(ARCHITECTURES)}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if math.isqrt(self.num_tokens) ** 2 != self.num_tokens:
            raise ValueError(f"num_tokens {self.num_tokens} is not a square token grid")

    @property
    def grid(self) -> int:
        """Side of the square token grid (16 for 256 tokens)."""
        return math.isqrt(self.num_tokens)

    @property
    def null_class(self) -> int:
        """The label meaning "no class" (classifier-free guidance): `num_classes`."""
        return self.num_classes


def rar_config(name: str, **overrides) -> RARConfig:
    """The named size `name` ("rar_b", ..., "rar_tiny"), with any field overridden.

    Example: `rar_config("rar_tiny", codebook_size=256, num_classes=8, num_tokens=64)`.
    """
    if name not in RAR_CONFIGS:
        raise ValueError(f"unknown model size {name!r}; known: {', '.join(RAR_CONFIGS)}")
    return RARConfig(**{**RAR_CONFIGS[name], **overrides})


# ##########################################################################################
# Layers
# ##########################################################################################


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation (DiT): x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention with per-head LayerNorm on q and k (QK-norm)."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        input_pos: torch.Tensor | None = None,
        slots: int | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D). Without a cache: causal attention over x.

        With `kv_cache` = (k, v), each (B, H, L, head_dim), the new keys and values are written
        at sequence positions `input_pos` (T,) into the cache itself (in place, as a compiled
        step keeps it), and the queries attend over its first `slots` slots (None: all L)
        under `mask` (T, slots), additive or bool (True = may attend).
        """
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if kv_cache is not None:
            k_cache, v_cache = kv_cache
            k_cache.index_copy_(2, input_pos, k.to(k_cache.dtype))
            v_cache.index_copy_(2, input_pos, v.to(v_cache.dtype))
            k, v = k_cache[:, :, :slots], v_cache[:, :, :slots]
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, H, T, head_dim)
        x = x.transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> dropout -> fc2 -> dropout (timm's Mlp, whose key names we keep)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class PlainBlock(nn.Module):
    """Pre-norm transformer block without conditioning (the ablations' plain ViT): LayerNorm,
    attention, residual; LayerNorm, MLP, residual."""

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        D = config.hidden_size
        self.norm1 = nn.LayerNorm(D, eps=1e-6)
        self.attn = Attention(D, config.num_heads, config.attn_dropout, config.dropout)
        self.norm2 = nn.LayerNorm(D, eps=1e-6)
        self.mlp = Mlp(D, config.mlp_size, config.dropout)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None, **attn_kwargs
    ) -> torch.Tensor:
        """x: (B, T, D). `c` is ignored: the same call as `Block`, so rar.model.generate runs
        both."""
        x = x + self.attn(self.norm1(x), **attn_kwargs)
        x = x + self.mlp(self.norm2(x))
        return x


class Block(PlainBlock):
    """Pre-norm transformer block with adaLN-zero conditioning (DiT §3.2): `PlainBlock`'s
    layers (and parameter names) plus the modulation, registered last as in the release."""

    def __init__(self, config: RARConfig) -> None:
        super().__init__(config)
        D = config.hidden_size
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(D, 6 * D))

    def forward(self, x: torch.Tensor, c: torch.Tensor, **attn_kwargs) -> torch.Tensor:
        """x: (B, T, D) hidden states; c: (B, T, D) per-position condition."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, -1)
        x = x + gate_a * self.attn(modulate(self.norm1(x), shift_a, scale_a), **attn_kwargs)
        x = x + gate_m * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """Non-affine LayerNorm modulated by the condition; the official order is (scale, shift)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.adaLN_modulation(c).chunk(2, dim=-1)
        return modulate(self.norm_final(x), shift, scale)


# ##########################################################################################
# The model
# ##########################################################################################


class RAR(nn.Module):
    """Class-conditional autoregressive transformer over VQ tokens (RAR).

    `model(tokens, labels, orders)` returns logits `(B, N, codebook)`, where `logits[:, k]`
    predicts the token at raster position `orders[:, k]` from the class and the tokens at
    `orders[:, :k]`. Generation with a KV cache lives in `rar.model.generate`.
    """

    def __init__(self, config: RARConfig) -> None:
        super().__init__()
        self.config = config
        D, N = config.hidden_size, config.num_tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.embeddings = nn.Embedding(config.codebook_size + 1 + config.num_classes + 1, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, N + POS_EMBED_SPARE, D))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, N + POS_EMBED_SPARE, D))
        self.adaln = config.architecture == "adaln"
        if self.adaln:
            self.timesteps_embeddings = nn.Parameter(torch.zeros(1, N + TIMESTEP_SPARE, D))
            self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
            self.adaln_before_head = FinalLayer(D)
        else:
            self.blocks = nn.ModuleList(PlainBlock(config) for _ in range(config.num_layers))
            self.norm_before_head = nn.LayerNorm(D, eps=1e-6)
        self.lm_head = nn.Linear(D, config.codebook_size)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: truncated normal (std 0.02) for weights, embeddings and
        positional tables, zero biases, unit LayerNorms, and adaLN-zero (every modulation
        output starts at 0, so each block starts as the identity; DiT §3.2). `cls_token` stays
        zero, as in the official code. The plain ViT gets the same minus the adaLN part."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for table in (self.pos_embed, self.target_aware_pos_embed):
            nn.init.trunc_normal_(table, std=0.02)
        if not self.adaln:
            return
        nn.init.trunc_normal_(self.timesteps_embeddings, std=0.02)
        for mod in [b.adaLN_modulation for b in self.blocks] + [
            self.adaln_before_head.adaLN_modulation
        ]:
            nn.init.zeros_(mod[-1].weight)
            nn.init.zeros_(mod[-1].bias)

    # -- pieces shared by the full forward pass and the KV-cache decode steps ----------------

    def class_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Embedding rows of class labels (B,) in [0, C]; C (the null class) maps to the last
        row, which is exactly `codebook + 1 + C`."""
        return labels + self.config.codebook_size + 1

    def condition(self, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """adaLN condition of sequence positions `positions` (T,): the class embedding plus a
        per-position "timestep" embedding. labels: (B,) -> (B, T, D); None for the plain ViT,
        whose blocks and head take no condition."""
        if not self.adaln:
            return None
        cls_emb = self.embeddings(self.class_ids(labels))  # (B, D)
        return cls_emb[:, None, :] + self.timesteps_embeddings[0, positions][None]

    def prefix(self, labels: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Inputs of sequence positions 0 and 1: the cls token and the class token, the latter
        told (target-aware) that raster position `first` (B,) comes next. -> (B, 2, D)."""
        B = labels.shape[0]
        cls = self.cls_token.expand(B, 1, -1) + self.pos_embed[:, 0:1]
        cond = self.embeddings(self.class_ids(labels)) + self.pos_embed[0, 1]
        cond = cond + self.target_aware_pos_embed[0, PREFIX + first]
        return torch.cat([cls, cond[:, None]], dim=1)

    def token_inputs(
        self, tokens: torch.Tensor, at: torch.Tensor, target: torch.Tensor | None
    ) -> torch.Tensor:
        """Inputs of image tokens: `tokens` (B, T) that sit at raster positions `at` (B, T),
        each told that raster position `target` (B, T) comes next (None: nothing comes next,
        only the last token of a sequence). -> (B, T, D)."""
        x = self.embeddings(tokens) + self.pos_embed[0, PREFIX + at]
        if target is not None:
            x = x + self.target_aware_pos_embed[0, PREFIX + target]
        return x

    def head(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """Final norm (adaLN under condition `c` (B, T, D), or the plain ViT's affine LayerNorm,
        which ignores `c`) and projection to codebook logits: (B, T, D) -> (B, T, codebook)."""
        if not self.adaln:
            return self.lm_head(self.norm_before_head(x))
        return self.lm_head(self.adaln_before_head(x, c))

    # -- training / scoring --------------------------------------------------------------

    def forward(
        self, tokens: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced logits.

        tokens: (B, N) int64 codes in raster order.
        labels: (B,) int64 class ids in [0, C]; C = the null class.
        orders: (B, N) int64 permutations of range(N), or None for raster order; entry k is
            the raster position of the k-th token visited.
        Returns (B, N, codebook) float logits; `[:, k]` predicts `tokens[b, orders[b, k]]`.
        """
        B, N = tokens.shape
        if orders is None:
            orders = torch.arange(N, device=tokens.device).expand(B, N)
        visited = tokens.gather(1, orders)  # (B, N) tokens in visiting order
        # Sequence: [cls, class, x_{o_0}, ..., x_{o_{N-2}}], N + 1 long. The last token is
        # dropped: its output would predict nothing.
        x = torch.cat(
            [
                self.prefix(labels, orders[:, 0]),
                self.token_inputs(visited[:, :-1], orders[:, :-1], orders[:, 1:]),
            ],
            dim=1,
        )  # (B, N + 1, D)
        c = self.condition(labels, torch.arange(N + 1, device=tokens.device))  # (B, N + 1, D)
        for block in self.blocks:
            x = block(x, c)
        # Outputs at positions 1..N predict o_0..o_{N-1}.
        return self.head(x[:, 1:], None if c is None else c[:, 1:])


# ##########################################################################################
# Loading the official release
# ##########################################################################################


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> RARConfig:
    """Infer the architecture of an official-layout state dict from its shapes: "adaln" when
    it has adaLN modulation weights (the release), "plain" (the ablations' ViT) otherwise."""
    required = ["cls_token", "embeddings.weight", "pos_embed", "lm_head.weight"]
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise ValueError(f"not a RAR state dict: missing {', '.join(missing)}")
    hidden = state_dict["cls_token"].shape[-1]
    num_layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    head_dim = state_dict["blocks.0.attn.q_norm.weight"].shape[0]
    codebook = state_dict["lm_head.weight"].shape[0]
    adaln = any("adaLN_modulation" in k for k in state_dict)  # the plain ViT has none
    return RARConfig(
        hidden_size=hidden,
        num_layers=num_layers,
        num_heads=hidden // head_dim,
        mlp_size=state_dict["blocks.0.mlp.fc1.weight"].shape[0],
        codebook_size=codebook,
        num_classes=state_dict["embeddings.weight"].shape[0] - codebook - 2,
        num_tokens=state_dict["pos_embed"].shape[1] - POS_EMBED_SPARE,
        architecture="adaln" if adaln else "plain",
    )


def rar_from_state_dict(
    state_dict: dict[str, torch.Tensor], config: RARConfig | None = None, *, source: str = ""
) -> RAR:
    """A RAR holding `state_dict`'s tensors (strict: every key, no more), in eval mode. The
    architecture is `config`, or inferred from the shapes. Built on the meta device and
    filled with `assign=True`, so a 6 GB checkpoint is never allocated twice."""
    if config is None:
        try:
            config = config_from_state_dict(state_dict)
        except (ValueError, KeyError) as err:
            raise ValueError(f"{source}: {err}" if source else str(err)) from err
    with torch.device("meta"):
        model = RAR(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
