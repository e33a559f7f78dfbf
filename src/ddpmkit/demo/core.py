"""What the demo computes, without Gradio: checked requests, sampling and editing (img2img from a sketch,
inpainting) with previews, progress and cancellation, a look inside the forward process, and the schedule plots.
The app (``app.py``) only lays these out.

Everything here is plain Python over a :class:`~ddpmkit.pipeline.Pipeline`, so it is tested directly.
"""

from __future__ import annotations

import dataclasses
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
from ..editing.inputs import as_model_images
from ..errors import DdpmkitError
from ..pipeline import Pipeline
from ..request import SampleRequest, student_steps
from ..sampling import SAMPLER_REGISTRY, SAMPLERS, SamplerStep
from ..schedule import NoiseSchedule
from ..viz import grid_image, save_gif, to_uint8
from .canvas import check_mask_area, dark_background, enlarge, mask_from_layers, sketch_to_image

MAX_IMAGES = 64  # a grid a browser shows at once; more is `ddpmkit sample`'s job
MAX_GUIDANCE = 20.0
MAX_SEED = 2**31 - 1
ALL_CLASSES = "one of each class"  # the label choice that cycles through the classes
NO_CLASS = "none (unconditional)"  # the Edit tab's label choice: keep what the image is
MAX_RESAMPLE = 10  # RePaint's resampling: each costs another pass over the steps
SOURCES = ("generated (the Generate tab's last images)", "fresh sample", "data set image")
FAST_SAMPLER = "unipc"  # the demo's default: DDIM-50's quality within 5% in 10 model evaluations (README)


class Cancelled(Exception):
    """Raised inside the sampler loop when the user cancelled the request."""


def _duration(seconds: float) -> str:
    """A time for people: "4.2 s", "3 min 10 s", "1 h 5 min"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    return f"{minutes // 60} h {minutes % 60} min"


@dataclass
class Preview:
    """Sampling under way: step ``step`` of ``num_steps`` done, ``seconds`` after the first model evaluation began
    (``first_seconds`` of them in step 1, which carries the warm-up). ``grid`` is the model's current x̂_0 for
    every image, or None: the pictures are sparser than the progress updates."""

    step: int
    num_steps: int
    grid: Image.Image | None
    seconds: float = 0.0
    first_seconds: float = 0.0

    @property
    def remaining(self) -> float:
        """Seconds left, at the pace of the steps after the first (the first alone until there are others)."""
        if self.step > 1:
            pace = (self.seconds - self.first_seconds) / (self.step - 1)
        else:
            pace = self.seconds / max(self.step, 1)
        return max(pace, 0.0) * (self.num_steps - self.step)

    @property
    def left(self) -> str:
        return f"about {_duration(self.remaining)} left"

    @property
    def text(self) -> str:
        return f"step {self.step} of {self.num_steps} · {_duration(self.seconds)} so far · {self.left}"


@dataclass
class GenerateResult:
    """A finished request: the grid, the images (uint8 (N, H, W, C)), the denoising frames (x_t after each step,
    then the result), an animated GIF of them, the wall time, the number of model evaluations (a guided step is one
    batched evaluation) and what the images are of (a class, one of each class, or unconditional)."""

    grid: Image.Image
    frames: list[Image.Image]
    gif: Path
    seconds: float
    nfe: int
    request: SampleRequest = field(repr=False)
    images: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 1, 1, 1), np.uint8))
    classes: str = "unconditional"

    @property
    def summary(self) -> str:
        r = self.request
        guided = f", guidance {r.guidance:g}" if r.guidance not in (None, 1.0) else ""
        return (f"{r.num} images in {self.seconds:.2f} s · {self.classes} · {self.nfe} model evaluations · "
                f"{r.sampler}, {r.steps} steps{guided}, seed {r.seed}")

    def frame(self, i: float) -> Image.Image:
        """The frame at slider position ``i``, clamped to this result's frames."""
        return self.frames[min(max(int(i), 0), len(self.frames) - 1)]


@dataclass
class EditJob:
    """A checked edit of one image (uint8 (H, W, C) at the run's size): "img2img" at ``strength``, or "inpaint"
    where ``mask`` is 1 with RePaint's ``resample`` and ``jump_length``; ``request`` is resolved for the edit."""

    kind: str
    image: np.ndarray
    request: SampleRequest
    strength: float = 1.0
    mask: np.ndarray | None = None
    resample: int = 1
    jump_length: int = 10


@dataclass
class EditResult:
    """A finished edit: the results' grid and images, the input (and the mask, white = repainted) as pictures,
    the wall time and the model evaluations."""

    grid: Image.Image
    images: np.ndarray
    input: Image.Image
    mask: Image.Image | None
    seconds: float
    nfe: int
    job: EditJob = field(repr=False)
    classes: str = "unconditional"

    @property
    def summary(self) -> str:
        j, r = self.job, self.job.request
        jumps = "plain replacement" if j.resample == 1 else f"resample {j.resample}, jump length {j.jump_length}"
        how = f"img2img at strength {j.strength:g}" if j.kind == "img2img" else f"inpainting ({jumps})"
        guided = f", guidance {r.guidance:g}" if r.guidance not in (None, 0.0, 1.0) else ""
        return (f"{how}: {r.num} images in {self.seconds:.2f} s · {self.classes} · {self.nfe} model evaluations · "
                f"{r.sampler}, {r.steps} steps{guided}, seed {r.seed}")


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
        raise DdpmkitError(f"{what}: must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise DdpmkitError(f"{what}: must be a finite number, got {value!r}")
    return number


def _between(value: object, what: str, low: float, high: float) -> float:
    number = _number(value, what)
    if not low <= number <= high:
        raise DdpmkitError(f"{what}: must be between {low:g} and {high:g}, got {number:g}")
    return number


def _integer(value: object, what: str, low: int, high: int) -> int:
    number = _number(value, what)
    if number != int(number) or not low <= number <= high:
        raise DdpmkitError(f"{what}: must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


class DemoModel:
    """A loaded run and what the demo does with it. One request samples at a time (``lock``): the app's queue
    makes concurrent users wait their turn rather than share the model."""

    def __init__(self, pipe: Pipeline, data_spec: str | None = None):
        self.pipe = pipe
        self.data_spec = data_spec if data_spec is not None else pipe.info.data_name
        self.lock = threading.Lock()
        self._data = None
        self._dark: bool | None = None
        self._test = None
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

    @property
    def start_sampler(self) -> str:
        """The sampler the controls start on: the fast default, or a distilled student's DDIM (its only sampler)."""
        return self.pipe.info.sampler[0] if student_steps(self.pipe.info) is not None else FAST_SAMPLER

    def default_steps(self, sampler: str) -> int:
        """The slider's start: the run's step count for its own sampler (DDPM-50 for mnist), else the sampler's (a
        distilled student: its own steps whatever the sampler; Generate refuses the others in one line)."""
        if student_steps(self.pipe.info) is not None:
            return student_steps(self.pipe.info)
        if sampler in SAMPLERS:
            return self.pipe.resolve(SampleRequest(num=1, sampler=sampler)).steps
        return self.num_steps

    # ----- Generate tab ---------------------------------------------------------------------------------------

    def _request(self, sampler: object, steps: object, eta: object, seed: object, num: object, label: object,
                 guidance: object, edit: bool) -> SampleRequest:
        """The widgets' values as an unresolved request; every message names its control."""
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"Sampler: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        num_ = _integer(num, "Images", 1, MAX_IMAGES)
        steps_ = _integer(steps, "Steps", 1, self.num_steps)
        eta_ = _between(eta, "η", 0.0, 1.0)
        seed_ = _integer(seed, "Seed", 0, MAX_SEED)
        labels, guidance_ = None, None
        if self.class_names and not (edit and label == NO_CLASS):
            labels = self._labels(label, num_)
            guidance_ = _between(1.0 if guidance is None else guidance, "Guidance", 0.0, MAX_GUIDANCE)
        return SampleRequest(num=num_, sampler=str(sampler), steps=steps_, eta=eta_, seed=seed_, labels=labels,
                             guidance=guidance_)

    def check(self, sampler: object, steps: object, eta: object, seed: object, num: object,
              label: object = None, guidance: object = None) -> SampleRequest:
        """The UI's values (strings and floats from the widgets) as a resolved :class:`SampleRequest`: anything out
        of the widgets' range is refused with a message naming the control and its limits, the rest as the request
        checks it."""
        return self.pipe.resolve(self._request(sampler, steps, eta, seed, num, label, guidance, edit=False))

    def _labels(self, label: object, num: int) -> list[int]:
        names = self.class_names
        if label in (None, "", ALL_CLASSES):
            return [i % len(names) for i in range(num)]
        if label in names:
            return [names.index(label)] * num
        raise DdpmkitError(f"Class: unknown class {label!r}; choose one of {', '.join(names)} or '{ALL_CLASSES}'")

    def classes(self, request: SampleRequest) -> str:
        """What a resolved request draws, in words: "class 3", "one of each class", "classes 1, 4" or
        "unconditional" (an unconditional run, or guidance 0: the null label)."""
        names = self.class_names
        if not names or request.labels is None or request.guidance == 0:
            return "unconditional"
        labels = list(request.labels) * (request.num if len(request.labels) == 1 else 1)
        if len(set(labels)) == 1:
            return f"class {names[labels[0]]}"
        if labels == [i % len(names) for i in range(len(labels))]:
            return ALL_CLASSES
        return "classes " + ", ".join(names[i] for i in labels)

    def _scale(self) -> int:
        return max(1, 96 // self.pipe.image_shape[1])

    def grid(self, images: torch.Tensor | np.ndarray, num: int) -> Image.Image:
        return grid_image(images, nrow=math.ceil(math.sqrt(num)), scale=self._scale())

    def _timed(self, run: Callable[[Callable[[SamplerStep], None]], np.ndarray],
               on_step: Callable[[SamplerStep, float], None] | None,
               cancel: threading.Event | None) -> tuple[np.ndarray, float, int]:
        """``run(callback)`` under the lock: its images, wall time and model evaluations. The callback checks
        ``cancel`` (raising :class:`Cancelled`) and passes each step with the seconds since sampling began."""
        calls = [0]

        def callback(step: SamplerStep) -> None:
            if cancel is not None and cancel.is_set():
                raise Cancelled
            if on_step is not None:
                on_step(step, time.perf_counter() - start)

        def count(*_: object) -> None:
            calls[0] += 1

        with self.lock:
            hook = self.pipe.model.register_forward_hook(count)
            try:
                start = time.perf_counter()
                images = run(callback)
                seconds = time.perf_counter() - start
            finally:
                hook.remove()
        return images, seconds, calls[0]

    def generate(self, request: SampleRequest, on_step: Callable[[SamplerStep, float], None] | None = None,
                 cancel: threading.Event | None = None) -> GenerateResult:
        """Sample ``request``: every step is recorded for the animation and passed to ``on_step`` (with the
        seconds since sampling began); a set ``cancel`` stops the loop at the next step (raising
        :class:`Cancelled`)."""
        frames: list[Image.Image] = []

        def record(step: SamplerStep, seconds: float) -> None:
            frames.append(self.grid(step.x.clamp(-1, 1).cpu(), request.num))
            if on_step is not None:
                on_step(step, seconds)

        images, seconds, nfe = self._timed(lambda callback: self.pipe.generate(request, callback=callback),
                                           record, cancel)
        grid = self.grid(images, request.num)
        frames.append(grid)
        gif = save_gif([np.asarray(f) for f in frames], self._tmp / f"denoising-{time.monotonic_ns()}.gif",
                       duration_ms=max(40, 2000 // len(frames)), scale=1)
        return GenerateResult(grid, frames, gif, seconds, nfe, request, images, self.classes(request))

    def stream(self, work: SampleRequest | EditJob, preview_seconds: float = 1.0, update_seconds: float = 0.1,
               heartbeat: float = 0.25, cancel: threading.Event | None = None,
               ) -> Iterator[Preview | GenerateResult | EditResult | None]:
        """Sample (a request) or edit (a job) in a worker thread; yield a :class:`Preview` as steps finish, then
        the result; ``None`` when ``heartbeat`` seconds pass without either.

        Progress starts at the first step and comes at most every ``update_seconds`` (a long DDPM run shows it
        from the start, with an estimate of the time left); a picture of x̂_0 comes with step 1 and then at most
        every ``preview_seconds`` (each is a PNG the browser fetches, which costs sampling time on a CPU). When
        the consumer falls behind, the updates waiting are merged into one (the newest step, the newest picture).

        Closing the iterator (the app does when the user presses Stop or leaves) cancels the sampling at its next
        step. A server can only close it between items, hence the heartbeat: Stop takes effect within
        ``heartbeat`` seconds plus one model evaluation, however far apart the previews are. Setting ``cancel``
        (from any thread) stops it too.
        """
        updates: queue.Queue = queue.Queue()
        cancel = cancel if cancel is not None else threading.Event()
        num = work.num if isinstance(work, SampleRequest) else work.request.num
        last = {"update": -math.inf, "picture": -math.inf, "first": 0.0}

        def on_step(step: SamplerStep, seconds: float) -> None:
            done = step.i + 1
            if done == 1:
                last["first"] = seconds
            if done >= step.num_steps or (done > 1 and seconds - last["update"] < update_seconds):
                return
            grid = None
            if done == 1 or seconds - last["picture"] >= preview_seconds:
                grid = self.grid(step.x0.clamp(-1, 1).cpu(), num)
                last["picture"] = seconds
            last["update"] = seconds
            updates.put(Preview(done, step.num_steps, grid, seconds, last["first"]))

        def work_() -> None:
            try:
                if isinstance(work, SampleRequest):
                    updates.put(self.generate(work, on_step=on_step, cancel=cancel))
                else:
                    updates.put(self.edit(work, on_step=on_step, cancel=cancel))
            except BaseException as exc:  # handed to the consumer, raised there
                updates.put(exc)

        worker = threading.Thread(target=work_, name="ddpmkit-demo-sampler", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    items = [updates.get(timeout=heartbeat)]
                except queue.Empty:
                    yield None
                    continue
                while not updates.empty():
                    items.append(updates.get_nowait())
                previews = [item for item in items if isinstance(item, Preview)]
                if previews:
                    pictures = [p.grid for p in previews if p.grid is not None]
                    yield dataclasses.replace(previews[-1], grid=pictures[-1] if pictures else None)
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                    if not isinstance(item, Preview):
                        yield item
                        return
        finally:
            cancel.set()
            worker.join()

    # ----- Edit tab -------------------------------------------------------------------------------------------

    def dark_background(self) -> bool:
        """Whether the run draws light on dark (MNIST's white digits on black), from the border pixels of its
        data set's first 256 images; a run whose data set cannot be loaded is judged by 4 of its own samples."""
        if self._dark is None:
            try:
                images = self.data().images[:256]
            except DdpmkitError:
                request = self.check(self.start_sampler, self.default_steps(self.start_sampler), 0.0, 0, 4)
                with self.lock:
                    images = self.pipe.generate(request)
            self._dark = dark_background(np.asarray(images))
        return self._dark

    def sketch_input(self, sketch: object) -> np.ndarray:
        """A sketch pad's value as the model's input: uint8 (H, W, C) at the run's size and channels, inverted
        when the sketch's background and the run's differ (see :mod:`ddpmkit.demo.canvas`)."""
        c, size, _ = self.pipe.image_shape
        return sketch_to_image(sketch, size, c, self.dark_background())

    def _edit_request(self, image: np.ndarray, controls: tuple) -> SampleRequest:
        c, size, _ = self.pipe.image_shape
        request = self._request(*controls, edit=True)
        return self.pipe.edit_request(request, as_model_images(image, c, size, "Source image"))

    def check_img2img(self, sketch: object, strength: object, sampler: object, steps: object, eta: object,
                      seed: object, num: object, label: object = NO_CLASS, guidance: object = None) -> EditJob:
        """The Sketch controls as an img2img job (``label`` a class name or :data:`NO_CLASS`); one-line errors
        naming the control."""
        strength_ = _between(strength, "Strength", 0.0, 1.0)
        image = self.sketch_input(sketch)
        request = self._edit_request(image, (sampler, steps, eta, seed, num, label, guidance))
        return EditJob("img2img", image, request, strength=strength_)

    def check_inpaint(self, image: object, editor: object, resample: object, jump_length: object, sampler: object,
                      steps: object, eta: object, seed: object, num: object, label: object = NO_CLASS,
                      guidance: object = None) -> EditJob:
        """The Inpaint controls as a job: ``image`` the source (uint8 (H, W, C) at the run's size, from
        :meth:`source_image`), the mask from the editor's painted layers; one-line errors naming the control."""
        if image is None:
            raise DdpmkitError("Source image: none loaded; pick a source and press Load first")
        source = np.asarray(image, dtype=np.uint8)
        mask = check_mask_area(mask_from_layers(editor, self.pipe.image_shape[1]))
        resample_ = _integer(resample, "Resample", 1, MAX_RESAMPLE)
        jump = _integer(jump_length, "Jump length", 1, self.num_steps)
        if resample_ > 1 and sampler in SAMPLER_REGISTRY and SAMPLER_REGISTRY[sampler].multistep:
            one_step = ", ".join(name for name, spec in SAMPLER_REGISTRY.items() if not spec.multistep)
            raise DdpmkitError(f"Resample: RePaint's jumps need a one-step sampler ({one_step}); {sampler} remembers "
                               "earlier steps, so set resample to 1 or pick another sampler")
        request = self._edit_request(source, (sampler, steps, eta, seed, num, label, guidance))
        return EditJob("inpaint", source, request, mask=mask, resample=resample_, jump_length=jump)

    def edit(self, job: EditJob, on_step: Callable[[SamplerStep, float], None] | None = None,
             cancel: threading.Event | None = None) -> EditResult:
        """Run ``job`` through the pipeline's img2img or inpaint, each step passed to ``on_step`` (with the
        seconds since it began); a set ``cancel`` stops it at the next step (raising :class:`Cancelled`)."""
        def run(callback: Callable[[SamplerStep], None]) -> np.ndarray:
            if job.kind == "img2img":
                return self.pipe.img2img(job.image, job.strength, job.request, callback=callback)
            return self.pipe.inpaint(job.image, job.mask, job.request, jump_length=job.jump_length,
                                     resample=job.resample, callback=callback)

        images, seconds, nfe = self._timed(run, on_step, cancel)
        mask = None if job.mask is None else self.picture(job.mask[..., None] * 255)
        return EditResult(self.grid(images, job.request.num), images, self.picture(job.image), mask, seconds, nfe,
                          job, self.classes(job.request))

    def picture(self, image: np.ndarray) -> Image.Image:
        """One uint8 (H, W, C) image, enlarged as the grids are."""
        return grid_image(np.asarray(image, dtype=np.uint8)[None], nrow=1, padding=0, scale=self._scale())

    def source_image(self, source: object, index: object, generated: np.ndarray | None = None) -> np.ndarray:
        """An image to inpaint, uint8 (H, W, C) at the run's size: image ``index`` of ``generated`` (the Generate
        tab's last images), a fresh sample (``index`` is its seed), or image ``index`` of the data set's test
        split (its training split when it has no test split)."""
        if source == SOURCES[0]:
            if generated is None or len(generated) == 0:
                raise DdpmkitError("Image #: the Generate tab has no images yet; generate some first, or pick "
                                   "another source")
            return np.asarray(generated[_integer(index, "Image #", 0, len(generated) - 1)])
        if source == SOURCES[1]:
            request = self.check(self.start_sampler, self.default_steps(self.start_sampler), 0.0, index, 1)
            with self.lock:
                return self.pipe.generate(request)[0]
        if source == SOURCES[2]:
            data = self._test_data()
            return data.images[_integer(index, "Image #", 0, len(data) - 1)]
        raise DdpmkitError(f"Source: unknown source {source!r}; choose one of {', '.join(SOURCES)}")

    def _test_data(self):
        """The data set's test images at the run's size (loaded once)."""
        from ..data import available_splits, load_dataset

        if not self.data_spec:
            raise DdpmkitError("Source: this checkpoint does not name its data set; pick a generated image")
        if self._test is None:
            split = "test" if "test" in available_splits(self.data_spec) else "train"
            self._test = load_dataset(self.data_spec, split, image_size=self.pipe.image_shape[1], progress=False)
        return self._test

    def editor_value(self, image: np.ndarray) -> dict:
        """An image editor's starting value: ``image`` enlarged as its background, nothing painted yet."""
        big = enlarge(image)
        return {"background": big, "layers": [], "composite": big}

    # ----- Learn tab ------------------------------------------------------------------------------------------

    def data(self):
        """The run's training images (loaded once, at the run's size)."""
        if self._data is None:
            if not self.data_spec:
                raise DdpmkitError("Training image #: this checkpoint does not name its data set, so the Learn tab "
                                   "has no images")
            self._data = _load_images(self.data_spec, self.pipe.image_shape[1])
        return self._data

    def explain(self, index: object, t: object, seed: object = 0) -> Explanation:
        """Noise training image ``index`` to step ``t`` (x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε from ``seed``) and show
        what the model makes of x_t: its x̂_0 and ε̂ (with the image's label on a conditional run)."""
        data = self.data()
        i = _integer(index, "Training image #", 0, len(data) - 1)
        t_ = _integer(t, "t", 0, self.num_steps - 1)
        seed_ = _integer(seed, "Noise seed", 0, MAX_SEED)
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
    """A matplotlib Figure (no pyplot: safe in the server's threads) with three panels over t/T: the run's schedule
    and the common ones at the same T, less the one the run's schedule is (it would hide under the run's curve)."""
    from matplotlib.figure import Figure

    T = schedule.num_steps
    curves = {f"this run ({schedule.kind})": schedule}
    for kind in ("linear", "cosine", "sigmoid"):
        common = NoiseSchedule.from_name(kind, T)
        if not np.allclose(common.alphas_cumprod.numpy(), schedule.alphas_cumprod.numpy()):
            curves[kind] = common
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for i, (name, s) in enumerate(curves.items()):
        t = np.arange(T)
        ac = s.alphas_cumprod.numpy()
        style, width = ("-", 2.5) if i == 0 else ("--", 1.2)
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
