"""A linear probe: does a sample look like the class it was conditioned on?

`class_accuracy` in metrics.json: a multinomial logistic regression (a linear softmax over the
extractor's features, L2-regularised) is fitted to the features of the real training images
of a class-folder data set (the demo's `images/train/<class>/*.png`), then applied to the
samples' features; the score is the fraction of samples it assigns to the class they were
generated for. Chance is 1 / number of classes. Scoring the real held-out images the same
way calibrates it: a probe that cannot classify real images cannot judge samples.

The fit: features standardised with the training set's mean and standard deviation, weights
and biases found by L-BFGS (full batch, float64, strong-Wolfe line search) on the mean
cross-entropy plus `l2 / 2 * |W|^2`, from zeros: convex, so the optimum is unique and the
result does not depend on an initialisation or a seed. No scikit-learn: numpy and torch only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PROBE_FORMAT = "rar-probe/1"
DEFAULT_L2 = 1e-2  # on standardised features: mild, the classes are few and well separated
DEFAULT_MAX_ITER = 300


@dataclass(frozen=True)
class Probe:
    """A fitted probe: logits = ((x - mean) / scale) @ weight.T + bias."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    classes: tuple[str, ...]  # class i's name (the sorted folder names: ImageFolder's ids)
    train_accuracy: float
    num_train: int
    l2: float

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """The most likely class id of each row of `features` (N, D)."""
        return self.logits(features).argmax(axis=1)

    def accuracy(self, features: np.ndarray | torch.Tensor, labels: np.ndarray) -> float:
        """The fraction of rows whose predicted class is their label."""
        labels = np.asarray(labels)
        if len(labels) != len(features):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        if len(labels) == 0:
            raise ValueError("no rows to classify")
        return float((self.predict(features) == labels).mean())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """For an npz cache (`from_arrays` reads it back)."""
        return {
            "format": np.array(PROBE_FORMAT),
            "weight": self.weight,
            "bias": self.bias,
            "mean": self.mean,
            "scale": self.scale,
            "classes": np.array(self.classes),
            "train_accuracy": np.array(self.train_accuracy),
            "num_train": np.array(self.num_train),
            "l2": np.array(self.l2),
        }

    @classmethod
    def from_arrays(cls, z) -> Probe:
        if str(z["format"]) != PROBE_FORMAT:
            raise ValueError(f"not a probe ({PROBE_FORMAT}): {z['format']}")
        return cls(
            weight=np.asarray(z["weight"]),
            bias=np.asarray(z["bias"]),
            mean=np.asarray(z["mean"]),
            scale=np.asarray(z["scale"]),
            classes=tuple(str(c) for c in z["classes"]),
            train_accuracy=float(z["train_accuracy"]),
            num_train=int(z["num_train"]),
            l2=float(z["l2"]),
        )


def fit_probe(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    classes: list[str] | tuple[str, ...],
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
) -> Probe:
    """Fit the linear softmax probe to `features` (M, D) with `labels` (M,) in 0..C-1, where
    C = len(classes); see the module docstring for the method."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"features (M, D) and labels (M,) expected: {tuple(x.shape)}, {len(y)}")
    num_classes = len(classes)
    if len(y) == 0 or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    mean = x.mean(0)
    scale = x.std(0).clamp_min(1e-6)  # a constant feature carries no information
    z = (x - mean) / scale
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((z @ weight.T + bias).argmax(1) == y).double().mean())
    return Probe(
        weight=weight.detach().numpy(),
        bias=bias.detach().numpy(),
        mean=mean.numpy(),
        scale=scale.numpy(),
        classes=tuple(classes),
        train_accuracy=train_acc,
        num_train=len(y),
        l2=l2,
    )
