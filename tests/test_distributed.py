"""Training in several processes (DistributedDataParallel through torchrun, gloo on this CPU) is the one-process run.

The runs are real: ``python -m torch.distributed.run`` (torchrun) and ``ddpmkit train --nproc`` start processes
that join over gloo on 127.0.0.1. They are tiny (the tiny UNet on scikit-learn's 8x8 digits at 16 px, 6 steps,
one thread a process), so the file takes about two minutes on a 2-core machine.

Tolerance: N processes compute the same global-batch step as one, but the gradient of the mean over 32 samples is
summed in another order (each process its 16, then gloo averages the two), so weights differ by float32 rounding:
measured 1.2e-7 after 6 AdamW steps (lr 1e-3) here; the tests allow 1e-5 absolute on weights of size ~1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmkit.checkpoint import TRAINING_FILES, load_checkpoint
from ddpmkit.data import BatchLoader, ImageArray
from ddpmkit.errors import DdpmkitError
from ddpmkit.run import RunFolder

TOLERANCE = 1e-5  # absolute, on weights ~1 (see the module docstring)
RUN = ["--preset", "tiny", "--data", "digits", "--steps", "6", "--no-progress", "--set", "train.checkpoint_every=3",
       "--set", "train.sample_every=6", "--set", "train.log_every=2", "--set", "train.keep_checkpoints=5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
TIMEOUT = 120  # s for any one command: a hang fails the test instead of the suite


def ddpmkit(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpmkit", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "ddpmkit", *args], env=ENV, capture_output=True, text=True,
                          timeout=TIMEOUT)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint(run: Path, step: int) -> tuple[dict, dict]:
    [path] = [p for p in RunFolder(run).checkpoints() if int(p.name.split("_")[1]) == step]
    return load_checkpoint(path, required=TRAINING_FILES)


def gap(a: dict, b: dict) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_same_run(one: Path, other: Path, step: int = 6) -> None:
    """The weights, EMA and optimizer within float rounding; the RNGs, data position and step exactly."""
    (a, sa), (b, sb) = checkpoint(one, step), checkpoint(other, step)
    for name in ("model", "ema", "optimizer"):
        assert gap(a[name], b[name]) < TOLERANCE, name
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])  # the noise and t drawn: the same stream
    assert torch.equal(a["rng"]["torch_cpu"], b["rng"]["torch_cpu"])
    assert (sa["step"], sa["loader"], sa["ema_updates"]) == (sb["step"], sb["loader"], sb["ema_updates"])


def losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same run (global batch 32) in one process and in two (torchrun, 16 images each)."""
    root = tmp_path_factory.mktemp("distributed")
    ok(ddpmkit("train", *RUN, "--out", str(root / "one")))
    two = ok(torchrun("train", *RUN, "--out", str(root / "two")))
    assert "2 processes (gloo), each 16 of the global batch of 32" in two.stdout
    return {"one": root / "one", "two": root / "two", "root": root}


# ----- N processes train as one ------------------------------------------------------------------------------------

def test_two_processes_train_as_one_with_the_same_global_batch(runs):
    assert_same_run(runs["one"], runs["two"])
    for (s1, l1), (s2, l2) in zip(losses(runs["one"]), losses(runs["two"]), strict=True):  # the whole batch's loss
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-5)
    assert (runs["two"] / "samples").is_dir() and (runs["two"] / "summary.json").is_file()  # rank 0 wrote them


def test_a_two_process_checkpoint_resumes_in_one_process_and_back(runs):
    """Step 3 of the 2-process run, continued in 1 process, ends where the 1-process run does; and step 3 of the
    1-process run continued in 2 processes too."""
    root = runs["root"]
    ok(ddpmkit("train", "--resume", str(checkpoint_path(runs["two"], 3)), "--out", str(root / "two_then_one"),
               "--no-progress"))
    assert_same_run(runs["one"], root / "two_then_one")
    ok(ddpmkit("train", "--nproc", "2", "--resume", str(checkpoint_path(runs["one"], 3)), "--out",
               str(root / "one_then_two"), "--no-progress"))
    assert_same_run(runs["one"], root / "one_then_two")


def checkpoint_path(run: Path, step: int) -> Path:
    return next(p for p in RunFolder(run).checkpoints() if int(p.name.split("_")[1]) == step)


def test_two_torchrun_agents_with_a_c10d_rendezvous_stand_in_for_two_nodes(runs, tmp_path):
    """Two agents (``--nnodes 2``, one process each) meet at 127.0.0.1 as two machines would; the run is the
    2-process run of one agent."""
    port, out = free_port(), tmp_path / "nodes"
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                                "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id",
                                "test", "-m", "ddpmkit", "train", *RUN, "--out", str(out)],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    try:
        outputs = [agent.communicate(timeout=TIMEOUT) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    for agent, (_, err) in zip(agents, outputs):
        assert agent.returncode == 0, err[-3000:]
    assert_same_run(runs["two"], out)


def test_learned_variance_importance_sampler_and_gradient_accumulation_under_two_processes(tmp_path):
    """The hybrid loss, t importance-sampled from a loss history gathered from both processes (T = 4: it warms
    up after 40 samples, in step 2), and 2 micro-batches a step (no all-reduce on the first): still the 1-process
    run."""
    learned = ["--set", "diffusion.num_steps=4", "--set", "diffusion.variance=learned_range", "--set",
               "train.timestep_sampler=loss-second-moment", "--set", "train.sample_steps=2", "--set",
               "train.grad_accum=2", "--set", "train.batch_size=16"]
    ok(ddpmkit("train", *RUN, *learned, "--out", str(tmp_path / "one")))
    ok(ddpmkit("train", "--nproc", "2", *RUN, *learned, "--out", str(tmp_path / "two")))
    assert_same_run(tmp_path / "one", tmp_path / "two")
    (_, one), (_, two) = checkpoint(tmp_path / "one", 6), checkpoint(tmp_path / "two", 6)
    assert one["timestep_sampler"]["counts"] == two["timestep_sampler"]["counts"] == [10] * 4  # warmed up
    np.testing.assert_allclose(one["timestep_sampler"]["losses"], two["timestep_sampler"]["losses"], rtol=1e-4)


def test_a_lora_run_under_two_processes_is_the_one_process_lora_run(runs, tmp_path):
    """Adapters on the 1-process run, trained with EDM's log-normal t: in 2 processes as in 1."""
    lora = ["--data", "digits", "--steps", "4", "--no-progress", "--set", "train.checkpoint_every=4",
            "--set", "train.sample_every=1000", "--set", "train.log_every=2", "--set",
            "train.timestep_sampler=log-normal"]
    ok(ddpmkit("lora", str(runs["one"]), *lora, "--out", str(tmp_path / "one")))
    ok(ddpmkit("lora", str(runs["one"]), "--nproc", "2", *lora, "--out", str(tmp_path / "two")))
    assert_same_run(tmp_path / "one", tmp_path / "two", step=4)
    assert (tmp_path / "two" / "adapter.safetensors").is_file()


# ----- failures ----------------------------------------------------------------------------------------------------

def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_a_killed_process_stops_the_run_in_one_line_and_the_checkpoint_is_intact(tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "ddpmkit", "train", "--nproc", "2", *RUN[:4], "--steps", "500",
                                 "--no-progress", "--out", str(out), "--set", "train.checkpoint_every=2", "--set",
                                 "train.sample_every=1000"],
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        began = time.monotonic()
        while not [p for p in RunFolder(out).checkpoints() if (p / "state.json").is_file()]:
            assert launcher.poll() is None and time.monotonic() - began < TIMEOUT, launcher.stderr.read()[-3000:]
            time.sleep(0.2)
        ranks = {}
        for task in Path(f"/proc/{launcher.pid}/task").iterdir():  # the agent's processes, by their RANK
            for child in (task / "children").read_text().split():
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                rank = next(v for v in environ if v.startswith(b"RANK=")).split(b"=")[1]
                ranks[int(rank)] = int(child)
        os.kill(ranks[1], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    [line] = error_lines(stderr)
    assert line.startswith("ddpmkit: error: process 1 was killed by SIGKILL; the other processes were stopped; the "
                           "last good checkpoint is ")
    last = RunFolder(out).checkpoints()[-1]
    assert str(last) in line
    tensors, state = load_checkpoint(last, required=TRAINING_FILES)  # complete and readable
    assert state["step"] >= 2


@pytest.mark.parametrize("case", ["batch-does-not-divide", "nproc-beyond-the-cores", "nccl-without-cuda",
                                  "rendezvous-unreachable", "nodes-never-meet"])
def test_bad_launches_fail_in_one_line(tmp_path, case):
    args, env, limit = ["train", *RUN, "--out", str(tmp_path / "run")], None, 60
    if case == "batch-does-not-divide":
        args += ["--nproc", "2", "--batch-size", "31"]
        expect = "train.batch_size 31 is the global batch, split across 2 processes, and does not divide by 2"
    elif case == "nproc-beyond-the-cores":
        cores = len(os.sched_getaffinity(0))
        args += ["--nproc", str(cores + 1), "--device", "cpu"]
        expect = f"--nproc {cores + 1} is more processes than this machine has CPU cores ({cores})"
    elif case == "nccl-without-cuda":
        args += ["--nproc", "2", "--dist-backend", "nccl", "--device", "cpu"]
        expect = "the NCCL backend needs CUDA GPUs but this process trains on cpu"
    elif case == "rendezvous-unreachable":  # rank 1 of 2 started by hand; nobody listens at MASTER_PORT
        args += ["--dist-timeout", "2"]
        env = {**ENV, "RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port())}
        expect = "rank 1 of 2 could not join the others at 127.0.0.1:"
    else:  # this node waits for a second one that never comes
        args += ["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--dist-timeout", "3"]
        expect = "the 2 nodes did not meet at the rendezvous 127.0.0.1:"
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "ddpmkit", *args], env=env or ENV, capture_output=True, text=True,
                            timeout=limit)
    assert result.returncode != 0
    [line] = error_lines(result.stderr)
    assert line.startswith("ddpmkit: error: " + expect), line
    assert time.monotonic() - began < 45  # a timeout, not a hang


# ----- the pieces, in this process ---------------------------------------------------------------------------------

def test_the_shards_of_a_batch_are_the_single_process_batch():
    """Each rank's block of the global batch (images, flips, labels), in rank order, is the one-process batch; the
    state counts global batches."""
    rng = np.random.default_rng(0)
    data = ImageArray(images=rng.integers(0, 256, (40, 4, 4, 1), dtype=np.uint8), labels=rng.integers(0, 3, 40),
                      class_names=["a", "b", "c"], name="synthetic")
    make = lambda rank, world: BatchLoader(data, 8, hflip=True, seed=3, model_kwargs=data.label_kwargs, rank=rank,
                                           world_size=world)
    whole = make(0, 1)
    shards = [make(r, 4) for r in range(4)]
    for epoch, index in [(0, 0), (0, 4), (2, 3)]:
        x, kwargs = whole.batch(epoch, index)
        parts = [s.batch(epoch, index) for s in shards]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1]["labels"] for p in parts]), kwargs["labels"])
    assert len(shards[1]) == len(whole) == 5
    next(iter(shards[1]))
    assert shards[1].state_dict() == {"epoch": 0, "position": 1, "seed": 3}
    with pytest.raises(DdpmkitError, match="does not split evenly across 3 processes"):
        make(0, 3)


def test_one_process_is_the_identity_and_launch_flags_are_stripped():
    from ddpmkit.training.distributed import Parallel, strip_launch_flags

    one, t = Parallel(), torch.arange(8)
    assert one.keep(t) is t and one.global_batch(8) == 8 and not one.active and one.describe_batch(8) == ""
    two = Parallel(rank=1, world_size=2)
    assert torch.equal(two.keep(t), torch.arange(4, 8)) and two.global_batch(4) == 8
    argv = ["train", "--nproc", "2", "--steps", "3", "--nnodes=2", "--rdzv-endpoint", "h:1", "--dist-timeout", "9"]
    assert strip_launch_flags(argv) == ["train", "--steps", "3", "--dist-timeout", "9"]
