"""How interactive `ddpmkit demo` is on this machine: the time of one Generate request, and a screenshot.

For a trained run, times the demo's own request path (``DemoModel.generate``: sampling, the per-step frames and
the GIF) for a 16-image grid with each sampler at the step counts the app offers, ``--repeats`` times each
(median and range), and the first Learn-tab request (which loads the data set). With ``--screenshot PNG`` it
then serves the app on a free localhost port, opens it in Debian's headless Chromium, presses Generate and
saves the page (the README's picture), then the Learn tab beside it (NAME_learn.png).

    python benchmarks/demo.py runs/mnist --screenshot docs/demo.png

Prints a table and writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SETTINGS = [("dpm++2m", 10), ("dpm++2m", 20), ("ddim", 20), ("ddim", 50)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def time_requests(run: Path, num: int, repeats: int) -> list[dict]:
    from ddpmkit.demo import DemoModel

    model = DemoModel.from_run(run, device="cpu", precision="fp32")
    model.generate(model.check("ddim", 2, 0, 0, num))  # warm-up: first-call allocations
    rows = []
    for sampler, steps in SETTINGS:
        seconds, nfe = [], 0
        for seed in range(repeats):
            start = time.perf_counter()
            result = model.generate(model.check(sampler, steps, 0.0, seed, num))
            seconds.append(time.perf_counter() - start)
            nfe = result.nfe
        rows.append({"request": f"generate {num} images", "sampler": sampler, "steps": steps, "nfe": nfe,
                     "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds)})
    for what, index in (("learn tab, first request (loads the data set)", 0), ("learn tab", 1)):
        start = time.perf_counter()
        model.explain(index, model.num_steps // 2)
        seconds = time.perf_counter() - start
        rows.append({"request": what, "sampler": "-", "steps": 1, "nfe": 1, "median_s": seconds, "min_s": seconds,
                     "max_s": seconds})
    return rows


def screenshot(run: Path, path: Path) -> float:
    """Serve the app, press Generate in headless Chromium, save the page; returns the seconds until the time shows."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from ddpmkit.demo import DemoModel
    from ddpmkit.demo.app import launch

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app, url = launch(DemoModel.from_run(run, device="cpu", precision="fp32"), port=port, block=False)
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1150", "--hide-scrollbars"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        browser.get(url)
        WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "generate").is_enabled())
        start = time.perf_counter()
        browser.find_element(By.ID, "generate").click()
        WebDriverWait(browser, 300).until(lambda b: "model evaluations" in b.find_element(By.ID, "timing").text)
        seconds = time.perf_counter() - start
        time.sleep(1.5)  # let the animation and the step slider render
        path.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(path))
        learn = [b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Learn"]
        learn[0].click()
        WebDriverWait(browser, 60).until(lambda b: "ᾱ_t" in b.find_element(By.ID, "explanation").text)
        time.sleep(1.5)
        browser.save_screenshot(str(path.with_name(f"{path.stem}_learn{path.suffix}")))
    finally:
        browser.quit()
        app.close()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a trained run folder (e.g. runs/mnist)")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="save a screenshot of the app after one Generate")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows = time_requests(args.run, args.num, args.repeats)
    print(f"ddpmkit demo on {cpu_name()} ({args.threads} threads, fp32), run {args.run}, "
          f"median of {args.repeats} requests:\n")
    print("| request | sampler | steps | NFE | median s | min s | max s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['request']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['median_s']:.2f} | "
              f"{r['min_s']:.2f} | {r['max_s']:.2f} |")
    report = {"cpu": cpu_name(), "threads": args.threads, "run": str(args.run), "repeats": args.repeats, "rows": rows}
    if args.screenshot:
        report["browser_generate_s"] = screenshot(args.run, args.screenshot)
        print(f"\nin Chromium: Generate pressed -> images and time shown in {report['browser_generate_s']:.2f} s; "
              f"screenshot {args.screenshot}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / 'demo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
