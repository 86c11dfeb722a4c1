"""The paper's training recipe: the model of a run config, AdamW with the official weight-decay
filter, the learning-rate schedule, and the loss (rar.training.loop runs it one optimizer step at a
time)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rar.model.orders import shuffle
from rar.model.transformer import RAR, rar_config
from rar.runtime import autocast
from rar.settings.training import TrainConfig


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """The official name filter (bytedance/1d-tokenizer `utils/train_utils.create_optimizer`):
    no decay on vectors and on any name containing "ln", "bias", "embed", "norm" or "gamma".
    Note what it catches as written: `adaln_before_head.*` ("adaln" contains "ln") is exempt,
    while the blocks' `adaLN_modulation` weights (upper case) and `cls_token` are decayed. We
    follow it as written, so our runs train the model the paper trained."""
    return param.ndim < 2 or any(s in name for s in ("ln", "bias", "embed", "norm", "gamma"))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": cfg.weight_decay},
        ],
        lr=cfg.lr,
        betas=cfg.betas,
        # One fused kernel per step (torch has it for CPUs and GPUs): on a CPU, rar_tiny's
        # AdamW step takes about a quarter of the default per-tensor loop's time.
        fused=bool(decay) and decay[0].device.type in ("cpu", "cuda"),
    )


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup from 0 over `warmup_epochs`, then cosine decay to `min_lr` at the end
    (the official `get_cosine_schedule_with_warmup` with an end learning rate)."""
    warmup, total = cfg.step_at(cfg.warmup_epochs), cfg.total_steps
    if step < warmup:
        return cfg.lr * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def loss_and_accuracy(
    model: nn.Module,
    tokens: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    *,
    amp: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy over all N targets of a batch, and token accuracy (detached).

    tokens: (B, N) raster codes; labels: (B,) after label dropout; orders: (B, N).
    """
    with autocast(tokens.device, amp):
        logits = model(tokens, labels, orders)  # (B, N, codebook)
    targets = shuffle(tokens, orders)  # logits[:, k] predicts the k-th token visited
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    accuracy = (logits.argmax(-1) == targets).float().mean().detach()
    return loss, accuracy


def model_from_config(cfg: TrainConfig) -> RAR:
    return RAR(
        rar_config(
            cfg.model,
            architecture=cfg.architecture,
            codebook_size=cfg.codebook_size,
            num_classes=cfg.num_classes,
            num_tokens=cfg.num_tokens,
            dropout=cfg.dropout,
            attn_dropout=cfg.attn_dropout,
        )
    )
