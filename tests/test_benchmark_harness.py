"""The recipe harness the benchmarks share (benchmarks/harness.py), run for real at toy size: the recipe table
(what CI runs of it), time-to-quality and the recipe search, each writing its JSON with every row scored."""

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
    require_cached(classifier_is_cached() and Path(cached_path("mnist")).exists(), "MNIST and its classifier")
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_recipe_table_tiny(tmp_path):
    """Every recipe of the table trains, is sampled and scored, and gets a finite bound in bits/dim."""
    out = tmp_path / "table.json"
    stdout = _run("recipe_table.py", "--preset", "tiny", "--steps", "3", "--num", "16", "--no-inception",
                  "--nll-num", "4", "--nll-steps", "4", "--work", str(tmp_path / "w"), "--out", str(out), cwd=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    from recipe_table import RECIPES
    assert [r["recipe"] for r in rows] == list(RECIPES)
    for r in rows:
        assert r["step"] == 3 and r["num"] == 16 and r["nll_num"] == 4 and r["nll_terms"] == 5
        assert math.isfinite(r["bits_per_dim"]) and r["bits_per_dim"] > 0 and math.isfinite(r["cfid"])
        assert 0 <= r["confident"] <= 1
    assert "| learned variance |" in stdout
    # the one-factor recipes really differ from the preset where the tiny preset differs from them
    by_name = {r["recipe"]: r for r in rows}
    assert by_name["linear schedule"]["bits_per_dim"] != by_name["preset"]["bits_per_dim"]


def test_time_to_quality_smoke(tmp_path):
    """Both recipes train for equal minutes (steps from the measured step rates) and every snapshot is scored."""
    out, plot = tmp_path / "ttq.json", tmp_path / "ttq.png"
    _run("time_to_quality.py", "--steps", "3", "--num", "12", "--no-inception", "--work", str(tmp_path / "w"),
         "--out", str(out), "--plot", str(plot), cwd=tmp_path)
    result = json.loads(out.read_text())
    rows = result["rows"]
    ours = [r for r in rows if r["recipe"] == "ddpmkit"]
    theirs = [r for r in rows if r["recipe"] == "diffusers"]
    assert [r["step"] for r in ours] == [1, 2, 3] and theirs
    rates = result["cpu_rates_steps_per_s"]
    assert theirs[-1]["step"] == max(1, round(3 * rates["diffusers"] / rates["ddpmkit"]))
    assert all(r["train_seconds"] > 0 and math.isfinite(r["fid"]) for r in rows)
    # each recipe with its own sampler: ours as the preset recommends (DDPM-50), theirs DDIM-50 as their pipeline;
    # our last snapshot with theirs too, so one row compares the two trainings with the same sampler
    assert {r["sampler"] for r in ours} == {"ddpm-50"} and {r["sampler"] for r in theirs} == {"ddim-50"}
    same_sampler = result["ours_last_snapshot_with_diffusers_sampler"]
    assert [(r["step"], r["sampler"]) for r in same_sampler] == [(3, "ddim-50")]
    assert plot.stat().st_size > 10_000
    # --resume (after a cut-off run) reuses the measured rates and both finished trainings: same steps and seconds
    again = tmp_path / "again.json"
    stdout = _run("time_to_quality.py", "--steps", "3", "--num", "12", "--no-inception", "--work", str(tmp_path / "w"),
                  "--out", str(again), "--plot", str(plot), "--resume", cwd=tmp_path)
    assert stdout.count("reusing the finished training") == 2
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


def test_recipe_search_smoke(tmp_path):
    """One candidate: the EMA snapshot at half and end, and every extra EMA scored at the end."""
    work = tmp_path / "w"
    _run("recipe_search.py", "--only", "edm", "--steps", "4", "--num", "12", "--work", str(work), cwd=tmp_path)
    scores = json.loads((work / "edm" / "score.json").read_text())["scores"]
    from recipe_search import EXTRA_EMAS
    assert [(s["step"], s["weights"]) for s in scores] == [(2, "ema")] + [(4, w) for w in sorted(["ema", *EXTRA_EMAS])]
    config = json.loads((work / "edm" / "candidate.json").read_text())["config"]
    assert config["train"]["timestep_sampler"] == "log-normal" and config["diffusion"]["min_snr_gamma"] is None



def test_clip_denoised_smoke(tmp_path):
    """The clipping comparison samples a run both ways from the same noise and scores every setting."""
    from ddpmkit.cli import main

    require_cached(classifier_is_cached() and Path(cached_path("mnist")).exists(), "MNIST and its classifier")
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", "mnist", "--steps", "2", "--no-progress", "--device", "cpu",
                 "--out", str(run)]) == 0
    out = tmp_path / "clip.json"
    stdout = _run("clip_denoised.py", str(run), "--num", "16", "--ref-num", "100", "--out", str(out), "--configs",
                  "ddim:trailing:5:clip", "ddim:trailing:5:noclip", "ddim:trailing:4+0:clip", cwd=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["ddim:trailing:5:clip", "ddim:trailing:5:noclip", "ddim:trailing:4+0:clip"]
    for r in rows:
        assert r["num"] == 16 and math.isfinite(r["cfid"])
        assert 0 <= r["zero"] + r["1-2"] + r["3-10"] + r["11-40"] <= 1
    assert rows[0]["cfid"] != rows[1]["cfid"]  # clipping changed the images of a barely trained model
    assert "wrote" in stdout


def test_few_step_table_merges_comparable_sweeps_and_refuses_others(tmp_path):
    """Two sweeps of one run merge into one table with each FID's ratio to DDIM-50; sweeps at different N don't."""
    def row(sampler, nfe, fid, num=500):
        return {"sampler": sampler, "steps": nfe, "nfe": nfe, "seconds": 1.0, "images_per_s": 1.0, "num": num,
                "seed": 0, "ref": "mnist:test", "ref_n": 2000, "extractor": "inception", "fid": fid}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps([row("ddim", 50, 40.0), row("ddim", 10, 60.0)]))
    b.write_text(json.dumps([row("unipc", 10, 42.0)]))
    c.write_text(json.dumps([row("unipc", 10, 42.0, num=200)]))
    out = tmp_path / "merged.json"
    done = subprocess.run([sys.executable, str(BENCH / "few_step_table.py"), str(a), str(b), "--out", str(out),
                           "--plot", str(tmp_path / "p.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| 10 | 60.0 (+50%) | 42.0 (+5%) |" in done.stdout and "| 50 | 40.0 (+0%) |  |" in done.stdout
    assert [(r["sampler"], r["nfe"]) for r in json.loads(out.read_text())["rows"]] == [
        ("ddim", 10), ("ddim", 50), ("unipc", 10)]
    assert (tmp_path / "p.png").stat().st_size > 0
    refused = subprocess.run([sys.executable, str(BENCH / "few_step_table.py"), str(a), str(c), "--out",
                              str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "differ in num" in refused.stderr and not (tmp_path / "x.json").exists()


def test_low_noise_denoising_smoke(tmp_path):
    """Per-timestep background and digit errors of a (barely trained) run's one-step x̂_0, written as JSON."""
    from ddpmkit.cli import main

    require_cached(Path(cached_path("mnist")).exists(), "MNIST")
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", "mnist", "--steps", "2", "--no-progress", "--device", "cpu",
                 "--out", str(run)]) == 0
    out = tmp_path / "low.json"
    stdout = _run("low_noise_denoising.py", str(run), "--num", "8", "--out", str(out), cwd=tmp_path)
    rows = json.loads(out.read_text())["runs"][str(run)]["rows"]
    from low_noise_denoising import TIMESTEPS
    assert [r["t"] for r in rows] == [t for t in TIMESTEPS if t < 100]  # the tiny preset's T is 100
    sigmas = [r["sigma"] for r in rows]
    assert sigmas == sorted(sigmas) and 0 < sigmas[0] < 0.05
    for r in rows:  # errors of a clamped image against data in [-1, 1]: within [0, 2], and not all zero
        assert 0 < r["background_rms"] <= 2 and 0 < r["digit_rms"] <= 2
    assert "| t | σ_t |" in stdout


def test_default_batch_speed_smoke(tmp_path):
    """Every recipe trains the same images once per round, and the base recipe's wall ratio to itself is 1."""
    out = tmp_path / "speed.json"
    stdout = _run("default_batch_speed.py", "--images", "128", "--rounds", "1", "--work", str(tmp_path / "w"),
                  "--out", str(out), cwd=tmp_path)
    from default_batch_speed import BASE, RECIPES
    result = json.loads(out.read_text())
    assert [r["recipe"] for r in result["rows"]] == list(RECIPES)
    for r in result["rows"]:
        assert r["images"] == 128 and r["wall_seconds"] >= 0 and r["images_per_s"] > 0
    assert result[BASE]["wall_ratio_to_base_per_round"] == [1.0]
    assert "wrote" in stdout
