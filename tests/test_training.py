"""Trainer: exact resume, atomic checkpoints under SIGKILL, NaN handling, EMA, LR schedule."""

from __future__ import annotations

import contextlib
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
from ddpmkit.config import RunConfig
from ddpmkit.data import ImageArray
from ddpmkit.errors import DdpmkitError
from ddpmkit.run import RunFolder
from ddpmkit.training import EMA, Hook, HookContext, Trainer, lr_at


def list_checkpoints(run_dir):
    return RunFolder(run_dir).checkpoints()


def tiny_data(n: int = 40, size: int = 8, seed: int = 0) -> ImageArray:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)
    return ImageArray(images=images, labels=rng.integers(0, 3, n).astype(np.int64), class_names=["a", "b", "c"],
                      name="synthetic")


def tiny_config(steps: int, **train) -> RunConfig:
    config = RunConfig()
    config.override(["model.size=tiny", "model.dropout=0.1", "diffusion.num_steps=50", f"train.steps={steps}",
                     "train.batch_size=8", "train.precision=fp32", "train.warmup_steps=2", "train.ema_decay=0.9",
                     "train.log_every=1", "train.sample_every=1000", "train.tensorboard=false",
                     "train.num_samples=4", "train.sample_steps=2", "train.device=cpu"])
    config.override([f"train.{k}={v}" for k, v in train.items()])
    return config


@contextlib.contextmanager
def deterministic_kernels(device: torch.device):
    """On CUDA, ask for deterministic kernels (cuDNN, cuBLAS with CUBLAS_WORKSPACE_CONFIG set by conftest); ops
    that have none only warn. On the CPU every kernel used here is deterministic already."""
    if device.type != "cuda":
        yield
        return
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def max_gap(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.mark.parametrize("learned,log_normal", [(False, False), (True, False), (False, True)],
                         ids=["fixed-variance", "learned-variance-importance-t", "log-normal-t"])
def test_resume_is_bitwise_exact(tmp_path, learned, log_normal, device):
    """2N steps straight == N steps, a fresh process-like Trainer resuming, N more (data order, dropout, noise);
    with a learned variance, t importance-sampled from a loss history that warms up (T = 2) before the split;
    with log-normal t, EDM's noise levels drawn from the run's generator.

    On the CPU the two are bitwise equal. On CUDA some backward kernels add with atomics (nearest-upsampling's,
    the embedding's), so two straight runs can already differ in the last bits: there the resumed run must be
    as close to the straight one as a second straight run is (bitwise when the twins are)."""
    data, n = tiny_data(), 7  # 5 batches an epoch: the split falls mid-epoch and the run crosses epochs
    config = tiny_config(2 * n, checkpoint_every=n)
    config.override([f"train.device={device}"])
    if log_normal:
        config.override(["train.timestep_sampler=log-normal"])
    if learned:
        config.override(["diffusion.num_steps=2", "diffusion.variance=learned_range",
                         "train.timestep_sampler=loss-second-moment"])
    with deterministic_kernels(device):
        straight = Trainer(config, tmp_path / "a", data=data, progress=False)
        straight.fit()
        first = Trainer(config, tmp_path / "b", data=data, progress=False)
        first.fit(until=n)
        assert first.step == n and [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000007"]
        torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
        resumed = Trainer(config, tmp_path / "b", resume=tmp_path / "b", data=data, progress=False)
        assert resumed.step == n
        resumed.fit()
        twin = None
        if device.type != "cpu":
            twin = Trainer(config, tmp_path / "d", data=data, progress=False)
            twin.fit()
    assert next(straight.model.parameters()).device.type == device.type
    for attr in ("model", "ema"):
        ours, theirs = getattr(straight, attr).state_dict(), getattr(resumed, attr).state_dict()
        if twin is None:
            for name, tensor in ours.items():
                assert torch.equal(tensor, theirs[name]), f"{attr}.{name}"
        else:  # resuming adds nothing to the run-to-run spread of the device's kernels
            spread = max_gap(ours, getattr(twin, attr).state_dict())
            assert max_gap(ours, theirs) <= 4 * spread, (attr, max_gap(ours, theirs), spread)
    assert straight.loader.state_dict() == resumed.loader.state_dict()
    if learned:
        assert first.timestep_sampler.warmed_up  # importance sampling was on before the split
        assert straight.timestep_sampler.state_dict() == resumed.timestep_sampler.state_dict()
        assert straight.model.config.learn_sigma and straight.diffusion.learns_variance
    # and the weights did change: the test would be empty if nothing trained
    fresh = Trainer(config, tmp_path / "c", data=data, progress=False)
    assert not torch.equal(next(iter(fresh.model.state_dict().values())),
                           next(iter(straight.model.state_dict().values())))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_lowers_the_loss(tmp_path, precision, device):
    """On the device under test, in fp32 and under bf16 autocast (native on GPUs, emulated on most CPUs)."""
    data = tiny_data(64)
    data.images[:] = 0  # a single image: easy to learn
    data.images[:, 2:6, 2:6] = 255
    config = tiny_config(60, lr=3e-3, warmup_steps=5, precision=precision, device=device)
    trainer = Trainer(config, tmp_path / "run", data=data, progress=False)
    assert trainer.amp_dtype == (torch.bfloat16 if precision == "bf16" else None)
    assert next(trainer.model.parameters()).device.type == device.type
    result = trainer.fit()
    assert result.summary["final_loss"] < 0.7 * result.summary["initial_loss"]
    for name in ["loss_curve.png", "loss_by_timestep.png", "summary.json", "metrics.jsonl", "metrics.csv",
                 "config.yaml", "samples/latest.png"]:
        assert (tmp_path / "run" / name).exists(), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config(10, checkpoint_every=2)
    trainer = Trainer(config, tmp_path / "run", data=tiny_data(), progress=False)
    forward = trainer.model.forward

    def poisoned(x, t, labels=None):
        out = forward(x, t, labels)
        return out * float("nan") if trainer.step >= 5 else out

    trainer.model.forward = poisoned
    with pytest.raises(DdpmkitError, match=r"NaN/inf at step 6.*step_0000004"):
        trainer.fit()
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step_0000002", "step_0000004"]
    tensors, state = load_checkpoint(kept[-1])
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in tensors["model"].values())


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_training import tiny_config, tiny_data
    from ddpmkit import checkpoint
    from ddpmkit.training import Trainer

    real = checkpoint._save_tensors
    calls = []
    def slow_save(tensors, path):
        real(tensors, path)
        calls.append(path)
        if "step_0000003" in str(path.parent) and path.name == "model.safetensors":
            Path({marker!r}).write_text("saving")
            time.sleep(120)  # the parent kills us here, halfway through the checkpoint
    checkpoint._save_tensors = slow_save
    Trainer(tiny_config(6, checkpoint_every=1), Path({run!r}), data=tiny_data(), progress=False).fit()
""")


def test_sigkill_while_saving_leaves_the_last_checkpoint_usable(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "marker"
    script = CHILD.format(tests=str(Path(__file__).parent), marker=str(marker), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "the child never reached the save"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name for p in list_checkpoints(run)] == ["step_0000001", "step_0000002"]
    assert any(p.name.startswith(".tmp-step_0000003") for p in (run / "checkpoints").iterdir())
    _, state = load_checkpoint(RunFolder(run).latest_checkpoint())
    assert state["step"] == 2
    resumed = Trainer(tiny_config(6, checkpoint_every=1), run, resume=run, data=tiny_data(), progress=False)
    assert resumed.step == 2
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())  # the next writer cleans up
    resumed.fit()
    assert list_checkpoints(run)[-1].name == "step_0000006"


def test_truncated_checkpoint_is_refused_with_a_clear_error(tmp_path):
    trainer = Trainer(tiny_config(2, checkpoint_every=2), tmp_path / "run", data=tiny_data(), progress=False)
    trainer.fit()
    path = list_checkpoints(tmp_path / "run")[-1] / "ema.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DdpmkitError, match="truncated or corrupt"):
        load_checkpoint(RunFolder(tmp_path / "run").latest_checkpoint())


def test_ema_update_rule():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    # 0 → 0.1 → 0.19: θ_ema ← 0.9 θ_ema + 0.1 θ
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.19))
    warm = EMA(model, decay=0.9999, warmup=True)
    assert warm.decay_at(0) == pytest.approx(0.1) and warm.decay_at(90) == pytest.approx(91 / 100)
    assert warm.decay_at(10**7) == 0.9999


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert lr_at(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(110, 1.0, 10, 110, min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [lr_at(s, 1.0, 10, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_gradient_accumulation_counts_images_not_micro_batches(tmp_path):
    data = tiny_data(32)
    big = Trainer(tiny_config(1, batch_size=16), tmp_path / "a", data=data, progress=False)
    small = Trainer(tiny_config(1, batch_size=8, grad_accum=2), tmp_path / "b", data=data, progress=False)
    assert big.steps_per_epoch == small.steps_per_epoch == 2
    small.fit()
    assert small.loader.state_dict()["position"] == 2  # one optimizer step consumed two micro-batches


def test_tensorboard_receives_scalars_and_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(4, tensorboard=True, sample_every=4)
    Trainer(config, tmp_path / "run", data=tiny_data(), progress=False).fit()
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = events.Tags()
    assert {"loss", "lr", "grad_norm", "images_per_s"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    assert "samples" in tags["images"]


def test_fid_during_training_is_logged_with_its_n(tmp_path):
    from conftest import require_cached

    from ddpmkit.eval.classifier import classifier_is_cached
    from ddpmkit.training.metrics import read_metrics

    pytest.importorskip("sklearn")
    require_cached(classifier_is_cached(), "MNIST classifier weights", "ddpmkit eval fetch")
    config = tiny_config(4, fid_every=2, fid_num=8, fid_ref_num=20, fid_features="classifier")
    config.override(["data.name=digits", "data.image_size=8"])
    trainer = Trainer(config, tmp_path / "run", progress=False)
    trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "fid_classifier" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["fid_classifier_num"] == 8 and r["fid_classifier_ref_num"] == 20 for r in rows)
    # the logged value is the FID of the final EMA model's samples against the data's reference statistics
    from ddpmkit.eval import MnistClassifier
    from ddpmkit.eval.reference import reference_stats_with_fallback

    classifier = MnistClassifier()
    reference = reference_stats_with_fallback("digits", classifier, split="test", num=20, image_size=8,
                                              progress=False)
    images = trainer.sample_ema(8, seed=config.train.sample_seed + 1)
    assert rows[-1]["fid_classifier"] == pytest.approx(reference.fid(classifier(images, progress=False)), rel=1e-6)
    assert rows[0]["fid_classifier"] != rows[-1]["fid_classifier"]  # step 2's model was another one


def test_eta_is_printed_once_from_the_first_metric_row(tmp_path, capsys):
    """The ETA line: speed measured over the first logged steps, and the minutes that speed implies."""
    from ddpmkit.training.hooks import eta_message
    line = eta_message(20, 64.0, 1280, 64)  # 1 s/step, 1,280 steps left
    assert "64 images/s" in line and "1.00 s/step" in line and "about 21 min" in line and "1,280 steps" in line
    config = tiny_config(6)
    config.override(["train.log_every=2"])
    Trainer(config, tmp_path / "r", data=tiny_data(), progress=True).fit()
    err = capsys.readouterr()
    printed = [ln for ln in (err.out + err.err).splitlines() if ln.startswith("speed over the first")]
    assert len(printed) == 1 and "2 steps" in printed[0] and "4 steps" in printed[0]


def test_max_minutes_stops_saves_everything_and_resume_continues_exactly(tmp_path):
    """A command cut by train.max_minutes ends like a run: checkpoint, grid and metrics of the step it reached;
    --resume then continues the same schedule, bitwise equal to an uninterrupted run."""
    data = tiny_data()
    config = tiny_config(12, checkpoint_every=100, sample_every=100)
    straight = Trainer(config, tmp_path / "a", data=data, progress=False)
    straight.fit()
    assert not straight.stopped_by_time

    limited = tiny_config(12, checkpoint_every=100, sample_every=100, max_minutes=1e-9)  # up after one step
    cut = Trainer(limited, tmp_path / "b", data=data, progress=False)
    cut.fit()
    assert cut.stopped_by_time and cut.step == 1
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["step_0000001"]
    assert (tmp_path / "b" / "samples" / "latest.png").exists()
    assert (tmp_path / "b" / "metrics.jsonl").read_text().strip()

    limited.override(["train.max_minutes=null"])
    resumed = Trainer(limited, tmp_path / "b", resume=tmp_path / "b", data=data, progress=False)
    resumed.fit()
    assert resumed.step == 12 and not resumed.stopped_by_time
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_max_minutes_must_be_positive(tmp_path):
    with pytest.raises(DdpmkitError, match="max_minutes must be positive"):
        Trainer(tiny_config(2, max_minutes=0), tmp_path / "r", data=tiny_data(), progress=False)


# ----- the builder, the hooks' context, the end-of-run hooks, the loss's parts --------------------------------

def test_the_loader_yields_the_model_kwargs_the_model_takes(tmp_path):
    """Unconditional: {} (the loop passes nothing); class-conditional: {"labels": …} of the batch's images."""
    data = tiny_data()
    plain = Trainer(tiny_config(1), tmp_path / "a", data=data, progress=False)
    x, kwargs = plain.loader.batch(0, 0)
    assert kwargs == {} and x.shape == (8, 1, 8, 8)
    config = tiny_config(2)
    config.override(["model.class_conditional=true"])
    conditional = Trainer(config, tmp_path / "b", data=data, progress=False)
    x2, kwargs2 = conditional.loader.batch(0, 0)
    assert torch.equal(x, x2) and set(kwargs2) == {"labels"} and kwargs2["labels"].dtype == torch.int64
    order = conditional.loader.order(0)[:8].numpy()
    assert kwargs2["labels"].tolist() == data.labels[order].tolist()
    seen = []
    forward = conditional.model.forward

    def recording(x, t, labels=None):
        seen.append(labels)
        return forward(x, t, labels)

    conditional.model.forward = recording
    conditional.fit()
    assert len(seen) == 2 and all(labels is not None and labels.shape == (8,) for labels in seen)


class Recorder(Hook):
    """Records what a hook sees: the context (not the Trainer), each step's result, and the moments it is called."""

    at_stop = True

    def __init__(self, every):
        super().__init__(every)
        self.events = []
        self.contexts = set()

    def start(self, ctx):
        self.events.append(("start", ctx.step))

    def after_step(self, ctx, result):
        self.contexts.add(id(ctx))
        self.events.append(("step", ctx.step, result.loss, len(result.terms), tuple(result.terms[0].t.shape)))

    def __call__(self, ctx):
        assert isinstance(ctx, HookContext) and not isinstance(ctx, Trainer)
        assert ctx.config.train.steps == ctx.total_steps == 6 and ctx.run.path.name == "run"
        assert ctx.state.step == ctx.step and ctx.model is ctx.state.model and ctx.logger is not None
        self.events.append(("due", ctx.step))

    def saved(self, ctx, checkpoint):
        self.events.append(("saved", ctx.step, checkpoint.name))

    def end(self, ctx):
        self.events.append(("end", ctx.step))


def test_hooks_see_a_context_and_each_step_result(tmp_path):
    from ddpmkit.training.hooks import SaveCheckpoint

    hook = Recorder(2)
    config = tiny_config(6, grad_accum=2)
    trainer = Trainer(config, tmp_path / "run", data=tiny_data(), progress=False, hooks=[hook, SaveCheckpoint(3)])
    trainer.fit(until=3)
    steps = [e for e in hook.events if e[0] == "step"]
    assert [e[1] for e in steps] == [1, 2, 3]
    assert all(np.isfinite(e[2]) and e[3] == 2 and e[4] == (8,) for e in steps)  # two micro-batches of 8
    assert [e for e in hook.events if e[0] != "step"] == [
        ("start", 0), ("due", 2), ("due", 3), ("saved", 3, "step_0000003"), ("end", 3)]
    assert len(hook.contexts) == 1
    hook.events.clear()
    trainer.fit()
    assert [e for e in hook.events if e[0] != "step"] == [
        ("start", 3), ("due", 4), ("due", 6), ("saved", 6, "step_0000006"), ("end", 6)]


def test_end_of_run_hooks_write_the_plots_and_summary_after_an_early_stop_too(tmp_path):
    """With the default hooks replaced and fit(until=…) stopping early, the loss plots and summary.json are
    written when fit returns; summary.json is the result's summary."""
    import json

    from ddpmkit.training.hooks import LogMetrics

    run = RunFolder(tmp_path / "run")
    trainer = Trainer(tiny_config(8), run.path, data=tiny_data(), progress=False, hooks=[LogMetrics(1)])
    result = trainer.fit(until=4)
    assert result.step == 4 and not run.has_checkpoints()
    for path in (run.loss_curve, run.loss_by_timestep, run.summary_file):
        assert path.is_file(), path
    summary = json.loads(run.summary_file.read_text())
    assert summary == result.summary and summary["initial_loss"] > 0
    run.loss_curve.unlink()
    trainer.fit()
    assert run.loss_curve.is_file()


def test_the_rank_guard_keeps_other_processes_from_writing(tmp_path, monkeypatch):
    """On a process that is not rank 0 the run trains, but nothing is written: no folder, config, metrics,
    grid, checkpoint, plot or summary."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)  # the guard alone (no process group to join)
    trainer = Trainer(tiny_config(3, sample_every=1), tmp_path / "run", data=tiny_data(), progress=False)
    result = trainer.fit()
    assert result.step == 3 and result.summary == {} and not (tmp_path / "run").exists()


def test_a_learned_variance_logs_the_two_parts_of_the_loss(tmp_path):
    """The hybrid loss L_simple + λ·L_vlb: every metric row has loss_simple and loss_vlb beside the loss, and the
    loss is their combination; a fixed variance logs no parts."""
    from ddpmkit.training.metrics import read_metrics

    config = tiny_config(4, log_every=2)
    config.override(["diffusion.variance=learned_range", "diffusion.vlb_weight=0.01"])
    Trainer(config, tmp_path / "learned", data=tiny_data(), progress=False).fit()
    rows = [r for r in read_metrics(tmp_path / "learned" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert row["loss_simple"] > 0 and row["loss_vlb"] > 0
        assert row["loss"] == pytest.approx(row["loss_simple"] + 0.01 * row["loss_vlb"], rel=1e-5)
        assert 0.01 * row["loss_vlb"] > 1e-3 * row["loss"]  # the test would be empty if the vlb part were nothing
    Trainer(tiny_config(2), tmp_path / "fixed", data=tiny_data(), progress=False).fit()
    assert not any("loss_vlb" in r for r in read_metrics(tmp_path / "fixed" / "metrics.jsonl"))


def test_checkpoints_say_what_the_run_is_through_run_info(tmp_path):
    trainer = Trainer(tiny_config(2, checkpoint_every=2), tmp_path / "run", data=tiny_data(), progress=False)
    trainer.fit()
    info = RunFolder(tmp_path / "run").info()
    assert info.step == 2 and info.unet == trainer.unet_config and info.lora is None
    assert info.diffusion.to_dict() == trainer.diffusion.to_dict() and info.config.train.steps == 2
    assert info.data_name == "synthetic" and info.class_names == ("a", "b", "c") and info.versions["torch"]
