"""``ddpmkit eval RUN --nll``: the variational bound on −log p(x) in bits per dimension on held-out images.

The papers' likelihood tables (Ho et al. 2020, Nichol & Dhariwal 2021) report this bound on the test set:

    bits/dim ≤ (L_T + Σ_{t=0}^{T-1} L_t) / (D log 2),   L_t as in :meth:`ddpmkit.diffusion.Diffusion.vlb_terms`,

one fresh x_t per image and term. We report the mean over N images with its standard error (the spread over
images, σ/√N), the number of terms, and the mean of each term (which noise levels cost the bits). The data are
the 8-bit images of the run's data set scaled exactly onto the 256-level grid in [−1, 1] that the discretized
decoder assumes; every data set ddpmkit loads is 8-bit. ``steps`` < T evaluates the bound of the respaced
(shorter) process: cheaper, and looser.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DdpmkitError


@dataclass
class NllResult:
    bits_per_dim: float
    standard_error: float
    num: int
    num_terms: int
    data: str
    split: str
    prior_bits_per_dim: float
    seconds: float
    term_bits_per_dim: list[float] = field(repr=False)  # mean L_i per term i (index of the evaluated process)
    term_timesteps: list[int] = field(repr=False)       # the training timestep of each term

    @property
    def markdown(self) -> str:
        return ("| data | N | terms | bits/dim | ± s.e. | prior L_T | seconds |\n|---|---|---|---|---|---|---|\n"
                f"| {self.data}:{self.split} | {self.num} | {self.num_terms} | {self.bits_per_dim:.4f} | "
                f"{self.standard_error:.4f} | {self.prior_bits_per_dim:.2e} | {self.seconds:.0f} |")


def evaluate_nll(run: str | Path, num: int = 100, steps: int | None = None, split: str = "test",
                 batch_size: int = 100, seed: int = 0, device: str = "auto", out: str | Path | None = None,
                 progress: bool = True) -> tuple[NllResult, dict[str, Path]]:
    """The bound of ``run``'s EMA model on the first ``num`` images of ``split`` (train when there is no such
    split); writes nll.json and nll_terms.png into ``out`` (default the run's eval/). A class-conditional run is
    scored as p(x | y) with the images' own labels."""
    from tqdm.auto import tqdm

    from ..atomic import atomic_write_text, check_writable
    from ..data import SPLITS, available_splits, load_dataset
    from ..data.image_array import to_model_range
    from ..pipeline import Pipeline
    from ..run import RunFolder, nll_files
    from ..sampling import timestep_spacing

    if num < 2 or batch_size < 1:
        raise DdpmkitError(f"--num must be at least 2 (a standard error needs two images) and --batch-size at "
                           f"least 1, got {num} and {batch_size}")
    if split not in SPLITS:
        raise DdpmkitError(f"unknown split {split!r}; use {' or '.join(SPLITS)}")
    folder, checkpoint = RunFolder.locate(run)
    data_name = folder.info(checkpoint).trained_on
    report_dir = check_writable(Path(out) if out is not None else folder.eval_dir, "dir", "--out")
    pipe = Pipeline.from_run(checkpoint, device=device, precision="fp32")  # a likelihood in full precision
    T = pipe.diffusion.num_steps
    if steps is not None and not 2 <= steps <= T:
        raise DdpmkitError(f"--nll-steps must be between 2 and {T} (the model's T), got {steps}")
    if split not in available_splits(data_name):
        split = "train"
    data = load_dataset(data_name, split, image_size=pipe.model.config.image_size, progress=progress)
    if len(data) < num:
        raise DdpmkitError(f"{data_name}:{split} has {len(data)} images, fewer than --num {num}")
    diffusion = pipe.diffusion if steps is None else pipe.diffusion.respace(timestep_spacing(T, steps, "linspace"))
    K = diffusion.num_steps
    conditional = pipe.num_classes is not None and data.labels is not None
    generator = torch.Generator().manual_seed(seed)
    totals, priors, term_sums = [], [], torch.zeros(K, dtype=torch.float64)
    start = time.perf_counter()
    bar = tqdm(total=num * K, desc=f"bound over {K} terms", unit="img·term", disable=not progress)
    for first in range(0, num, batch_size):
        rows = slice(first, min(first + batch_size, num))
        x0 = to_model_range(data.images[rows]).to(pipe.device)  # the 8-bit grid in [-1, 1], as in training
        kwargs = {k: v.to(pipe.device) for k, v in data.label_kwargs(rows).items()} if conditional else {}
        count = len(x0)
        total, terms, prior = diffusion.bits_per_dim(lambda x, t, kw=kwargs: pipe.model(x, t, **kw), x0, generator,
                                                     callback=lambda _i, n=count: bar.update(n))
        totals.append(total.cpu())
        priors.append(prior.cpu())
        term_sums += terms.sum(dim=0).cpu()
    bar.close()
    total = torch.cat(totals)
    result = NllResult(
        bits_per_dim=float(total.mean()), standard_error=float(total.std() / math.sqrt(num)), num=num,
        num_terms=K + 1, data=data_name, split=split, prior_bits_per_dim=float(torch.cat(priors).mean()),
        seconds=time.perf_counter() - start, term_bits_per_dim=(term_sums / num).tolist(),
        term_timesteps=diffusion.timesteps.tolist())
    paths = nll_files(report_dir)
    atomic_write_text(paths["json"], json.dumps({**asdict(result), "checkpoint": str(checkpoint)}, indent=1))
    _plot_terms(result, paths["plot"])
    return result, paths


def _plot_terms(result: NllResult, path: Path) -> None:
    from matplotlib.figure import Figure

    from ..atomic import atomic_file

    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(result.term_timesteps, np.maximum(result.term_bits_per_dim, 1e-12), marker="." if result.num_terms < 60
            else None)
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("L_t (bits/dim)")
    ax.set_title(f"{result.data}:{result.split}: {result.bits_per_dim:.3f} ± {result.standard_error:.3f} bits/dim "
                 f"(N = {result.num}, {result.num_terms} terms)", fontsize=9)
    ax.grid(alpha=0.3)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
