"""The Gradio app: a Generate tab and a Learn tab laid out over :class:`~ddpmkit.demo.core.DemoModel`.

Gradio is imported here only (``pip install 'ddpmkit[demo]'``); the computing is in ``core.py``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import anyio  # noqa: E402  (Gradio's own dependency)
import gradio as gr  # noqa: E402

from ..errors import DdpmkitError  # noqa: E402
from ..sampling import SAMPLERS  # noqa: E402
from .core import ALL_CLASSES, FAST_SAMPLER, MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, DemoModel, Preview  # noqa: E402
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


def _page_error(exc: DdpmkitError) -> gr.Error:
    return gr.Error(str(exc), print_exception=False)


def build_app(model: DemoModel) -> gr.Blocks:
    """The Blocks app for one loaded run (not yet launched)."""
    names, T = model.class_names, model.num_steps
    with gr.Blocks(title="ddpmkit demo", analytics_enabled=False) as app:
        gr.Markdown(f"## ddpmkit · {model.title}")
        with gr.Tab("Generate"):
            gr.Markdown(INTRO)
            with gr.Row():
                with gr.Column(scale=1, min_width=260):
                    sampler = gr.Dropdown(list(SAMPLERS), value=FAST_SAMPLER, label="sampler")
                    steps = gr.Slider(1, T, value=model.default_steps(FAST_SAMPLER), step=1, label="steps")
                    eta = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="η (DDIM: 0 deterministic, 1 = DDPM)",
                                    visible=False)
                    num = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="images")
                    seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                    label = gr.Dropdown([ALL_CLASSES, *names], value=ALL_CLASSES, label="class", visible=bool(names))
                    guidance = gr.Slider(0.0, MAX_GUIDANCE, value=3.0, step=0.5, visible=bool(names),
                                         label="guidance w (0 unconditional, 1 conditional, >1 stronger)")
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
                    frame_image = gr.Image(label="x_t at that step", type="pil", format="png", interactive=False)
            frames = gr.State([])

        with gr.Tab("Learn"):
            gr.Markdown("The forward process adds noise in closed form, x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε; the network "
                        "sees only x_t and t and predicts ε. Move t to see how much of the image survives and "
                        "what the network recovers from it.")
            with gr.Row():
                index = gr.Number(0, precision=0, minimum=0, label="training image #")
                t_slider = gr.Slider(0, T - 1, value=T // 2, step=1, label="t")
                noise_seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="noise seed")
            explanation = gr.Markdown(elem_id="explanation")
            with gr.Row():
                shown = [gr.Image(label=text, type="pil", format="png", interactive=False, min_width=120)
                         for text in ("x₀ (real image)", "ε (the noise, ±3σ)", "x_t", "model's x̂₀",
                                      "model's ε̂ (±3σ)")]
            gr.Markdown("The run's noise schedule (solid) beside the three common ones at the same T:")
            gr.Plot(model.schedule_figure(), format="png")

        def on_sampler(name: str) -> tuple[Any, Any]:
            return gr.update(value=model.default_steps(name)), gr.update(visible=name == "ddim")

        async def run(sampler_, steps_, eta_, seed_, num_, label_, guidance_, progress=gr.Progress()):  # noqa: B008
            """An async generator: Stop cancels its task, whose ``finally`` stops the sampler at its next step.
            (Gradio 6.31 cannot close a sync generator on cancel: it awaits the generator's close.)"""
            try:
                request = model.check(sampler_, steps_, eta_, seed_, num_, label_, guidance_)
            except DdpmkitError as exc:
                raise _page_error(exc) from None
            cancel = threading.Event()
            # a handful of previews: each is a PNG the browser fetches, which costs this CPU sampling time
            items = model.stream(request, preview_every=max(1, request.steps // 5), cancel=cancel)
            try:
                while (item := await anyio.to_thread.run_sync(next, items, _DONE)) is not _DONE:
                    if item is None:  # a heartbeat: nothing new to show
                        continue
                    if isinstance(item, Preview):
                        progress((item.step, item.num_steps), desc="sampling", unit="steps")
                        yield item.grid, f"step {item.step} of {item.num_steps}…", gr.skip(), gr.skip(), gr.skip()
                    else:
                        last = len(item.frames) - 1
                        yield (item.grid, item.summary, str(item.gif), item.frames,
                               gr.update(maximum=last, value=last))
            finally:
                cancel.set()
                threading.Thread(target=_close_when_idle, args=(items,), daemon=True).start()  # off the event loop

        def show_frame(all_frames: list, i: float):
            return all_frames[min(max(int(i), 0), len(all_frames) - 1)] if all_frames else None

        def explain(index_, t_, seed_):
            try:
                e = model.explain(index_, t_, seed_)
            except DdpmkitError as exc:
                raise _page_error(exc) from None
            return e.text, e.x0, e.noise, e.x_t, e.x0_hat, e.eps_hat

        # cheap UI updates skip the queue, so they never wait behind someone's sampling
        sampler.change(on_sampler, sampler, [steps, eta], queue=False, api_name=False)
        event = generate.click(run, [sampler, steps, eta, seed, num, label, guidance],
                               [grid, timing, animation, frames, frame], concurrency_limit=1,
                               api_name="generate")
        stop.click(None, cancels=[event])
        frame.change(show_frame, [frames, frame], frame_image, queue=False, api_name=False)
        learn_inputs = [index, t_slider, noise_seed]
        for control in learn_inputs:
            control.change(explain, learn_inputs, [explanation, *shown], api_name=False)
        app.load(explain, learn_inputs, [explanation, *shown], api_name="explain")
    return app


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
