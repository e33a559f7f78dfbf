"""A run folder has one writer; what interrupted or failed writes leave behind; resumes that log and check as an
uninterrupted run would; cached files checked against the hash recorded when they were written."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.cli import main
from ddpmkit.errors import DdpmkitError
from ddpmkit.run import RunFolder
from ddpmkit.training import Trainer
from ddpmkit.training.metrics import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from test_training import tiny_config, tiny_data  # noqa: E402

TINY = ["--preset", "tiny", "--data", "digits", "--set", "data.image_size=16", "--no-progress", "--device", "cpu"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ----- one writer ----------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from ddpmkit.cli import main
    go = Path({go!r})
    Path(sys.argv[1]).write_text("ready")
    while not go.exists():  # both writers start together, once both are ready
        time.sleep(0.005)
    sys.argv = ["ddpmkit", "train"]
    sys.exit(main(["train", *{tiny!r}, "--out", {run!r}, "--steps", "24", "--set", "train.checkpoint_every=6",
                   "--set", "train.sample_every=24", "--set", "train.log_every=3"]))
""")


def test_two_writers_into_one_run_folder_one_is_refused_and_the_run_stays_whole(tmp_path):
    run, go = tmp_path / "run", tmp_path / "go"
    script = WRITER.format(go=str(go), tiny=TINY, run=str(run))
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, str(flag)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=child_env()) for flag in ready]
    deadline = time.time() + 120
    while not all(flag.exists() for flag in ready):  # both have imported torch and ddpmkit
        assert time.time() < deadline and all(proc.poll() is None for proc in procs), "a writer did not start"
        time.sleep(0.05)
    go.write_text("go")
    results = [(proc.wait(timeout=300), *proc.communicate()) for proc in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    _, _, err = next(r for r in results if r[0] == 2)
    winner = next(proc for proc, r in zip(procs, results) if r[0] == 0)
    assert len(err.strip().splitlines()) == 1, err
    assert f"{run} is being written by process {winner.pid} (ddpmkit train); wait for it or pass another --out" in err
    # the run is the winner's alone: every logged step once, its checkpoints, a config
    steps = [row["step"] for row in read_metrics(run / "metrics.jsonl") if "loss" in row]
    assert steps == list(range(3, 25, 3))
    assert [p.name for p in RunFolder(run).checkpoints()] == ["step_0000012", "step_0000018", "step_0000024"]
    _, state = load_checkpoint(RunFolder(run).latest_checkpoint())
    assert state["step"] == 24 and RunFolder(run).writer() is None


HOLDER = textwrap.dedent("""
    import sys, time
    from ddpmkit.run import RunFolder
    lock = RunFolder({run!r}).acquire_writer()
    print("locked", flush=True)
    time.sleep(300)
""")


def test_a_lock_left_by_a_killed_writer_does_not_block(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(run=str(run))], stdout=subprocess.PIPE, text=True,
                            env=child_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        message = RunFolder(run).writer()
        assert message is not None and f"being written by process {proc.pid} (" in message
        with pytest.raises(DdpmkitError, match=f"process {proc.pid}"):
            RunFolder(run).acquire_writer(wait=0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert str(proc.pid) in (run / ".lock").read_text()  # the dead writer's file is still there: it blocks nothing
    assert RunFolder(run).writer() is None
    Trainer(tiny_config(2, checkpoint_every=2), run, data=tiny_data(), progress=False).fit()
    assert RunFolder(run).latest_checkpoint().name == "step_0000002"


def test_a_trainer_holds_the_folder_until_fit_returns(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_config(2, checkpoint_every=2), run, data=tiny_data(), progress=False)
    with pytest.raises(DdpmkitError, match=r"is being written by process \d+"):
        Trainer(tiny_config(2, checkpoint_every=2), run, data=tiny_data(), progress=False)
    trainer.fit()
    assert RunFolder(run).writer() is None  # released: a resume (or another fit) may write now
    Trainer(tiny_config(4, checkpoint_every=2), run, resume=run, data=tiny_data(), progress=False).fit()
    assert RunFolder(run).latest_checkpoint().name == "step_0000004"


# ----- what failed and interrupted writes leave ----------------------------------------------------------------

def test_a_full_disk_while_saving_is_one_line_and_the_last_checkpoint_stays(tmp_path, monkeypatch, capsys):
    from ddpmkit import checkpoint

    real = checkpoint.save_file

    def save_file(tensors, path):
        if "step_0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    run = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(run), "--steps", "4", "--set", "train.checkpoint_every=2",
                 "--set", "train.sample_every=100"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"ddpmkit: error: cannot write checkpoint {run}/checkpoints/step_0000004 (No space left on "
                          "device); nothing was replaced and the previous checkpoints are intact"), err
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_0000002"]  # and no .tmp-* folder
    tensors, state = load_checkpoint(run / "checkpoints" / "step_0000002")
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in tensors["model"].values())
    assert RunFolder(run).writer() is None  # the failed writer let go of the folder


def test_a_full_disk_in_an_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    from ddpmkit import atomic

    target = tmp_path / "config.yaml"
    target.write_text("old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(DdpmkitError, match=r"cannot write .*config\.yaml \(No space left on device\); nothing was "
                                           "replaced") as caught:
        atomic.atomic_write_text(target, "new")
    assert "\n" not in str(caught.value)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_the_next_writer_cleans_what_a_killed_save_left(tmp_path):
    run = RunFolder(tmp_path / "run")
    Trainer(tiny_config(2, checkpoint_every=2), run.path, data=tiny_data(), progress=False).fit()
    leftovers = [run.checkpoints_dir / ".tmp-step_0000003-k1ll3d", run.checkpoints_dir / ".old-step_0000002-4242"]
    for folder in leftovers:  # a SIGKILL mid-save; a re-save of step 2 killed after its new copy was in place
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    (run.path / ".config.yaml.x1y2.tmp").write_text("half")  # an atomic write cut short
    orphan = run.checkpoints_dir / ".old-step_0000001-4242"  # the only copy of step 1: never removed
    orphan.mkdir()
    Trainer(tiny_config(4, checkpoint_every=2), run.path, resume=run.path, data=tiny_data(), progress=False).fit()
    hidden = sorted(p.name for p in run.checkpoints_dir.iterdir() if p.name.startswith("."))
    assert hidden == [orphan.name] and not (run.path / ".config.yaml.x1y2.tmp").exists()
    assert [p.name for p in run.checkpoints()] == ["step_0000002", "step_0000004"]


# ----- a resume logs as an uninterrupted run -------------------------------------------------------------------

def test_the_first_row_after_a_resume_covers_the_same_steps_as_an_uninterrupted_run(tmp_path):
    """Rows every 4 steps, a stop after step 3 (checkpoint there): the resumed run's row at step 4 averages steps
    1-4, as the uninterrupted run's does, and so every later row; the stop's own row at step 3 is extra."""
    data = tiny_data()
    config = tiny_config(8, log_every=4, checkpoint_every=3)
    config.override(["diffusion.variance=learned_range", "diffusion.num_steps=4"])  # the loss parts ride along too
    Trainer(config, tmp_path / "a", data=data, progress=False).fit()
    Trainer(config, tmp_path / "b", data=data, progress=False).fit(until=3)
    Trainer(config, tmp_path / "b", resume=tmp_path / "b", data=data, progress=False).fit()
    straight, cut = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("a", "b"))
    assert [r["step"] for r in straight] == [4, 8] and [r["step"] for r in cut] == [3, 4, 8]

    def shown(row):
        return {k: v for k, v in row.items() if k != "images_per_s"}

    assert [shown(r) for r in cut[1:]] == [shown(r) for r in straight]
    assert "loss_vlb" in cut[1] and any(k.startswith("loss_t") for k in cut[1])


# ----- resuming with other settings ----------------------------------------------------------------------------

def test_resuming_with_changed_settings_needs_allow_changes_and_says_so(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--steps", "2", "--set", "train.sample_every=2"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "3", "--set", "train.weight_decay=0.01",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.weight_decay 0.0 -> 0.01" in err and "--allow-changes" in err
    assert main(["train", "--resume", str(run), "--steps", "3", "--set", "train.weight_decay=0.01",
                 "--allow-changes", "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ddpmkit: note: resuming {run}/checkpoints/step_0000002 with train.steps 2 -> 3, "
                   "train.weight_decay 0.0 -> 0.01: the continuation is no longer the same run as an uninterrupted "
                   "one (config.yaml now holds the new settings)"]
    assert "weight_decay: 0.01" in (run / "config.yaml").read_text()
    # settings that change nothing that is trained need no flag, nor say anything
    assert main(["train", "--resume", str(run), "--set", "train.log_every=1", "--set", "train.keep_checkpoints=5",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


# ----- cached files and their recorded hashes --------------------------------------------------------------------

def test_cached_reference_statistics_are_checked_against_their_recorded_hash(tmp_path, monkeypatch):
    from ddpmkit.eval.reference import reference_path, reference_stats
    from ddpmkit.fetch import hash_record

    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path / "cache"))

    class Extractor:
        id, resize = "test-features", "none"

        def __call__(self, images, progress=False):
            return images.reshape(len(images), -1)[:, :4].astype(np.float32)

    def loader(spec, split, image_size):
        return tiny_data(16, 4)

    first = reference_stats("synthetic", Extractor(), num=16, loader=loader, progress=False)
    path = reference_path("synthetic", "train", Extractor(), 16, None)
    assert json.loads(hash_record(path).read_text())["file"] == path.name
    again = reference_stats("synthetic", Extractor(), num=16, loader=lambda *a, **k: pytest.fail("recomputed"))
    assert np.array_equal(again.mu, first.mu)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DdpmkitError, match=r"does not match the sha256 recorded when it was written .*delete it and "
                                           r"run the command again"):
        reference_stats("synthetic", Extractor(), num=16, loader=loader)
    path.unlink()  # as the message says: it is computed again, and recorded again
    reference_stats("synthetic", Extractor(), num=16, loader=loader, progress=False)
    reference_stats("synthetic", Extractor(), num=16, loader=lambda *a, **k: pytest.fail("recomputed"))


def test_a_converted_data_set_from_before_hashes_were_recorded_gets_its_record(tmp_path, monkeypatch):
    from ddpmkit.data.named import cached_path, read_npz, save_npz
    from ddpmkit.fetch import hash_record

    monkeypatch.setenv("DDPMKIT_CACHE", str(tmp_path))
    path = save_npz(cached_path("digits"), {"class_names": ["0"], "train": (np.zeros((2, 8, 8, 1), np.uint8),
                                                                           np.zeros(2, np.int64))})
    hash_record(path).unlink()
    assert read_npz(path)["train"][0].shape == (2, 8, 8, 1) and hash_record(path).is_file()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DdpmkitError, match=r"fetch again \(ddpmkit data fetch digits\)"):
        read_npz(path)
