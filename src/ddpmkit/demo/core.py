"""What the demo computes, without Gradio: checked requests, sampling with previews and cancellation, a look
inside the forward process, and the schedule plots. The app (``app.py``) only lays these out.

Everything here is plain Python over a :class:`~ddpmkit.pipeline.Pipeline`, so it is tested directly.
"""

from __future__ import annotations

import math
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.image_array import to_model_range
from ..errors import DdpmkitError
from ..pipeline import Pipeline
from ..request import SampleRequest
from ..sampling import SAMPLERS, SamplerStep
from ..schedule import NoiseSchedule
from ..viz import grid_image, save_gif, to_uint8

MAX_IMAGES = 64  # a grid a browser shows at once; more is `ddpmkit sample`'s job
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
ALL_CLASSES = "one of each class"  # the label choice that cycles through the classes
FAST_SAMPLER = "unipc"  # the demo's default: DDIM-50's quality within 5% in 10 model evaluations (README)


class Cancelled(Exception):
    """Raised inside the sampler loop when the user cancelled the request."""


@dataclass
class Preview:
    """The picture while sampling: the model's current x̂_0 for every image, after step ``i + 1`` of ``num_steps``."""

    step: int
    num_steps: int
    grid: Image.Image


@dataclass
class GenerateResult:
    """A finished request: the grid, the denoising frames (x_t after each step, then the result), an animated
    GIF of them, the wall time and the number of model evaluations (a guided step is one batched evaluation)."""

    grid: Image.Image
    frames: list[Image.Image]
    gif: Path
    seconds: float
    nfe: int
    request: SampleRequest = field(repr=False)

    @property
    def summary(self) -> str:
        r = self.request
        guided = f", guidance {r.guidance:g}" if r.guidance not in (None, 1.0) else ""
        return (f"{r.num} images in {self.seconds:.2f} s · {self.nfe} model evaluations · {r.sampler}, "
                f"{r.steps} steps{guided}, seed {r.seed}")


@dataclass
class Explanation:
    """The Learn tab at one (image, t): x_0, ε, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, and the model's x̂_0 and ε̂."""

    x0: Image.Image
    noise: Image.Image
    x_t: Image.Image
    x0_hat: Image.Image
    eps_hat: Image.Image
    text: str
    tensors: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # the same, as (1, C, H, W) floats


def _number(value: object, what: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DdpmkitError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DdpmkitError(f"{what} must be a finite number, got {value!r}")
    return number


def _integer(value: object, what: str, low: int, high: int) -> int:
    number = _number(value, what)
    if number != int(number) or not low <= number <= high:
        raise DdpmkitError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


class DemoModel:
    """A loaded run and what the demo does with it. One request samples at a time (``lock``): the app's queue
    makes concurrent users wait their turn rather than share the model."""

    def __init__(self, pipe: Pipeline, data_spec: str | None = None):
        self.pipe = pipe
        self.data_spec = data_spec if data_spec is not None else pipe.info.data_name
        self.lock = threading.Lock()
        self._data = None
        self._tmp = Path(tempfile.mkdtemp(prefix="ddpmkit-demo-"))

    @classmethod
    def from_run(cls, path: str | Path, device: str = "auto", precision: str = "auto") -> DemoModel:
        return cls(Pipeline.from_run(path, device=device, precision=precision))

    # ----- what the run offers -------------------------------------------------------------------------------

    @property
    def num_steps(self) -> int:
        return self.pipe.diffusion.num_steps

    @property
    def class_names(self) -> list[str]:
        """Names of the classes of a class-conditional run (numbers where the data set names none); else []."""
        k = self.pipe.num_classes
        if k is None:
            return []
        names = list(self.pipe.class_names)
        return names if len(names) == k else [str(i) for i in range(k)]

    @property
    def title(self) -> str:
        c, size, _ = self.pipe.image_shape
        kind = f"class-conditional ({len(self.class_names)} classes)" if self.class_names else "unconditional"
        step = f", step {self.pipe.step}" if self.pipe.step is not None else ""
        return (f"{self.data_spec or 'a run'} · {size}×{size}×{c} · {kind} · T = {self.num_steps}{step} · "
                f"{self.pipe.device.type}")

    def default_steps(self, sampler: str) -> int:
        """The slider's start: the run's step count for its own sampler (DDPM-50 for mnist), else the sampler's."""
        if sampler in SAMPLERS:
            return self.pipe.resolve(SampleRequest(num=1, sampler=sampler)).steps
        return self.num_steps

    # ----- Generate tab ---------------------------------------------------------------------------------------

    def check(self, sampler: object, steps: object, eta: object, seed: object, num: object,
              label: object = None, guidance: object = None) -> SampleRequest:
        """The UI's values (strings and floats from the widgets) as a resolved :class:`SampleRequest`: anything out
        of the widgets' range is refused with a message naming the limits, the rest as the request checks it."""
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        num_ = _integer(num, "the number of images", 1, MAX_IMAGES)
        steps_ = _integer(steps, "steps", 1, self.num_steps)
        eta_ = _number(eta, "eta")
        seed_ = _integer(seed, "the seed", 0, MAX_SEED)
        labels, guidance_ = None, None
        if self.class_names:
            labels = self._labels(label, num_)
            guidance_ = _number(1.0 if guidance is None else guidance, "guidance")
            if not 0.0 <= guidance_ <= MAX_GUIDANCE:
                raise DdpmkitError(f"guidance must be between 0 and {MAX_GUIDANCE:g}, got {guidance_:g}")
        request = SampleRequest(num=num_, sampler=str(sampler), steps=steps_, eta=eta_, seed=seed_, labels=labels,
                                guidance=guidance_)
        return self.pipe.resolve(request)

    def _labels(self, label: object, num: int) -> list[int]:
        names = self.class_names
        if label in (None, "", ALL_CLASSES):
            return [i % len(names) for i in range(num)]
        if label in names:
            return [names.index(label)] * num
        raise DdpmkitError(f"unknown class {label!r}; choose one of {', '.join(names)} or '{ALL_CLASSES}'")

    def _scale(self) -> int:
        return max(1, 96 // self.pipe.image_shape[1])

    def grid(self, images: torch.Tensor | np.ndarray, num: int) -> Image.Image:
        return grid_image(images, nrow=math.ceil(math.sqrt(num)), scale=self._scale())

    def generate(self, request: SampleRequest, on_step: Callable[[SamplerStep], None] | None = None,
                 cancel: threading.Event | None = None) -> GenerateResult:
        """Sample ``request``: every step is recorded for the animation and passed to ``on_step``; a set
        ``cancel`` stops the loop at the next step (raising :class:`Cancelled`)."""
        frames: list[Image.Image] = []
        calls = [0]

        def record(step: SamplerStep) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            frames.append(self.grid(step.x.clamp(-1, 1).cpu(), request.num))
            if on_step is not None:
                on_step(step)

        def count(*_: object) -> None:
            calls[0] += 1

        with self.lock:
            hook = self.pipe.model.register_forward_hook(count)
            try:
                start = time.perf_counter()
                images = self.pipe.generate(request, callback=record)
                seconds = time.perf_counter() - start
            finally:
                hook.remove()
        grid = self.grid(images, request.num)
        frames.append(grid)
        gif = save_gif([np.asarray(f) for f in frames], self._tmp / f"denoising-{time.monotonic_ns()}.gif",
                       duration_ms=max(40, 2000 // len(frames)), scale=1)
        return GenerateResult(grid, frames, gif, seconds, calls[0], request)

    def stream(self, request: SampleRequest, preview_every: int = 1, heartbeat: float = 0.25,
               cancel: threading.Event | None = None) -> Iterator[Preview | GenerateResult | None]:
        """Sample in a worker thread and yield a :class:`Preview` after steps, then the :class:`GenerateResult`;
        ``None`` when ``heartbeat`` seconds pass without either.

        Closing the iterator (the app does when the user presses Stop or leaves) cancels the sampling at its next
        step. A server can only close it between items, hence the heartbeat: Stop takes effect within
        ``heartbeat`` seconds plus one model evaluation, however far apart the previews are. Setting ``cancel``
        (from any thread) stops it too.
        """
        updates: queue.Queue = queue.Queue()
        cancel = cancel if cancel is not None else threading.Event()

        def on_step(step: SamplerStep) -> None:
            if (step.i + 1) % preview_every == 0 and step.i + 1 < step.num_steps:
                updates.put(Preview(step.i + 1, step.num_steps, self.grid(step.x0.clamp(-1, 1).cpu(), request.num)))

        def work() -> None:
            try:
                updates.put(self.generate(request, on_step=on_step, cancel=cancel))
            except BaseException as exc:  # handed to the consumer, raised there
                updates.put(exc)

        worker = threading.Thread(target=work, name="ddpmkit-demo-sampler", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = updates.get(timeout=heartbeat)
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, GenerateResult):
                    return
        finally:
            cancel.set()
            worker.join()

    # ----- Learn tab ------------------------------------------------------------------------------------------

    def data(self):
        """The run's training images (loaded once, at the run's size)."""
        if self._data is None:
            if not self.data_spec:
                raise DdpmkitError("this checkpoint does not name its data set, so the Learn tab has no images")
            self._data = _load_images(self.data_spec, self.pipe.image_shape[1])
        return self._data

    def explain(self, index: object, t: object, seed: object = 0) -> Explanation:
        """Noise training image ``index`` to step ``t`` (x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε from ``seed``) and show
        what the model makes of x_t: its x̂_0 and ε̂ (with the image's label on a conditional run)."""
        data = self.data()
        i = _integer(index, "the image index", 0, len(data) - 1)
        t_ = _integer(t, "t", 0, self.num_steps - 1)
        seed_ = _integer(seed, "the seed", 0, MAX_SEED)
        diffusion, device = self.pipe.diffusion, self.pipe.device
        x0 = to_model_range(data.images[i:i + 1])
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed_))
        t_batch = torch.full((1,), t_, dtype=torch.long)
        x_t = diffusion.q_sample(x0, t_batch, noise)
        kwargs = {}
        if self.class_names and data.labels is not None:
            kwargs = {k: v.to(device) for k, v in data.label_kwargs(slice(i, i + 1)).items()}
        with self.lock, torch.no_grad():
            out = self.pipe.model(x_t.to(device), t_batch.to(device), **kwargs).float().cpu()
        prediction = diffusion.split_output(out, x0.shape[1])
        x0_hat, eps_hat = diffusion.predict_x0_eps(prediction, x_t, t_batch)
        ac = float(diffusion.schedule.alphas_cumprod[t_])
        err = float((eps_hat - noise).pow(2).mean())
        x0_err = float((x0_hat.clamp(-1, 1) - x0).pow(2).mean())
        text = (f"t = {t_}: ᾱ_t = {ac:.4f}, so x_t keeps {math.sqrt(ac):.3f} of the image and "
                f"{math.sqrt(1 - ac):.3f} of the noise (log SNR = {math.log(ac / max(1 - ac, 1e-20)):+.2f}). "
                f"Mean squared error of the model's ε̂: {err:.4f}; of its x̂₀ (clipped): {x0_err:.4f}.")
        scale = max(4, 192 // x0.shape[-1])
        # ε and ε̂ have unit variance: shown over ±3σ so that their structure is visible
        show = lambda x, s=1.0: grid_image(to_uint8((x / s).clamp(-1, 1)), padding=0, scale=scale)
        tensors = {"x0": x0, "noise": noise, "x_t": x_t, "x0_hat": x0_hat, "eps_hat": eps_hat, "t": t_batch}
        return Explanation(show(x0), show(noise, 3.0), show(x_t), show(x0_hat), show(eps_hat, 3.0), text, tensors)

    def schedule_figure(self):
        """β_t, ᾱ_t and log SNR of the run's schedule beside linear, cosine and sigmoid at the same T."""
        return schedule_figure(self.pipe.diffusion.schedule)


def _load_images(spec: str, image_size: int):
    from ..data import load_dataset

    return load_dataset(spec, "train", image_size=image_size, progress=False)


def schedule_figure(schedule: NoiseSchedule):
    """A matplotlib Figure (no pyplot: safe in the server's threads) with three panels over t/T."""
    from matplotlib.figure import Figure

    T = schedule.num_steps
    curves = {f"this run ({schedule.kind})": schedule}
    for kind in ("linear", "cosine", "sigmoid"):
        curves[kind] = NoiseSchedule.from_name(kind, T)
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for (name, s), style in zip(curves.items(), ("-", "--", "--", "--")):
        t = np.arange(T)
        ac = s.alphas_cumprod.numpy()
        width = 2.5 if style == "-" else 1.2
        axes[0].plot(t, s.betas.numpy(), style, lw=width, label=name)
        axes[1].plot(t, ac, style, lw=width, label=name)
        axes[2].plot(t, np.log(ac / np.maximum(1 - ac, 1e-20)), style, lw=width, label=name)
    for ax, title in zip(axes, ("β_t", "ᾱ_t (signal kept)", "log SNR = log ᾱ_t / (1 − ᾱ_t)")):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    return fig
