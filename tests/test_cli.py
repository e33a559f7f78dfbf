"""The command line end to end on tiny data, and every bad input: one line on stderr, exit status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import main
from ddpmkit.pipeline import Pipeline

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (pip install -e '.[test]')")

FAST = ["--preset", "tiny", "--data", "digits", "--no-progress", "--device", "cpu"]  # digits: fast, no cache needed


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *FAST, "--out", str(run), "--steps", "6", "--set", "train.sample_every=3"]) == 0
    return run


def run_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("ddpmkit: error: "), err
    return err


def test_train_writes_a_complete_run(trained_run):
    for name in ["config.yaml", "metrics.jsonl", "metrics.csv", "loss_curve.png", "loss_by_timestep.png",
                 "summary.json", "samples/step_0000003.png", "samples/step_0000006.png", "samples/latest.png"]:
        assert (trained_run / name).exists(), name
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 6]  # tiny preset logs every 5 steps, and at the end
    assert {"loss", "lr", "grad_norm", "images_per_s"} <= set(rows[0])
    assert any(k.startswith("loss_t") for k in rows[0])


def test_sample_writes_grid_individual_images_and_gif(trained_run, tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["sample", str(trained_run), "--num", "4", "--steps", "3", "--out", str(out), "--individual",
                 str(tmp_path / "each"), "--gif", "--device", "cpu", "--precision", "fp32",
                 "--npz", str(tmp_path / "images.npz")])
    assert code == 0
    assert "images/s" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "grid.gif").exists()
    singles = sorted((tmp_path / "each").glob("*.png"))
    assert len(singles) == 4
    pipe = Pipeline.from_run(trained_run, device="cpu", precision="fp32")
    again = pipe.generate(4, sampler="ddim", steps=3, seed=0)
    assert np.array_equal(np.asarray(Image.open(singles[2])), again[2, :, :, 0])
    with np.load(tmp_path / "images.npz", allow_pickle=False) as npz:  # the same images as one array
        assert npz["images"].dtype == np.uint8 and np.array_equal(npz["images"], again)
    gif = Image.open(tmp_path / "grid.gif")
    assert gif.n_frames >= 2


def test_resume_continues_the_run(trained_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    assert main(["train", "--resume", str(copy), "--steps", "8", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 8 and (copy / "checkpoints" / "step_0000008").is_dir()


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", *FAST, "--data", "imagenet"], "imagenet"),
    (["train", *FAST, "--set", "train.learning_rate=1"], "unknown config key 'train.learning_rate'"),
    (["train", *FAST, "--set", "train.lr=fast"], "train.lr expects a number"),
    (["train", *FAST, "--set", "train.steps=2.5"], "train.steps expects an integer"),
    (["train", *FAST, "--set", "lr"], "expects key=value"),
    (["train", *FAST, "--precision", "fp16", "--steps", "1"], "fp16 training needs a GPU"),
    (["train", *FAST, "--set", "model.dropout=abc"], "model.dropout expects a number"),
    (["train", *FAST, "--set", "model.channel_mults=5"], "model.channel_mults expects a list"),
    (["train", *FAST, "--set", "model.nonexistent=1"], "unknown config key 'model.nonexistent'"),
    (["train", *FAST, "--set", "train.log_every=0"], "train.log_every must be positive"),
    (["train", *FAST, "--set", "train.sample_sampler=euler"], "unknown sampler 'euler'"),
    (["train", *FAST, "--set", "model.learn_sigma=true"], "learn_sigma"),
])
def test_bad_train_input(capsys, tmp_path, argv, message):
    err = run_error(capsys, [*argv, "--out", str(tmp_path / "r")])
    assert message in err


def test_resume_without_checkpoint(capsys, tmp_path):
    err = run_error(capsys, ["train", *FAST, "--out", str(tmp_path / "empty"), "--resume"])
    assert "no checkpoint found" in err


def test_existing_run_is_not_overwritten(capsys, trained_run):
    err = run_error(capsys, ["train", *FAST, "--out", str(trained_run)])
    assert "already holds a trained run" in err and "--resume" in err


def test_incompatible_config_on_resume(capsys, trained_run, tmp_path):
    err = run_error(capsys, ["train", "--resume", str(trained_run), "--out", str(tmp_path / "x"),
                             "--set", "model.base_channels=16", "--no-progress"])
    assert "another model config" in err


def test_truncated_and_foreign_checkpoints(capsys, trained_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    newest = sorted((broken / "checkpoints").iterdir())[-1]
    weights = newest / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert "truncated or corrupt" in run_error(capsys, ["sample", str(broken), "--num", "1"])
    (newest / "state.json").write_text(json.dumps({"format": "someone-elses", "step": 1}))
    assert "not a ddpmkit checkpoint" in run_error(capsys, ["sample", str(newest), "--num", "1"])
    (newest / "state.json").write_text("{not json")
    assert "not a readable checkpoint" in run_error(capsys, ["sample", str(newest), "--num", "1"])


def test_bad_data_paths(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no image files" in run_error(capsys, ["train", *FAST, "--data", f"folder:{tmp_path / 'empty'}",
                                                  "--out", str(tmp_path / "r")])
    (tmp_path / "notcifar").mkdir()
    (tmp_path / "notcifar" / "readme.txt").write_text("hello")
    err = run_error(capsys, ["train", *FAST, "--data", f"cifar10:{tmp_path / 'notcifar'}",
                             "--out", str(tmp_path / "r2")])
    assert "batches.meta" in err


def test_resume_refuses_changed_settings(capsys, trained_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    for change, message in [("diffusion.prediction=x0", "other diffusion settings"),
                            ("train.batch_size=7", "train.batch_size was 32"),
                            ("train.seed=5", "train.seed was 0")]:
        assert message in run_error(capsys, ["train", "--resume", str(copy), "--steps", "8", "--set", change])


def test_resume_an_older_checkpoint_refuses_to_mix_timelines(capsys, trained_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    older = copy / "checkpoints" / "step_0000003"
    assert "newer than step 3" in run_error(capsys, ["train", "--resume", str(older), "--steps", "8"])
    # branching into another folder is fine, and a lone checkpoint brings its own config
    lone = tmp_path / "lone"
    shutil.copytree(older, lone)
    assert main(["train", "--resume", str(lone), "--out", str(tmp_path / "branch"), "--steps", "5",
                 "--no-progress"]) == 0
    assert (tmp_path / "branch" / "checkpoints" / "step_0000005").is_dir()


def test_resume_needs_every_training_file(capsys, trained_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (sorted((copy / "checkpoints").iterdir())[-1] / "optimizer.safetensors").unlink()
    assert "lacks optimizer.safetensors" in run_error(capsys, ["train", "--resume", str(copy), "--steps", "8"])
    (sorted((copy / "checkpoints").iterdir())[-1] / "state.json").write_text("[]")
    assert "not a ddpmkit checkpoint" in run_error(capsys, ["sample", str(copy), "--num", "1"])


def test_sample_bad_values(capsys, trained_run):
    assert "steps must be between" in run_error(capsys, ["sample", str(trained_run), "--steps", "0"])
    assert "batch-size" in run_error(capsys, ["sample", str(trained_run), "--batch-size", "0"])
    assert "eta" in run_error(capsys, ["sample", str(trained_run), "--eta", "2"])


def test_sample_bad_labels(capsys, trained_run):
    assert "unconditional" in run_error(capsys, ["sample", str(trained_run), "--labels", "1,2", "--num", "2"])
    assert "no checkpoint found" in run_error(capsys, ["sample", str(trained_run / "samples"), "--num", "1"])


def test_tiny_preset_trains_with_the_base_install_alone(tmp_path):
    """`ddpmkit train --preset tiny` must not need a test extra: scikit-learn is made unimportable."""
    import subprocess
    import sys

    from conftest import require_cached

    from ddpmkit.data.named import cached_path

    require_cached(cached_path("mnist"), "the mnist data set", "ddpmkit data fetch mnist")
    out = tmp_path / "tiny"
    code = ("import sys; sys.modules['sklearn'] = None; from ddpmkit.cli import main; "
            f"sys.exit(main(['train', '--preset', 'tiny', '--out', {str(out)!r}, '--no-progress', '--steps', '2', "
            "'--device', 'cpu']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mnist on cpu" in proc.stdout and (out / "checkpoints" / "step_0000002").is_dir()
