"""`ddpmkit demo`: the app's functions directly, the server over HTTP with gradio_client, and the page in headless
Chromium (Debian's chromium + chromium-driver with Selenium; .ci/run installs them)."""

from __future__ import annotations

import io
import math
import shutil
import socket
import threading
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import torch
from conftest import IN_CI
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.demo import DemoModel, Preview
from ddpmkit.demo.core import ALL_CLASSES, FAST_SAMPLER, MAX_IMAGES, Cancelled, schedule_figure
from ddpmkit.errors import DdpmkitError
from ddpmkit.pipeline import Pipeline
from ddpmkit.sampling import SAMPLER_REGISTRY
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.viz import grid_image

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

TINY = ["--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu", "--steps", "4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    assert main(["train", *TINY, "--out", str(root / "plain")]) == 0
    assert main(["train", *TINY, "--out", str(root / "cond"), "--set", "model.class_conditional=true"]) == 0
    return root


def _randomise(model: torch.nn.Module) -> None:
    """A 4-step run is close to its zero-initialised output layer: random weights make every check bite."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


@pytest.fixture(scope="module")
def plain(runs) -> DemoModel:
    model = DemoModel(Pipeline.from_run(runs / "plain", device="cpu", precision="fp32"))
    _randomise(model.pipe.model)
    return model


@pytest.fixture(scope="module")
def cond(runs) -> DemoModel:
    model = DemoModel(Pipeline.from_run(runs / "cond", device="cpu", precision="fp32"))
    _randomise(model.pipe.model)
    return model


# ----- requests from the UI ----------------------------------------------------------------------------------


def test_defaults_and_what_the_run_offers(plain, cond):
    assert plain.class_names == [] and cond.class_names == [str(i) for i in range(10)]
    assert "unconditional" in plain.title and "class-conditional (10 classes)" in cond.title
    T = plain.num_steps
    assert plain.default_steps("dpm++2m") == 20  # the sampler's own default
    assert plain.default_steps("ddim") == 10  # the run's sampler: the tiny preset's grids are DDIM-10
    assert plain.default_steps("ddpm") == T
    request = plain.check("dpm++2m", 20, 0, 7, 16, "3", 5.0)
    assert request.labels is None and request.guidance is None  # an unconditional run ignores hidden controls
    assert (request.sampler, request.steps, request.seed, request.num) == ("dpm++2m", 20, 7, 16)
    assert cond.check("ddim", 10, 0.5, 0, 12, ALL_CLASSES, 2).labels == tuple(i % 10 for i in range(12))
    assert cond.check("ddim", 10, 0.5, 0, 3, "7", 2).labels == (7, 7, 7)
    assert cond.check("ddim", 10, 0.0, 0, 3.0, "7", 2).num == 3  # sliders send floats


@pytest.mark.parametrize(("values", "message"), [
    (("euler", 10, 0, 0, 4), "Sampler: unknown sampler"),
    (("ddim", 0, 0, 0, 4), "Steps: must be a whole number from 1 to 100, got 0"),
    (("ddim", 10_000, 0, 0, 4), "Steps: must be a whole number from 1 to 100"),
    (("ddim", 10, -0.5, 0, 4), "η: must be between 0 and 1, got -0.5"),
    (("ddim", 10, 2, 0, 4), "η: must be between 0 and 1, got 2"),
    (("ddim", 10, float("nan"), 0, 4), "η: must be a finite number"),
    (("ddim", 10, 0, -1, 4), "Seed: must be a whole number"),
    (("ddim", 10, 0, 1.5, 4), "Seed: must be a whole number"),
    (("ddim", 10, 0, 0, 0), "Images: must be a whole number from 1 to 64"),
    (("ddim", 10, 0, 0, MAX_IMAGES + 1), "Images: must be a whole number from 1 to 64"),
    (("ddim", 10, 0, 0, "many"), "Images: must be a number"),
    (("ddim", 10, 0, 0, None), "Images: must be a number"),
    (("ddim", 10, 0, 0, 4, "eleven", 2), "Class: unknown class 'eleven'"),
    (("ddim", 10, 0, 0, 4, "1", 25), "Guidance: must be between 0 and 20, got 25"),
    (("ddim", 10, 0, 0, 4, "1", -1), "Guidance: must be between 0 and 20"),
])
def test_out_of_range_values_are_refused_with_a_message_naming_the_control(cond, values, message):
    with pytest.raises(DdpmkitError) as refused:
        cond.check(*values)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


# ----- Generate ----------------------------------------------------------------------------------------------


def test_generate_is_the_pipelines_sampling_with_frames_timing_and_model_evaluations(plain):
    request = plain.check("ddim", 6, 0.0, 3, 5)
    result = plain.generate(request)
    expected = plain.pipe.generate(5, sampler="ddim", steps=6, seed=3)
    assert np.array_equal(np.asarray(result.grid), np.asarray(grid_image(expected, nrow=3, scale=plain._scale())))
    assert result.nfe == 6 and result.seconds > 0
    assert len(result.frames) == 7  # x_t after each of the 6 steps, then the result
    assert np.array_equal(np.asarray(result.frames[-1]), np.asarray(result.grid))
    assert not np.array_equal(np.asarray(result.frames[0]), np.asarray(result.grid))
    with Image.open(result.gif) as gif:
        assert gif.n_frames >= 2 and gif.size == result.grid.size
    assert "5 images in" in result.summary and "6 model evaluations" in result.summary
    assert "unconditional" in result.summary and result.images.shape == (5, *expected.shape[1:])
    assert np.array_equal(result.images, expected)


def test_the_summary_says_which_class(cond):
    def summary(label, guidance=2.0, num=3):
        return cond.generate(cond.check("ddim", 2, 0, 0, num, label, guidance)).summary

    assert " · class 7 · " in summary("7")
    assert f" · {ALL_CLASSES} · " in summary(ALL_CLASSES, num=12)
    assert " · unconditional · " in summary("7", guidance=0.0)  # w = 0 is the null label


def test_a_result_shows_its_own_frames(plain):
    """The "x_t at that step" image comes from the result it belongs to, whatever the step count."""
    a = plain.generate(plain.check("ddim", 3, 0, 1, 4))
    b = plain.generate(plain.check("ddim", 3, 0, 2, 4))
    assert np.array_equal(np.asarray(a.frame(1)), np.asarray(a.frames[1]))
    assert not np.array_equal(np.asarray(a.frame(1)), np.asarray(b.frame(1)))
    assert a.frame(99) is a.frames[-1] and a.frame(-5) is a.frames[0]


def test_a_guided_step_is_one_batched_model_evaluation(cond):
    counted = []
    hook = cond.pipe.model.register_forward_hook(lambda m, args, out: counted.append(args[0].shape[0]))
    try:
        result = cond.generate(cond.check("dpm++2m", 4, 0, 0, 3, "2", 3.0))
    finally:
        hook.remove()
    assert result.nfe == 4 and counted == [6, 6, 6, 6]  # conditional and unconditional halves in one batch
    plain_guided = cond.pipe.generate(3, sampler="dpm++2m", steps=4, seed=0, labels=[2, 2, 2], guidance=3.0)
    assert np.array_equal(np.asarray(result.grid), np.asarray(grid_image(plain_guided, nrow=2, scale=cond._scale())))


def test_stream_previews_steps_then_gives_the_result(plain):
    request = plain.check("dpm++2m", 5, 0, 1, 4)
    items = [item for item in plain.stream(request, preview_seconds=0, update_seconds=0)
             if item is not None]  # None: a heartbeat, nothing new
    previews, result = items[:-1], items[-1]
    steps = [p.step for p in previews]  # updates that pile up while the consumer is busy are merged
    assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(set(steps))
    assert all(isinstance(p, Preview) and p.num_steps == 5 and p.grid is not None for p in previews)
    assert np.array_equal(np.asarray(result.grid), np.asarray(plain.generate(request).grid))
    assert not plain.lock.locked()


def test_progress_starts_at_the_first_step_with_a_sound_estimate(plain):
    """A long run (DDPM over all T steps) reports from step 1, with a picture, and its time left is the pace of
    the steps so far times the steps to go (not Gradio's average of earlier requests)."""
    pace = 0.02
    hook = plain.pipe.model.register_forward_hook(lambda *_: time.sleep(pace))
    try:
        stream = plain.stream(plain.check("ddpm", plain.num_steps, 0, 0, 2), preview_seconds=1000,
                              update_seconds=0, heartbeat=30)
        first = next(stream)
        later = [next(stream) for _ in range(5)]
        stream.close()
    finally:
        hook.remove()
    assert isinstance(first, Preview) and first.step == 1 and first.grid is not None
    assert all(isinstance(p, Preview) and p.grid is None for p in later)  # pictures are sparse, progress is not
    p = later[-1]
    assert p.step <= 10
    expected = pace * (p.num_steps - p.step)
    assert 0.8 * expected < p.remaining < 4 * expected, (p, expected)


def test_the_estimate_is_the_pace_after_the_first_step():
    p = Preview(step=11, num_steps=1000, grid=None, seconds=6.0, first_seconds=1.0)  # step 1 carried a warm-up
    assert p.remaining == pytest.approx(0.5 * 989)
    assert p.text == "step 11 of 1000 · 6.0 s so far · about 8 min 14 s left"
    assert Preview(step=1, num_steps=100, grid=None, seconds=2.0, first_seconds=2.0).remaining == pytest.approx(198)


def test_closing_the_stream_cancels_the_sampling_within_a_step(plain):
    calls = []
    hook = plain.pipe.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        stream = plain.stream(plain.check("ddpm", plain.num_steps, 0, 0, 4), heartbeat=60)
        first = next(stream)
        stream.close()  # what Gradio does on Stop
    finally:
        hook.remove()
    assert isinstance(first, Preview) and first.step == 1
    assert len(calls) < plain.num_steps // 2  # stopped early (the loop checks at every step), not after all T
    assert not plain.lock.locked()  # the model is free for the next request
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        plain.generate(plain.check("ddim", 5, 0, 0, 2), cancel=cancel)


def test_heartbeats_let_a_server_stop_between_sparse_previews(plain):
    calls = []
    hook = plain.pipe.model.register_forward_hook(lambda *_: (calls.append(1), time.sleep(0.05)))
    try:
        stream = plain.stream(plain.check("ddpm", plain.num_steps, 0, 0, 4), preview_seconds=1000,
                              update_seconds=1000, heartbeat=0.01)
        assert next(stream) is None  # no preview for 1000 steps, but an item to stop at
        stream.close()
    finally:
        hook.remove()
    assert len(calls) < plain.num_steps // 2 and not plain.lock.locked()


def test_sampling_errors_reach_the_consumer(plain, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(plain.pipe, "generate", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(plain.stream(plain.check("ddim", 2, 0, 0, 2)))
    assert not plain.lock.locked()


# ----- Learn -------------------------------------------------------------------------------------------------


def test_explain_is_the_closed_form_forward_process_and_the_models_prediction(cond):
    e = cond.explain(5, 60, 2)
    x0, noise, x_t, x0_hat, eps_hat, t = (e.tensors[k] for k in ("x0", "noise", "x_t", "x0_hat", "eps_hat", "t"))
    data = cond.data()
    assert torch.equal(x0, torch.from_numpy(data.images[5:6]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(noise, torch.randn(x0.shape, generator=torch.Generator().manual_seed(2)))
    ac = float(cond.pipe.diffusion.schedule.alphas_cumprod[60])
    torch.testing.assert_close(x_t, math.sqrt(ac) * x0 + math.sqrt(1 - ac) * noise)
    with torch.no_grad():
        out = cond.pipe.model(x_t, t, labels=torch.tensor([int(data.labels[5])]))
    torch.testing.assert_close(eps_hat, out)  # an ε-prediction run: ε̂ is the network's output
    torch.testing.assert_close(x0_hat, (x_t - math.sqrt(1 - ac) * out) / math.sqrt(ac))
    assert f"ᾱ_t = {ac:.4f}" in e.text
    assert e.x_t.size == e.x0.size and e.x0.size[0] >= 192
    with pytest.raises(DdpmkitError, match="^t: must be a whole number from 0 to 99"):
        cond.explain(5, 100)
    with pytest.raises(DdpmkitError, match="^Training image #: must be a whole number"):
        cond.explain(len(data), 10)


def test_schedule_figure_draws_the_runs_schedule_beside_the_other_common_ones(plain):
    fig = plain.schedule_figure()
    axes = fig.get_axes()
    assert len(axes) == 3 and all(len(ax.get_lines()) == 3 for ax in axes)
    schedule = plain.pipe.diffusion.schedule
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), schedule.betas.numpy())
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), schedule.alphas_cumprod.numpy())
    labels = [line.get_label() for line in axes[1].get_lines()]
    assert labels == ["this run (cosine)", "linear", "sigmoid"]  # no second cosine hidden under the run's
    assert [text.get_text() for text in axes[1].get_legend().get_texts()] == labels
    other = schedule_figure(NoiseSchedule.from_name("linear", 50, beta_end=0.05))
    assert [line.get_label() for line in other.get_axes()[1].get_lines()] == [
        "this run (linear)", "linear", "cosine", "sigmoid"]  # a linear schedule unlike the common one: both shown


# ----- the command -------------------------------------------------------------------------------------------


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_without_gradio_the_command_says_how_to_install_it(runs, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    code, out, err = _cli(["demo", str(runs / "plain"), "--port", str(_free_port())])
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["ddpmkit: error: the demo needs Gradio, which is not installed: "
                                        "pip install 'ddpmkit[demo]'"]


def test_a_port_in_use_is_a_one_line_error(runs):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = _cli(["demo", str(runs / "plain"), "--port", str(port)])
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"cannot serve on 127.0.0.1:{port}" in err and "pass another --port" in err


def test_demo_help_works():
    code, out, _ = _cli(["demo", "--help"])
    assert code == 0 and "--share" in out and "127.0.0.1" in out
    flat = " ".join(out.split())
    assert "port to serve on (default 7860)" in flat
    assert "where the model runs: auto" in flat and "the model's arithmetic: auto" in flat


# ----- the server and the page -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """The app for the conditional run, served on a free localhost port for this module's tests."""
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo-test]')")
    from ddpmkit.demo.app import launch

    model = DemoModel.from_run(runs / "cond", device="cpu", precision="fp32")
    app, url = launch(model, port=_free_port(), block=False)
    served.model = model
    yield url
    app.close()


class served:  # noqa: N801 - the served DemoModel, for tests that watch the server side
    model: DemoModel


def test_the_server_answers_generate_and_explain_over_http(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    grid, summary, gif, *_ = client.predict("ddim", 4, 0.0, 1, 6, "3", 2.0, api_name="/generate")
    assert "6 images in" in summary and "4 model evaluations" in summary and "guidance 2" in summary
    assert " · class 3 · " in summary
    with Image.open(grid) as image:
        assert image.size == grid_image(np.zeros((6, 16, 16, 1), np.uint8), nrow=3, scale=6).size
    with Image.open(gif) as animation:
        assert animation.n_frames >= 2
    text, *pictures = client.predict(3, 50, 0, api_name="/explain")
    assert text.startswith("t = 50: ᾱ_t = ") and len(pictures) == 5


def test_concurrent_users_queue_and_all_get_their_images(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    jobs = [client.submit("dpm++2m", 5, 0.0, seed, 4, ALL_CLASSES, 1.0, api_name="/generate") for seed in range(4)]
    summaries = [job.result(timeout=120)[1] for job in jobs]
    assert [s.endswith(f"seed {seed}") for seed, s in enumerate(summaries)] == [True] * 4


def test_out_of_range_values_from_the_page_are_a_message_not_a_traceback(server, capfd):
    from gradio_client import Client

    client = Client(server, verbose=False)
    capfd.readouterr()
    # the sliders' own bounds (Gradio's check, renamed) and ours (a class the run does not have) reach the page
    with pytest.raises(Exception, match="Guidance w: must be between 0 and 20, got 50"):
        client.predict("ddim", 4, 0.0, 1, 6, "3", 50.0, api_name="/generate")
    with pytest.raises(Exception, match="Class: unknown class 'eleven'"):
        client.predict("ddim", 4, 0.0, 1, 6, "eleven", 2.0, api_name="/generate")
    summary = client.predict("ddim", 2, 0.0, 1, 2, "3", 2.0, api_name="/generate")[1]
    assert "2 images in" in summary  # and the server still serves
    console = capfd.readouterr().err
    assert "Traceback" not in console  # an ordinary validation error is one line on the console, not a page
    assert "ddpmkit demo: Guidance w: must be between 0 and 20, got 50\n" in console
    assert "ddpmkit demo: Class: unknown class 'eleven'" in console


def test_the_frame_image_is_the_new_requests_even_at_the_same_step_count(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    first = client.predict("ddim", 3, 0.0, 1, 4, "3", 2.0, api_name="/generate")
    second = client.predict("ddim", 3, 0.0, 2, 4, "3", 2.0, api_name="/generate")
    with Image.open(first[-1]) as a, Image.open(second[-1]) as b, Image.open(second[0]) as grid:
        assert not np.array_equal(np.asarray(a), np.asarray(b))  # not the previous request's digits
        assert np.array_equal(np.asarray(b), np.asarray(grid))  # the last step: the result itself


def test_stop_cancels_a_running_request_and_frees_the_model(server):
    from gradio_client import Client

    calls = []
    hook = served.model.pipe.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        client = Client(server, verbose=False)
        job = client.submit("ddpm", 100, 0.0, 0, 64, ALL_CLASSES, 1.0, api_name="/generate")
        deadline = time.perf_counter() + 60
        while len(calls) < 3 and time.perf_counter() < deadline:
            time.sleep(0.02)
        assert len(calls) >= 3, "the request never started"
        job.cancel()
        time.sleep(1.0)
        stopped_at = len(calls)
        time.sleep(1.0)
        assert len(calls) == stopped_at < 100  # no model evaluation after Stop, and far fewer than T
    finally:
        hook.remove()
    assert not served.model.lock.locked()
    summary = Client(server, verbose=False).predict("ddim", 2, 0.0, 1, 2, "3", 2.0, api_name="/generate")[1]
    assert "2 images in" in summary


def _chrome():
    """Headless Chromium through Selenium: skipped (outside CI) or failed (in CI) when it is not installed."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip install -e '.[demo-test]')")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(message + " — .ci/run should have installed it")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1100"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def test_in_a_browser_generate_shows_images_and_the_time(server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _chrome()
    try:
        browser.get(server)
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "generate").is_enabled())
        assert "class-conditional (10 classes)" in browser.find_element(By.TAG_NAME, "body").text
        start = time.perf_counter()
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 120).until(lambda b: "model evaluations" in b.find_element(By.ID, "timing").text)
        timing = browser.find_element(By.ID, "timing").text
        default_nfe = SAMPLER_REGISTRY[FAST_SAMPLER].steps  # the page opens on the fast sampler at its default
        assert "16 images in" in timing and f"{default_nfe} model evaluations" in timing, timing
        images = browser.find_elements(By.CSS_SELECTOR, "#grid img")
        assert images and images[0].get_attribute("naturalWidth") not in (None, "0")
        assert time.perf_counter() - start < 120
    finally:
        browser.quit()


def _open_edit_tab(browser, server: str, sub_tab: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "generate").is_enabled())
    for name in ("Edit", sub_tab):
        tab = next(e for e in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if e.text.strip() == name)
        tab.click()
    WebDriverWait(browser, 30).until(lambda b: any(c.is_displayed() for c in b.find_elements(
        By.CSS_SELECTOR, f"#{'sketch' if sub_tab.startswith('Sketch') else 'mask-editor'} canvas")))


def _draw(browser, elem_id: str) -> None:
    """Pick the editor's brush and draw two strokes (a 7) on its canvas with the mouse."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.find_element(By.CSS_SELECTOR, f"#{elem_id} button[aria-label='Brush']").click()
    canvas = next(c for c in browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} canvas") if c.is_displayed())
    strokes = ActionChains(browser).move_to_element_with_offset(canvas, -60, -70).click_and_hold()
    for dx, dy in ((40, 0), (40, 0), (30, 0), (-20, 50), (-20, 50), (-15, 40)):
        strokes = strokes.move_by_offset(dx, dy)
    strokes.release().perform()


def _wait_for_result(browser, timing_id: str, image_id: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 120).until(lambda b: "model evaluations" in b.find_element(By.ID, timing_id).text)
    images = browser.find_elements(By.CSS_SELECTOR, f"#{image_id} img")
    assert images and images[0].get_attribute("naturalWidth") not in (None, "0")
    return browser.find_element(By.ID, timing_id).text


def test_in_a_browser_a_sketch_becomes_samples(server):
    from selenium.webdriver.common.by import By

    browser = _chrome()
    try:
        _open_edit_tab(browser, server, "Sketch → samples")
        _draw(browser, "sketch")
        browser.find_element(By.ID, "img2img").click()
        timing = _wait_for_result(browser, "sketch-timing", "sketch-result")
        assert "img2img at strength 0.6: 4 images in" in timing and "unconditional" in timing, timing
        shown = browser.find_elements(By.CSS_SELECTOR, "#sketch-input img")  # the input beside the result
        assert shown and shown[0].get_attribute("naturalWidth") not in (None, "0")
    finally:
        browser.quit()


def test_in_a_browser_a_painted_mask_is_inpainted(server):
    from selenium.webdriver.common.by import By

    browser = _chrome()
    try:
        _open_edit_tab(browser, server, "Inpaint")
        browser.find_element(By.ID, "load-source").click()  # a fresh sample, the default source
        time.sleep(2.0)  # the sample drawn as the editor's background
        _draw(browser, "mask-editor")
        browser.find_element(By.ID, "inpaint").click()
        timing = _wait_for_result(browser, "inpaint-timing", "inpaint-result")
        assert "inpainting (plain replacement): 4 images in" in timing, timing
    finally:
        browser.quit()
