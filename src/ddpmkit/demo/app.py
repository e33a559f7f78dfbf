"""The Gradio app: Generate, Edit and Learn tabs laid out over :class:`~ddpmkit.demo.core.DemoModel`.

Gradio is imported here only (``pip install 'ddpmkit[demo]'``); the computing is in ``core.py``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import anyio  # noqa: E402  (Gradio's own dependency)
import gradio as gr  # noqa: E402

from ..errors import DdpmkitError  # noqa: E402
from ..sampling import SAMPLERS  # noqa: E402
from .canvas import EDITOR_SIDE  # noqa: E402
from .core import (  # noqa: E402
    ALL_CLASSES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_RESAMPLE,
    MAX_SEED,
    NO_CLASS,
    SOURCES,
    DemoModel,
    GenerateResult,
    Preview,
)
from .port import check_port  # noqa: E402

INTRO = """Each image starts as pure noise x_T and is denoised step by step: at every step the network predicts the
noise ε̂ in x_t, the sampler turns that into x̂₀ (its current guess of the image) and moves to a less noisy x_{t−1}.
DPM-Solver++ and DDIM are deterministic and need few steps; DDPM adds fresh noise at every step and needs many."""


_DONE = object()  # the end of a stream (its items may be None)


def _close_when_idle(items) -> None:
    """Close a stream (which joins its sampler thread) once the thread stepping it has returned."""
    while True:
        try:
            items.close()
            return
        except ValueError:  # "generator already executing": a cancelled await left next() running in its thread
            time.sleep(0.02)


EDIT_INTRO = """An edit starts from an image instead of pure noise. **Sketch → samples** (SDEdit) noises your drawing
to the level of the last *strength* × steps and denoises from there: low strength keeps your strokes, 1 ignores them.
**Inpaint** (RePaint) repaints where you paint and keeps the rest exactly; resample > 1 goes back up *jump length*
steps now and then, so the new pixels agree with the kept ones (DDPM and DDIM only). Class "none" keeps what the
image is (the unconditional model)."""


def _field_name(label: object) -> str:
    """A control's label as the name an error starts with: "guidance w (0 …)" → "Guidance w"."""
    name = str(label or "value").split(" (")[0]
    return name[:1].upper() + name[1:]


def _named(control: Any) -> Any:
    """``control`` (a gr.Slider or gr.Number) with an out-of-range message that names it.

    Gradio checks their bounds itself, with a message that does not say which control (and a traceback on the
    console); this wraps the instance's check (a subclass would make Gradio write a .pyi stub beside this file).
    """
    preprocess = control.preprocess

    def named_preprocess(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            name, low, high = _field_name(control.label), control.minimum, control.maximum
            raise _page_error(DdpmkitError(f"{name}: must be between {low:g} and {high:g}, got {payload:g}")) from None

    control.preprocess = named_preprocess
    return control


def Slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """gr.Slider whose out-of-range message names it."""
    return _named(gr.Slider(*args, **kwargs))


def Number(*args: Any, **kwargs: Any) -> gr.Number:
    """gr.Number whose out-of-range message names it."""
    return _named(gr.Number(*args, **kwargs))


def _page_error(exc: DdpmkitError) -> gr.Error:
    """A validation error as one line on the server's console and on the page (no traceback: not a bug)."""
    print(f"ddpmkit demo: {exc}", file=sys.stderr, flush=True)
    return gr.Error(str(exc), print_exception=False)


@contextmanager
def _one_line_errors():
    """Turn a :class:`DdpmkitError` raised inside into :func:`_page_error`'s one line; other errors (bugs) keep
    Gradio's traceback."""
    try:
        yield
    except DdpmkitError as exc:
        raise _page_error(exc) from None


async def _follow(model: DemoModel, work, progress) -> Any:
    """Run ``model.stream(work)`` off the event loop: yields each :class:`Preview` (after reporting it to
    ``progress``) and then the result. An async generator, so that Stop cancels its task, whose ``finally``
    stops the sampler at its next step (Gradio 6.31 cannot close a sync generator on cancel)."""
    cancel = threading.Event()
    items = model.stream(work, cancel=cancel)
    try:
        while (item := await anyio.to_thread.run_sync(next, items, _DONE)) is not _DONE:
            if item is None:  # a heartbeat: nothing new to show
                continue
            if isinstance(item, Preview):
                progress((item.step, item.num_steps), desc=item.left, unit="steps")
            yield item
    finally:
        cancel.set()
        threading.Thread(target=_close_when_idle, args=(items,), daemon=True).start()  # off the event loop


def build_app(model: DemoModel) -> gr.Blocks:
    """The Blocks app for one loaded run (not yet launched)."""
    names, T = model.class_names, model.num_steps
    with gr.Blocks(title="ddpmkit demo", analytics_enabled=False) as app:
        gr.Markdown(f"## ddpmkit · {model.title}")
        with gr.Tab("Generate"):
            gr.Markdown(INTRO)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    sampler, steps, eta, seed = _sampler_controls(model)
                    num = Slider(1, MAX_IMAGES, value=16, step=1, label="images")
                    # custom values reach DemoModel's check, whose message names the control (Gradio's does not)
                    label = gr.Dropdown([ALL_CLASSES, *names], value=ALL_CLASSES, label="class", visible=bool(names),
                                        allow_custom_value=True)
                    guidance = _guidance(bool(names))
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Column(scale=2):
                    grid = gr.Image(label="samples (x̂₀ while sampling)", type="pil", format="png",
                                    elem_id="grid", interactive=False)
                    timing = gr.Markdown(elem_id="timing")
            with gr.Row():
                animation = gr.Image(label="noise → image (x_t after each step)", type="filepath",
                                     elem_id="animation", interactive=False)
                with gr.Column():
                    frame = gr.Slider(0, 1, value=0, step=1, label="step", elem_id="frame")
                    frame_image = gr.Image(label="x_t at that step", type="pil", format="png", interactive=False,
                                           elem_id="frame-image")
            result = gr.State(None)  # the last GenerateResult: its frames, and its images for the Edit tab

        with gr.Tab("Edit"):
            gr.Markdown(EDIT_INTRO)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    e_sampler, e_steps, e_eta, e_seed = _sampler_controls(model)
                    e_num = Slider(1, MAX_IMAGES, value=4, step=1, label="images")
                    e_label = gr.Dropdown([NO_CLASS, *names], value=NO_CLASS, label="class", visible=bool(names),
                                          allow_custom_value=True)
                    e_guidance = _guidance(bool(names))
                    e_stop = gr.Button("Stop", variant="stop", elem_id="edit-stop")
                with gr.Column(scale=3), gr.Tabs():
                    with gr.Tab("Sketch → samples"):
                        with gr.Row():
                            sketch = gr.Sketchpad(label="draw a digit", type="numpy", image_mode="RGBA", format="png",
                                                  canvas_size=(EDITOR_SIDE, EDITOR_SIDE), fixed_canvas=True,
                                                  layers=False, transforms=(), elem_id="sketch",
                                                  brush=gr.Brush(default_size=12, colors=["#000000"],
                                                                 color_mode="fixed"))
                            with gr.Column():
                                strength = Slider(0.0, 1.0, value=0.6, step=0.05, elem_id="strength",
                                                  label="strength (0 keeps the sketch, 1 ignores it)")
                                to_samples = gr.Button("Turn into samples", variant="primary", elem_id="img2img")
                        with gr.Row():
                            sketch_in = gr.Image(label="the sketch as the model sees it", type="pil", format="png",
                                                 interactive=False, elem_id="sketch-input")
                            sketch_out = gr.Image(label="samples (x̂₀ while sampling)", type="pil", format="png",
                                                  interactive=False, elem_id="sketch-result")
                        sketch_text = gr.Markdown(elem_id="sketch-timing")
                    with gr.Tab("Inpaint"):
                        with gr.Row():
                            source = gr.Radio(list(SOURCES), value=SOURCES[1], label="source image")
                            source_index = Number(0, precision=0, minimum=0, label="image # (seed of a fresh sample)")
                            load = gr.Button("Load", elem_id="load-source")
                        with gr.Row():
                            editor = gr.ImageEditor(label="paint over what to repaint", type="numpy",
                                                    image_mode="RGBA", format="png", sources=(), layers=False,
                                                    transforms=(), canvas_size=(EDITOR_SIDE, EDITOR_SIDE),
                                                    fixed_canvas=True, elem_id="mask-editor",
                                                    brush=gr.Brush(default_size=14, colors=["#ff00ff"],
                                                                   color_mode="fixed"))
                            with gr.Column():
                                resample = Slider(1, MAX_RESAMPLE, value=1, step=1,
                                                  label="resample (1 plain replacement, >1 RePaint's jumps)")
                                jump = Slider(1, T, value=min(10, T), step=1, label="jump length")
                                inpaint = gr.Button("Inpaint", variant="primary", elem_id="inpaint")
                        with gr.Row():
                            inpaint_in = gr.Image(label="input", type="pil", format="png", interactive=False)
                            inpaint_mask = gr.Image(label="mask (white: repainted)", type="pil", format="png",
                                                    interactive=False)
                            inpaint_out = gr.Image(label="results (x̂₀ while sampling)", type="pil", format="png",
                                                   interactive=False, elem_id="inpaint-result")
                        inpaint_text = gr.Markdown(elem_id="inpaint-timing")
            source_image = gr.State(None)  # the image to inpaint, at the run's size

        with gr.Tab("Learn"):
            gr.Markdown("The forward process adds noise in closed form, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε; the network "
                        "sees only x_t and t and predicts ε. Move t to see how much of the image survives and "
                        "what the network recovers from it.")
            with gr.Row():
                index = Number(0, precision=0, minimum=0, label="training image #")
                t_slider = Slider(0, T - 1, value=T // 2, step=1, label="t")
                noise_seed = Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="noise seed")
            explanation = gr.Markdown(elem_id="explanation")
            with gr.Row():
                shown = [gr.Image(label=text, type="pil", format="png", interactive=False, min_width=120)
                         for text in ("x₀ (real image)", "ε (the noise, ±3σ)", "x_t", "model's x̂₀",
                                      "model's ε̂ (±3σ)")]
            gr.Markdown("The run's noise schedule (solid) beside the common ones at the same T:")
            gr.Plot(model.schedule_figure(), format="png")

        def on_sampler(name: str) -> tuple[Any, Any]:
            return gr.update(value=model.default_steps(name)), gr.update(visible=name == "ddim")

        async def run(sampler_, steps_, eta_, seed_, num_, label_, guidance_, progress=gr.Progress()):  # noqa: B008
            with _one_line_errors():
                request = model.check(sampler_, steps_, eta_, seed_, num_, label_, guidance_)
                async for item in _follow(model, request, progress):
                    if isinstance(item, Preview):
                        yield (item.grid if item.grid is not None else gr.skip(), item.text, gr.skip(), gr.skip(),
                               gr.skip(), gr.skip())
                    else:
                        last = len(item.frames) - 1
                        # the frame shown too: the slider's change event does not fire when its value stays
                        yield (item.grid, item.summary, str(item.gif), item, gr.update(maximum=last, value=last),
                               item.frame(last))

        def show_frame(last: GenerateResult | None, i: float):
            return last.frame(i) if last is not None else None

        async def edit(job_of, outputs: int, progress):
            """Check the controls (``job_of()``), then stream the edit: previews into the result image, the
            progress into the text, then the input (and mask), the results and the summary."""
            with _one_line_errors():
                job = job_of()
                async for item in _follow(model, job, progress):
                    if isinstance(item, Preview):
                        picture = item.grid if item.grid is not None else gr.skip()
                        yield (*[gr.skip()] * (outputs - 2), picture, item.text)
                    else:
                        inputs = [item.input] if outputs == 3 else [item.input, item.mask]
                        yield (*inputs, item.grid, item.summary)

        async def sketch_to_samples(sketch_, strength_, sampler_, steps_, eta_, seed_, num_, label_, guidance_,
                                    progress=gr.Progress()):  # noqa: B008
            async for update in edit(lambda: model.check_img2img(sketch_, strength_, sampler_, steps_, eta_, seed_,
                                                                 num_, label_, guidance_), 3, progress):
                yield update

        async def inpaint_image(image_, editor_, resample_, jump_, sampler_, steps_, eta_, seed_, num_, label_,
                                guidance_, progress=gr.Progress()):  # noqa: B008
            async for update in edit(lambda: model.check_inpaint(image_, editor_, resample_, jump_, sampler_, steps_,
                                                                 eta_, seed_, num_, label_, guidance_), 4, progress):
                yield update

        def load_source(source_, index_, last: GenerateResult | None):
            with _one_line_errors():
                image = model.source_image(source_, index_, None if last is None else last.images)
            return image, model.editor_value(image)

        def explain(index_, t_, seed_):
            with _one_line_errors():
                e = model.explain(index_, t_, seed_)
            return e.text, e.x0, e.noise, e.x_t, e.x0_hat, e.eps_hat

        # cheap UI updates skip the queue, so they never wait behind someone's sampling
        for chosen, steps_control, eta_control in ((sampler, steps, eta), (e_sampler, e_steps, e_eta)):
            chosen.change(on_sampler, chosen, [steps_control, eta_control], queue=False, api_name=False)
        event = generate.click(run, [sampler, steps, eta, seed, num, label, guidance],
                               [grid, timing, animation, result, frame, frame_image], concurrency_limit=1,
                               api_name="generate")
        stop.click(None, cancels=[event])
        frame.change(show_frame, [result, frame], frame_image, queue=False, api_name=False)
        controls = [e_sampler, e_steps, e_eta, e_seed, e_num, e_label, e_guidance]
        edits = [to_samples.click(sketch_to_samples, [sketch, strength, *controls],
                                  [sketch_in, sketch_out, sketch_text], concurrency_limit=1, api_name="img2img"),
                 inpaint.click(inpaint_image, [source_image, editor, resample, jump, *controls],
                               [inpaint_in, inpaint_mask, inpaint_out, inpaint_text], concurrency_limit=1,
                               api_name="inpaint")]
        e_stop.click(None, cancels=edits)
        load.click(load_source, [source, source_index, result], [source_image, editor], concurrency_limit=1,
                   api_name="load_source")
        learn_inputs = [index, t_slider, noise_seed]
        for control in learn_inputs:
            control.change(explain, learn_inputs, [explanation, *shown], api_name=False)
        app.load(explain, learn_inputs, [explanation, *shown], api_name="explain")
    return app


def _sampler_controls(model: DemoModel) -> tuple[Any, Any, Any, Any]:
    """The sampler, steps, η (shown for DDIM) and seed controls, as the Generate and Edit tabs both have them."""
    sampler = gr.Dropdown(list(SAMPLERS), value=model.start_sampler, label="sampler")
    steps = Slider(1, model.num_steps, value=model.default_steps(model.start_sampler), step=1, label="steps")
    eta = Slider(0.0, 1.0, value=0.0, step=0.05, label="η (DDIM: 0 deterministic, 1 = DDPM)", visible=False)
    seed = Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
    return sampler, steps, eta, seed


def _guidance(visible: bool) -> Any:
    return Slider(0.0, MAX_GUIDANCE, value=3.0, step=0.5, visible=visible,
                  label="guidance w (0 unconditional, 1 conditional, >1 stronger)")


def launch(model: DemoModel, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           block: bool = True) -> tuple[gr.Blocks, str]:
    """Serve the app (queued: one sampling request at a time, the rest wait their turn); returns it and its URL."""
    check_port(host, port)
    app = build_app(model)
    app.queue(default_concurrency_limit=1, max_size=64)
    _, url, share_url = app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                                   quiet=True, show_error=True, footer_links=["api"])
    print(f"ddpmkit demo: {model.title}\nrunning on {url}" + (f" (public: {share_url})" if share_url else ""),
          flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url
